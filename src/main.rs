//! The `onecard` command: `demo`, `serve`, `verify`, `play` and `scenario`.

mod demo;
mod scenario;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's malloc: allocation was about a fifth of the node's CPU under an
/// HTTP load of order creations (BENCHMARKS.md), as in the simulator. Tuned by
/// `onecard_sim::allocator::tune`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "onecard", version, about = "OneCard settlement node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Walk through the payment flow on the embedded store with a simulated bank, printing
    /// what happens, then check the invariants.
    Demo {
        /// Data directory (must be empty or absent); a fresh temporary one by default.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Configuration file; `./config.toml` when present, else the built-in defaults.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Replay a data directory's journal and check invariants I1-I6 and I8.
    Verify {
        /// The data directory to check.
        #[arg(long)]
        data: PathBuf,
        /// Where the node moved the log's old segments (`[journal] archive_dir`): read first,
        /// so that the replay still starts at record 1.
        #[arg(long)]
        archive: Option<PathBuf>,
    },
    /// Match a bank's end-of-day statement (camt.053.001.08 of the settlement center's own
    /// account) against the bank operations of a data directory's journal. Changes nothing;
    /// exits 1 when there is a mismatch.
    Reconcile {
        /// The data directory (of a stopped node, or a copy).
        #[arg(long)]
        data: PathBuf,
        /// The camt.053 statement (XML).
        #[arg(long)]
        statement: PathBuf,
        /// Where the node moved the log's old segments (`[journal] archive_dir`).
        #[arg(long)]
        archive: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run scenario steps read from standard input, one JSON object a line, on a data
    /// directory; prints one JSON line per step once its effects are durable.
    Play {
        /// The data directory (created when absent, reopened when present).
        #[arg(long)]
        data: PathBuf,
        /// Configuration file (rules, journal, actors); the built-in defaults otherwise.
        #[arg(long)]
        config: Option<PathBuf>,
        /// How many steps may run at once (1: one after the other). Steps on the same order
        /// still run in turn; ticks, checks, bank steps, openings and restarts wait for every
        /// step before them. Answers stay one per step, in step order.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=65_536))]
        in_flight: u64,
    },
    /// The settlement node: the HTTP API for merchants, readers, consumers and operators,
    /// with the print queue and the webhooks. Stops cleanly on SIGTERM or SIGINT.
    Serve {
        /// Configuration file; `./config.toml` when present, else the built-in defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on (overrides `[node] listen`); port 0 picks a free one.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Data directory (overrides `[node] data_dir`).
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Play scenario files (shared/scenarios/FORMAT.md) against a fresh engine each.
    Scenario {
        /// Scenario files (*.json).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    onecard_sim::allocator::tune();
    // The node's log on standard error: warnings by default (refused swipes and
    // authentications, the authentication center's security events); RUST_LOG=info shows
    // every swipe and authorisation too.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Verify { data, archive } => {
            match onecard_engine::verify::verify_with_archive(&data, archive.as_deref()) {
                Ok(report) => {
                    println!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("verify FAILED for {}: {e}", data.display());
                    ExitCode::FAILURE
                }
            }
        }
        Command::Reconcile {
            data,
            statement,
            archive,
            json,
        } => reconcile(&data, &statement, archive.as_deref(), json),
        Command::Scenario { files } => {
            let system = actix_rt::System::new();
            let ok = system.block_on(async move {
                let mut all_ok = true;
                for f in &files {
                    let out = scenario::play(f).await;
                    if out.failures.is_empty() {
                        println!("PASS {} — {} ({} steps)", f.display(), out.name, out.steps);
                    } else {
                        all_ok = false;
                        println!("FAIL {} — {}", f.display(), out.name);
                        for failure in &out.failures {
                            println!("  {failure}");
                        }
                    }
                }
                all_ok
            });
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Play {
            data,
            config,
            in_flight,
        } => {
            let mut cfg = match config.map(|p| onecard_engine::NodeConfig::load(&p)) {
                None => onecard_engine::EngineConfig::default(),
                Some(Ok(c)) => c.engine,
                Some(Err(e)) => {
                    eprintln!("play: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if let Err(e) =
                onecard_engine::config::secret_keys_from_env(&mut cfg, |v| std::env::var(v).ok())
            {
                eprintln!("play: {e}");
                return ExitCode::FAILURE;
            }
            let system = actix_rt::System::new();
            match system.block_on(scenario::play_stdin(&data, cfg, in_flight as usize)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("play FAILED: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve {
            config,
            listen,
            data,
        } => match onecard_node::serve(onecard_node::ServeOptions {
            config,
            listen,
            data,
        }) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("serve FAILED: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Demo { data, config } => {
            let system = actix_rt::System::new();
            match system.block_on(demo::run(data, config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("demo FAILED: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `onecard reconcile`: 0 when the statement matches, 1 on a mismatch, 2 when it cannot run.
fn reconcile(
    data: &std::path::Path,
    statement: &std::path::Path,
    archive: Option<&std::path::Path>,
    json: bool,
) -> ExitCode {
    use onecard_adapters::iso20022::{reconcile, xml::MAX_MESSAGE_BYTES, Statement};
    let fail = |what: String| {
        eprintln!("reconcile: {what}");
        ExitCode::from(2)
    };
    let bytes = match std::fs::metadata(statement) {
        Ok(m) if m.len() > MAX_MESSAGE_BYTES as u64 => {
            return fail(format!(
                "{}: over {MAX_MESSAGE_BYTES} bytes",
                statement.display()
            ))
        }
        Ok(_) => match std::fs::read(statement) {
            Ok(b) => b,
            Err(e) => return fail(format!("{}: {e}", statement.display())),
        },
        Err(e) => return fail(format!("{}: {e}", statement.display())),
    };
    let stmt = match Statement::from_xml(&bytes) {
        Ok(s) => s,
        Err(e) => {
            return fail(format!(
                "{}: not a camt.053.001.08 statement: {e}",
                statement.display()
            ))
        }
    };
    let ops = match onecard_engine::bank_ops::journal_bank_ops(data, archive) {
        Ok(o) => o,
        Err(e) => return fail(format!("the journal in {}: {e}", data.display())),
    };
    let report = reconcile::reconcile(&ops, &stmt);
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => return fail(e.to_string()),
        }
    } else {
        print!("{report}");
    }
    if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
