//! The options of `onecard-sim load`, `onecard-sim card` and `onecard-sim pay`, and their checks.

use std::ffi::OsStr;
use std::path::PathBuf;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use clap::Args;
use onecard_engine::cards::crypto::IssuerKey;

use onecard_sim::card::applet::CardApplet;

/// Every option of `onecard-sim load`. The doc comments are the `--help` text.
#[derive(Debug, Clone, Args)]
#[command(
    about = "Runs a seeded population and workload over the real engine and checks every invariant",
    long_about = "Runs a seeded population and workload over the real engine, in process: per-account \
actors, the durable journal (a write-ahead log, the view checkpointed behind it) and the simulated \
bank, all in the data directory. \
Opens the population (timed apart), runs the order lifecycles with CONCURRENCY of them in flight, \
drains (bank refusals lifted, a final tick that settles what is due and expires abandoned \
orders), closes the engine, runs `verify` on the data directory and checks conservation of \
money, the bank against the ledger, the live state against the journal's replay and the end \
state of every order. Prints throughput per kind of operation, latency percentiles, peak RSS \
and a digest of the final state. Exits 1 if any check fails or any command had an outcome the \
rules do not allow.\n\n\
The same seed gives the same population and the same stream of commands; with --concurrency 1 \
it also gives the same final state, hence the same digest.\n\n\
Mix percentages are per order lifecycle. --code-pct, --time-pct, --cancel-pct, --dispute-pct \
and --abandon-pct choose the lifecycle's path and may add up to at most 100; the rest are \
released on receipt. --refund-pct, --repeat-pct, --deposit-pct and --refuse-pct are drawn independently.\n\n\
--services-pct adds the services' operations (bills, recharges, payrolls, credit limits) to the stream, \
as that share of the work items, and their checks: each credit id credited once, employers' balances, \
recharge batches' clearing accounts, the wallet cap, the limits set, and the spending analysis run \
over the journal against independent sums.\n\n\
With --bank URL the engine works through the ISO 20022 adapter against a running `onecard-sim bank` \
instead of the in-process bank: the population's accounts are opened there (admin API), its balances \
are read for the checks, and conservation also checks the bank's total and its settlement account \
against the node's wallets and merchant balances."
)]
pub struct LoadArgs {
    /// Consumers to open, each with a credit limit, a designated account at the simulated bank
    /// with a balance, and a starting wallet (all drawn from the seed).
    #[arg(long, value_name = "N", default_value_t = 1_000)]
    pub consumers: u64,

    /// Merchants to open; orders pick them with a Zipf popularity (see --zipf-s).
    #[arg(long, value_name = "M", default_value_t = 100)]
    pub merchants: u64,

    /// Order lifecycles to run.
    #[arg(long, value_name = "K", default_value_t = 10_000)]
    pub orders: u64,

    /// Seed of the population and of the stream of commands.
    #[arg(long, value_name = "S", default_value_t = 1)]
    pub seed: u64,

    /// Lifecycles in flight at once (each lifecycle's commands are awaited in order).
    #[arg(long, value_name = "C", default_value_t = 64)]
    pub concurrency: usize,

    /// Print one JSON object as the last line of standard output (and no progress bar).
    #[arg(long)]
    pub json: bool,

    /// Stop starting lifecycles this many seconds after the run began (setup not counted),
    /// even if fewer than --orders are done; the drain and the checks still run.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,

    /// Start at most this many lifecycles per second (paced evenly; --concurrency still caps
    /// how many are in flight). For latency at a given load, e.g. half the peak rate a run
    /// without --rate reached. Default: as fast as the engine answers.
    #[arg(long, value_name = "PER_SEC", value_parser = positive_rate)]
    pub rate: Option<f64>,

    /// Data directory (must be empty or absent). Default: a fresh temporary directory,
    /// removed at the end unless --keep.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,

    /// Keep the temporary data directory (its path is printed); e.g. for `onecard verify`.
    #[arg(long)]
    pub keep: bool,

    /// Close and reopen the engine once, when this percentage of the lifecycles is done
    /// (in-flight lifecycles finish first). Reports the recovery time.
    #[arg(long, value_name = "P", value_parser = open_percentage)]
    pub restart_at_pct: Option<f64>,

    /// Arbiters (threads) running the account actors. Default: the engine's (one per core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub arbiters: Option<u64>,

    /// A config.toml for the rules, the journal and the actor pool. Default: the built-in
    /// defaults (the same values as the repository's config.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Lifecycles released by a special code: the right code settles; some first enter one or
    /// more wrong codes (fewer than the attempts that would dispute the order).
    #[arg(long, value_name = "PCT", default_value_t = 20.0, value_parser = percentage)]
    pub code_pct: f64,

    /// Lifecycles released by time: placed, then settled by a later periodic tick.
    #[arg(long, value_name = "PCT", default_value_t = 15.0, value_parser = percentage)]
    pub time_pct: f64,

    /// Lifecycles cancelled while pending.
    #[arg(long, value_name = "PCT", default_value_t = 5.0, value_parser = percentage)]
    pub cancel_pct: f64,

    /// Lifecycles disputed: receipt not satisfied then satisfied (settles), receipt not
    /// satisfied then cancelled, or every code attempt wrong then cancelled.
    #[arg(long, value_name = "PCT", default_value_t = 3.0, value_parser = percentage)]
    pub dispute_pct: f64,

    /// Lifecycles placed and never released: they expire at the final tick.
    #[arg(long, value_name = "PCT", default_value_t = 1.0, value_parser = percentage)]
    pub abandon_pct: f64,

    /// Settled lifecycles then refunded: in full, or in one or two partial refunds.
    #[arg(long, value_name = "PCT", default_value_t = 10.0, value_parser = percentage)]
    pub refund_pct: f64,

    /// Lifecycles that end by repeating their commands, as a client retrying would: the same
    /// place_order again (answered with its first outcome, changing nothing), the same id with
    /// another amount (refused:conflict), and their last refund again (refunded, nothing moves).
    #[arg(long, value_name = "PCT", default_value_t = 2.0, value_parser = percentage)]
    pub repeat_pct: f64,

    /// Lifecycles preceded by a recharge: money arriving from outside at the consumer's bank
    /// account (a bank deposit). Default 5; with --bank 0, and nothing else is allowed (a
    /// deposit needs the in-process bank's operator powers).
    #[arg(long, value_name = "PCT", value_parser = percentage)]
    pub deposit_pct: Option<f64>,

    /// Lifecycles preceded by the consumer's bank starting to refuse every debit, for the next
    /// --refuse-window lifecycles: settlements the wallet cannot cover wait for funds (ticks
    /// retry them) and top-ups are refused. Default 2; with --bank 0, and nothing else is
    /// allowed (the refuse flag is the in-process bank's).
    #[arg(long, value_name = "PCT", value_parser = percentage)]
    pub refuse_pct: Option<f64>,

    /// How many lifecycles a bank refusal lasts.
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub refuse_window: u64,

    /// A tick (time-driven work for every consumer; the clock advances 60 s) every this many
    /// lifecycles. Default: orders / 25, between 20 and 10000.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub tick_every: Option<u64>,

    /// Exponent of the merchants' Zipf popularity.
    #[arg(long, value_name = "S", default_value_t = 1.1)]
    pub zipf_s: f64,

    /// Consumers being opened at once during setup.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub setup_concurrency: usize,

    /// Share of work items (0 to 99) that are service operations rather than order
    /// lifecycles: bills paid by each kind of autopay rule (always, on_due_date, up_to, ask),
    /// recharge cards (with wrong codes: a code already redeemed by another consumer, and a
    /// repeat by the same one), payroll batches (some under-funded, some lines repeated) and
    /// credit-limit adjustments (up, down, below what is reserved). Opens 4 billers and 3
    /// employers beside the merchants, and runs the spending analysis over the journal at the
    /// end. Default 0: the run is the same as without it. Not available with --bank.
    #[arg(long, value_name = "PCT", default_value_t = 0.0, value_parser = services_percentage)]
    pub services_pct: f64,

    /// Work against a running bank simulator (`onecard-sim bank`) at this base URL (plain
    /// http:// on a loopback address) through the ISO 20022 adapter, instead of the in-process
    /// simulated bank. The population's bank accounts are opened through the simulator's admin
    /// API and the checks read its balances. Deposits and refusals are not available
    /// (--deposit-pct and --refuse-pct must be 0, their default then).
    #[arg(long, value_name = "URL")]
    pub bank: Option<String>,
}

/// The defaults of --deposit-pct and --refuse-pct with the in-process bank.
const DEPOSIT_PCT: f64 = 5.0;
const REFUSE_PCT: f64 = 2.0;

fn percentage(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..=100.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not between 0 and 100"))
    }
}

/// `--services-pct`: below 100, since service operations are interleaved with the order
/// lifecycles that `--orders` counts (100 would leave no lifecycle to interleave them with).
fn services_percentage(s: &str) -> Result<f64, String> {
    let v = percentage(s)?;
    if v < 100.0 {
        Ok(v)
    } else {
        Err(format!("{v} must be below 100 (at least 0, at most 99.99)"))
    }
}

fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a positive number")),
    }
}

fn open_percentage(s: &str) -> Result<f64, String> {
    let v = percentage(s)?;
    if v > 0.0 && v < 100.0 {
        Ok(v)
    } else {
        Err(format!("{v} must be strictly between 0 and 100"))
    }
}

/// What the options describe, checked together.
#[derive(Debug, Clone)]
pub struct Mix {
    pub code: f64,
    pub time: f64,
    pub cancel: f64,
    pub dispute: f64,
    pub abandon: f64,
    pub refund: f64,
    pub repeat: f64,
    pub deposit: f64,
    pub refuse: f64,
    pub refuse_window: u64,
    /// Share of work items that are service operations (`--services-pct`).
    pub services: f64,
}

impl LoadArgs {
    /// Checks what clap cannot check option by option.
    pub fn validate(&self) -> Result<(), String> {
        if self.consumers == 0 || self.merchants == 0 {
            return Err("--consumers and --merchants must be at least 1".into());
        }
        if self.concurrency == 0 || self.setup_concurrency == 0 {
            return Err("--concurrency and --setup-concurrency must be at least 1".into());
        }
        let paths = self.code_pct + self.time_pct + self.cancel_pct + self.dispute_pct;
        if paths + self.abandon_pct > 100.0 + 1e-9 {
            return Err(format!(
                "--code-pct, --time-pct, --cancel-pct, --dispute-pct and --abandon-pct add up to {}, above 100",
                paths + self.abandon_pct
            ));
        }
        if !(self.zipf_s.is_finite() && self.zipf_s >= 0.0) {
            return Err("--zipf-s must be a non-negative number".into());
        }
        if let Some(d) = self.duration {
            if !(d.is_finite() && d > 0.0) {
                return Err("--duration must be a positive number of seconds".into());
            }
        }
        if self.refuse_window == 0 && self.refuse_pct() > 0.0 {
            return Err("--refuse-window must be at least 1".into());
        }
        if let Some(url) = &self.bank {
            let Some(rest) = url.strip_prefix("http://") else {
                return Err(format!(
                    "--bank {url:?}: expected the bank simulator's plain http:// URL on a loopback \
                     address, such as http://127.0.0.1:8090"
                ));
            };
            let host = rest.split(['/', ':']).next().unwrap_or("");
            if !(host == "localhost" || host.starts_with("127.") || rest.starts_with("[::1]")) {
                return Err(format!(
                    "--bank {url:?}: plain http is only for a bank on this machine (a loopback address)"
                ));
            }
            if self.services_pct > 0.0 {
                return Err(
                    "--services-pct is not available with --bank: the employers' fundings and \
                     the recharges' overflows need the in-process bank; leave it out"
                        .into(),
                );
            }
            for (flag, pct) in [
                ("--deposit-pct", self.deposit_pct),
                ("--refuse-pct", self.refuse_pct),
            ] {
                if pct.is_some_and(|p| p > 0.0) {
                    return Err(format!(
                        "{flag} is not available with --bank: deposits and refusals need the \
                         in-process bank's operator powers; leave it out (0 with --bank)"
                    ));
                }
            }
        }
        Ok(())
    }

    /// `--deposit-pct`, or its default: 5, or 0 with `--bank`.
    pub fn deposit_pct(&self) -> f64 {
        let default = if self.bank.is_some() {
            0.0
        } else {
            DEPOSIT_PCT
        };
        self.deposit_pct.unwrap_or(default)
    }

    /// `--refuse-pct`, or its default: 2, or 0 with `--bank`.
    pub fn refuse_pct(&self) -> f64 {
        let default = if self.bank.is_some() { 0.0 } else { REFUSE_PCT };
        self.refuse_pct.unwrap_or(default)
    }

    pub fn mix(&self) -> Mix {
        Mix {
            code: self.code_pct,
            time: self.time_pct,
            cancel: self.cancel_pct,
            dispute: self.dispute_pct,
            abandon: self.abandon_pct,
            refund: self.refund_pct,
            repeat: self.repeat_pct,
            deposit: self.deposit_pct(),
            refuse: self.refuse_pct(),
            refuse_window: self.refuse_window,
            services: self.services_pct,
        }
    }

    pub fn tick_every(&self) -> u64 {
        self.tick_every
            .unwrap_or_else(|| (self.orders / 25).clamp(20, 10_000))
    }
}

/// Every option of `onecard-sim card`. The doc comments are the `--help` text.
#[derive(Debug, Clone, Args)]
#[command(
    about = "Plugs a virtual OneCard smart card into a vpcd reader (pcscd's vsmartcard-vpcd driver)",
    long_about = "Plugs a virtual OneCard smart card into a reader of vsmartcard's vpcd driver, so that \
pcscd and any PC/SC program see a card in `Virtual PCD 00 00` (port 35963) or `Virtual PCD 00 01` \
(port 35964). The card is personalised at start: its key is derived from the issuer master key and \
the card number, as the node derives it. It answers SELECT (AID F04F4E454341524401), READ CARD \
DATA and GENERATE CRYPTOGRAM.\n\n\
Waits up to --connect-timeout for vpcd to listen, prints one line on standard error when the card \
is inserted (the card number masked, never the key) and serves until vpcd closes the connection \
(exit 0). Removing the card is ending the connection: Ctrl-C or SIGTERM end the process, which \
does it. Exit 1 if vpcd cannot be reached or the connection fails mid-frame, 2 for invalid options.\n\n\
The issuer key on the command line is visible to other local users (ps, /proc): use this on a \
test machine with a test key only."
)]
pub struct CardArgs {
    /// vpcd's TCP port: 35963 is reader `Virtual PCD 00 00`, 35964 is `Virtual PCD 00 01`.
    #[arg(long, value_name = "PORT", default_value_t = onecard_sim::card::vpcd::READER_00_00_PORT)]
    pub port: u16,

    /// Host where vpcd listens. vpcd listens on every address; keep to loopback.
    #[arg(long, value_name = "HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// The card number (1 to 64 printable ASCII characters, no spaces). Returned by READ CARD
    /// DATA and the info of the card key's derivation; only its last 4 characters are printed.
    #[arg(long, value_name = "N", value_parser = card_number)]
    pub card_number: String,

    /// The holder reference stored on the card (1 to 64 printable ASCII characters), returned
    /// by READ CARD DATA.
    #[arg(long, value_name = "H", value_parser = holder_ref)]
    pub holder: String,

    /// The issuer master key: 64 hexadecimal characters (32 bytes). The card key is
    /// HKDF-SHA256 of it and the card number (personalisation). Never printed.
    #[arg(long, value_name = "HEX", value_parser = IssuerKeyHex)]
    pub issuer_key_hex: IssuerKey,

    /// The card's transaction counter, that of its last cryptogram (0 for a new card): the next
    /// GENERATE CRYPTOGRAM answers with this plus one. At 4294967295 the card is exhausted and
    /// refuses (69 84).
    #[arg(long, value_name = "C", default_value_t = 0)]
    pub counter: u32,

    /// How long to keep trying to connect while vpcd is not listening yet (pcscd starting).
    #[arg(long, value_name = "SECS", default_value_t = 10.0, value_parser = non_negative_secs)]
    pub connect_timeout: f64,
}

fn card_number(s: &str) -> Result<String, String> {
    CardApplet::check_personalisation(s, "x").map(|()| s.to_owned())
}

fn holder_ref(s: &str) -> Result<String, String> {
    CardApplet::check_personalisation("0", s).map(|()| s.to_owned())
}

fn non_negative_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=86_400.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of seconds between 0 and 86400"
        )),
    }
}

/// Parses `--issuer-key-hex` without ever echoing the value: clap's own error for a refused
/// value would print it, and a mistyped key is still (nearly) the key.
#[derive(Debug, Clone, Copy)]
struct IssuerKeyHex;

impl TypedValueParser for IssuerKeyHex {
    type Value = IssuerKey;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<IssuerKey, clap::Error> {
        value
            .to_str()
            .and_then(parse_key_hex)
            .map(IssuerKey::from_bytes)
            .ok_or_else(|| {
                clap::Error::raw(
                    ErrorKind::InvalidValue,
                    "--issuer-key-hex must be 64 hexadecimal characters (32 bytes); \
the value given is not shown\n",
                )
                .with_cmd(cmd)
            })
    }
}

fn parse_key_hex(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (byte, pair) in key.iter_mut().zip(s.chunks_exact(2)) {
        let hi = char::from(pair[0]).to_digit(16)?;
        let lo = char::from(pair[1]).to_digit(16)?;
        *byte = (hi * 16 + lo) as u8;
    }
    Some(key)
}

/// Every option of `onecard-sim pay`. The doc comments are the `--help` text.
#[derive(Debug, Clone, Args)]
#[command(
    about = "Runs simulated card readers paying against a running `onecard serve` over HTTP",
    long_about = "Runs simulated card readers against a running `onecard serve` over real HTTP and \
reports payments per second, the latency of each step and of the whole payment, and errors by kind.\n\n\
Setup, through the admin API (ids carry a random run number, so runs against the same node do not \
collide): --merchants merchants, and per reader a bank account at the simulated bank, a consumer, a \
card (its applet in memory, personalised with the card key the node returns) and the reader, bound \
to the card and registered at its own address 127.B.x.y/32; the reader's keep-alive connection is \
bound to that address.\n\n\
A payment: the merchant creates the order (merchant API), the reader opens the checkout, swipes, \
authenticates with the card's cryptogram and the encrypted PIN, confirms the delivery address when \
the node asks (--address-change-share of the orders go elsewhere), and the node places the order on \
authorisation. Then the consumer confirms receipt (unless --no-receipt), so the order settles and \
its credit is free again; that request is timed on its own, not as part of the payment.\n\n\
Planted refusals: --wrong-pin-share of the payments first try a wrong PIN (the right one follows, so \
no card locks), --foreign-reader-share first swipe another reader's card (at most \
--foreign-per-minute per reader in any 62 s, under the node's limit of refused swipes). Each must \
be refused (`wrong_pin`, `card_not_bound`); `refusals_ok` is false otherwise, or if anything else \
was refused. A payment's latency includes its planted detour.\n\n\
Readers run as tasks on --threads event loops (one by default: the client shares the machine \
with the node); the report gives the client's CPU time per payment (and the node's, with \
--node-pid). --warmup seconds of payments come first and are not in the rates and latencies; \
the totals (and errors) cover the whole run, as the node's own counters do.\n\n\
Plain HTTP to a node on a loopback address only. Exit 0 when payments were made with no error and \
`refusals_ok`; 1 otherwise or when the setup fails; 2 for invalid options."
)]
pub struct PayArgs {
    /// The node's base URL: http:// and a loopback address (the readers connect from
    /// 127.x.y.z).
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8080")]
    pub node: String,

    /// The node's administrator token. Default: the environment's ONECARD_ADMIN_TOKEN (better:
    /// a command line is visible to other local users).
    #[arg(long, value_name = "TOKEN")]
    pub admin_token: Option<String>,

    /// Simulated readers, each with its own card, consumer and connection, paying one payment
    /// after the other.
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=65_000))]
    pub readers: u32,

    /// Seconds measured (after --warmup). Readers then finish the payment in progress.
    #[arg(long, value_name = "SECS", default_value_t = 10.0, value_parser = positive_secs)]
    pub duration: f64,

    /// Seconds of payments before the measured ones (not in the rates and latencies; their
    /// errors and planted refusals still count).
    #[arg(long, value_name = "SECS", default_value_t = 1.0, value_parser = non_negative_secs)]
    pub warmup: f64,

    /// Print one JSON object as the last line of standard output.
    #[arg(long)]
    pub json: bool,

    /// Payments per second in all, paced: each reader starts one every readers/RATE seconds
    /// (staggered), and a payment's latency counts from when it was due, so a node that falls
    /// behind shows it in the latency (no coordinated omission). Default: as fast as the node
    /// answers.
    #[arg(long, value_name = "RATE", value_parser = positive_rate)]
    pub rate: Option<f64>,

    /// Merchants; reader i buys from merchant i mod M.
    #[arg(long, value_name = "M", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub merchants: u32,

    /// Share of payments (0 to 1) that first enter a wrong PIN, then the right one.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.01, value_parser = fraction)]
    pub wrong_pin_share: f64,

    /// Share of payments (0 to 1) that first swipe another reader's card (needs 2 readers).
    #[arg(long, value_name = "FRACTION", default_value_t = 0.01, value_parser = fraction)]
    pub foreign_reader_share: f64,

    /// Most foreign-card swipes a reader plants in any 62 seconds: each is a refused swipe, and
    /// the node rate-limits a reader after `refused_swipes_per_minute` (5 by default) of them.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub foreign_per_minute: u32,

    /// Share of orders (0 to 1) delivered elsewhere than the card's registered address: the
    /// node asks the reader to confirm the change.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.05, value_parser = fraction)]
    pub address_change_share: f64,

    /// Leave the orders pending instead of confirming receipt after each payment. Every open
    /// order stays in its consumer's record, so the node slows down as they pile up.
    #[arg(long)]
    pub no_receipt: bool,

    /// Seed of each reader's choices (amounts, planted refusals, addresses) and of the PINs.
    #[arg(long, value_name = "S", default_value_t = 1)]
    pub seed: u64,

    /// The node's process id, to report its CPU time during the measured run (same machine).
    #[arg(long, value_name = "PID")]
    pub node_pid: Option<u32>,

    /// Timeout of each HTTP request, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30.0, value_parser = positive_secs)]
    pub timeout: f64,

    /// Event-loop threads the readers are spread over (each a current-thread runtime). One
    /// is usually enough; the client shares the machine with the node.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub threads: u32,

    /// Registrations sent at once during setup.
    #[arg(long, value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub setup_concurrency: u32,

    /// How Linux schedules the readers' threads. `batch` (SCHED_BATCH): a reader thread woken
    /// by an answer waits for the node's thread on that core to yield instead of preempting
    /// it, as clients on other machines would never preempt the node; the client on the
    /// node's own cores then measures the node, not the thread switches it forces on it.
    /// `normal`: the default class of any process.
    #[arg(long, value_enum, value_name = "CLASS", default_value_t = ClientScheduling::Batch)]
    pub client_scheduling: ClientScheduling,
}

/// Scheduling class of `onecard-sim pay`'s reader threads (`--client-scheduling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientScheduling {
    Batch,
    Normal,
}

impl ClientScheduling {
    pub fn name(self) -> &'static str {
        match self {
            ClientScheduling::Batch => "batch",
            ClientScheduling::Normal => "normal",
        }
    }
}

fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number between 0 and 1")),
    }
}

fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of seconds above 0 and at most 86400"
        )),
    }
}

impl PayArgs {
    /// Checks what clap cannot check option by option.
    pub fn validate(&self) -> Result<(), String> {
        if self.wrong_pin_share + self.foreign_reader_share > 1.0 + 1e-9 {
            return Err(
                "--wrong-pin-share and --foreign-reader-share add up to more than 1".into(),
            );
        }
        Ok(())
    }
}
