//! `onecard-sim pay`: many simulated card readers paying against a running `onecard serve` over
//! real HTTP (issue 11).
//!
//! - [`setup`] registers merchants, and per reader a bank account, a consumer, a card and the
//!   reader (at its own 127.B.x.y/32) through the admin API, under a random run number;
//! - [`reader`] is one reader: the card's applet in memory, one keep-alive connection bound to
//!   the reader's address ([`http`]), and its loop of whole payments (merchant's order,
//!   checkout, the reader program's steps, receipt), with planted wrong PINs and foreign
//!   cards that must be refused;
//! - [`tally`] counts: latency per step and per payment, errors by kind, planted refusals.
//!
//! The readers are tasks on one event loop (a current-thread Tokio runtime; `--threads` spreads
//! them over more): they spend nearly all their time waiting for the node, and one loop wakes
//! once for many answers where a thread per reader woke for each. The client's CPU time is
//! measured over the measured window and reported per payment.

mod http;
mod reader;
mod setup;
mod tally;

use std::net::{SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::options::{ClientScheduling, PayArgs};
use crate::stats::{process_cpu_secs, Percentiles};
use http::Conn;
use reader::{Clock, Pace, Plan, Reader};
use setup::SetupConfig;
use tally::{Latencies, Step, Tally};

/// Why a run did not happen.
#[derive(Debug)]
enum PayError {
    /// Bad options (exit 2).
    Usage(String),
    /// The setup or the connections failed (exit 1).
    Setup(String),
}

pub fn main(args: PayArgs) -> ExitCode {
    match run(&args) {
        Ok(report) => {
            if args.json {
                println!("{}", report.json());
            } else {
                println!("{}", report.text());
            }
            if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            let (message, code) = match e {
                PayError::Usage(m) => (m, 2),
                PayError::Setup(m) => (m, 1),
            };
            eprintln!("onecard-sim pay: {message}");
            if args.json {
                println!(
                    "{}",
                    json!({"error": message, "payments": 0, "errors": 1, "refusals_ok": false})
                );
            }
            ExitCode::from(code)
        }
    }
}

/// `http://host[:port][/]` with a loopback IPv4 host (or `localhost`).
fn node_address(url: &str) -> Result<SocketAddrV4, String> {
    let url = url.trim();
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| {
            format!(
                "--node {url:?}: only plain http:// is supported (the readers connect from \
127.x.y.z addresses, so the node must listen on loopback)"
            )
        })?
        .trim_end_matches('/');
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "--node {url:?}: give http://HOST:PORT, with no path"
        ));
    }
    let with_port = if rest
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        rest.to_string()
    } else {
        format!("{rest}:80")
    };
    let addrs = with_port
        .to_socket_addrs()
        .map_err(|e| format!("--node {url:?}: {e}"))?;
    addrs
        .filter_map(|a| match a {
            SocketAddr::V4(v4) if v4.ip().is_loopback() => Some(v4),
            _ => None,
        })
        .next()
        .ok_or_else(|| {
            format!(
                "--node {url:?} is not an IPv4 loopback address: the readers connect from \
127.x.y.z, which reaches only loopback"
            )
        })
}

/// CPU time (user + system) of process `pid` so far, from `/proc/PID/stat`.
fn cpu_secs_of(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let utime: f64 = fields.nth(11)?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) / ticks as f64)
}

/// The machine the run was on.
fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_gib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| round3(kb / 1_048_576.0));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|s| s.trim().to_string());
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu": cpu,
        "memory_gib": memory_gib,
        "kernel": kernel,
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn run(args: &PayArgs) -> Result<Report, PayError> {
    args.validate().map_err(PayError::Usage)?;
    let token = args
        .admin_token
        .clone()
        .or_else(|| std::env::var("ONECARD_ADMIN_TOKEN").ok())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            PayError::Usage("no admin token: give --admin-token or set ONECARD_ADMIN_TOKEN".into())
        })?;
    let node = node_address(&args.node).map_err(PayError::Usage)?;
    let timeout = Duration::from_secs_f64(args.timeout);

    let began = Instant::now();
    let cfg = SetupConfig {
        readers: args.readers as usize,
        merchants: args.merchants as usize,
        seed: args.seed,
        concurrency: args.setup_concurrency as usize,
        timeout,
    };
    let world =
        setup::setup(node, &token, &cfg).map_err(|e| PayError::Setup(format!("setup: {e}")))?;
    let setup_secs = began.elapsed().as_secs_f64();
    if !args.json {
        eprintln!(
            "onecard-sim pay: run {}: {} readers and {} merchants registered in {setup_secs:.1} s; paying for {} s after {} s of warm-up",
            world.run,
            world.readers.len(),
            world.merchants.len(),
            args.duration,
            args.warmup
        );
    }

    // Reader i runs on event loop i mod threads; its foreign card is reader i+1's.
    let n = world.readers.len();
    let threads = (args.threads as usize).clamp(1, n.max(1));
    let mut groups: Vec<Vec<Reader>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, spec) in world.readers.iter().enumerate() {
        let foreign = (n >= 2).then(|| &world.readers[(i + 1) % n]);
        let conn = Conn::new(node, Some(spec.ip), timeout);
        groups[i % threads].push(Reader::new(spec.clone(), foreign, conn, plan_of(args)));
    }

    let ready = Barrier::new(threads + 1);
    let go = Barrier::new(threads + 1);
    let clock: OnceLock<Clock> = OnceLock::new();
    let failure: Mutex<Option<String>> = Mutex::new(None);
    let done = AtomicU64::new(0);
    let latencies = Latencies::default();
    let scheduling = args.client_scheduling;
    let batch_refused = std::sync::atomic::AtomicBool::new(false);
    let ran = std::thread::scope(|s| {
        let handles: Vec<_> = groups
            .into_iter()
            .map(|group| {
                let (ready, go, clock, failure, done, latencies, batch_refused) = (
                    &ready,
                    &go,
                    &clock,
                    &failure,
                    &done,
                    &latencies,
                    &batch_refused,
                );
                std::thread::Builder::new()
                    .name("readers".into())
                    .spawn_scoped(s, move || {
                        if scheduling == ClientScheduling::Batch {
                            if let Err(e) = schedule_as_batch() {
                                batch_refused.store(true, Ordering::Relaxed);
                                eprintln!("onecard-sim pay: SCHED_BATCH refused ({e}); the readers run in the normal class");
                            }
                        }
                        event_loop(group, ready, go, clock, failure, latencies, done)
                    })
                    .expect("spawn a readers' thread")
            })
            .collect();
        ready.wait();
        let now = Instant::now();
        let measure_from = now + Duration::from_secs_f64(args.warmup);
        let end = measure_from + Duration::from_secs_f64(args.duration);
        let pace = args.rate.map(|rate| Pace {
            origin: now,
            every: Duration::from_secs_f64(args.readers as f64 / rate),
            readers: args.readers as usize,
        });
        clock
            .set(Clock {
                measure_from,
                end,
                pace,
            })
            .expect("set once");
        go.wait();
        if failure.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            for h in handles {
                let _ = h.join();
            }
            return None;
        }
        std::thread::sleep(measure_from.saturating_duration_since(Instant::now()));
        let cpu0 = process_cpu_secs();
        let node_cpu0 = args.node_pid.and_then(cpu_secs_of);
        let done_at_start = done.load(Ordering::Relaxed);
        let mut next_report = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            std::thread::sleep(
                next_report
                    .min(end)
                    .saturating_duration_since(Instant::now()),
            );
            if Instant::now() >= next_report {
                if !args.json {
                    let paid = done.load(Ordering::Relaxed) - done_at_start;
                    let secs = measure_from.elapsed().as_secs_f64();
                    eprintln!(
                        "onecard-sim pay: {secs:.0} s: {paid} payments, {:.0}/s",
                        paid as f64 / secs
                    );
                }
                next_report += Duration::from_secs(5);
            }
        }
        let mut tally = Tally::default();
        let mut last_end = measure_from;
        for h in handles {
            for (t, finished) in h.join().expect("a readers' thread panicked") {
                last_end = last_end.max(finished);
                tally.merge(t);
            }
        }
        Some((tally, measure_from, last_end, cpu0, node_cpu0))
    });
    let Some((tally, measure_from, last_end, cpu0, node_cpu0)) = ran else {
        let e = failure.into_inner().unwrap_or_else(|p| p.into_inner());
        return Err(PayError::Setup(e.unwrap_or_default()));
    };
    let cpu1 = process_cpu_secs();
    let node_cpu1 = args.node_pid.and_then(cpu_secs_of);
    Ok(Report {
        node: args.node.clone(),
        run: world.run,
        readers: n,
        rate: args.rate,
        threads,
        client_scheduling: if batch_refused.load(Ordering::Relaxed) {
            ClientScheduling::Normal
        } else {
            scheduling
        },
        merchants: world.merchants.len(),
        seed: args.seed,
        plan: plan_of(args),
        setup_secs,
        warmup_secs: args.warmup,
        measured_secs: last_end.duration_since(measure_from).as_secs_f64(),
        client_cpu_secs: cpu0.zip(cpu1).map(|(a, b)| b - a),
        node_cpu_secs: node_cpu0.zip(node_cpu1).map(|(a, b)| b - a),
        tally,
        latencies,
    })
}

/// Puts the calling thread in Linux's SCHED_BATCH class (`--client-scheduling batch`): its
/// wake-ups do not preempt the thread running on the core, they wait for it to yield. No
/// privilege is needed to move a thread of one's own into it.
#[cfg(target_os = "linux")]
fn schedule_as_batch() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the call; pid 0 is the calling thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn schedule_as_batch() -> std::io::Result<()> {
    Err(std::io::Error::other("SCHED_BATCH is Linux's"))
}

/// One event-loop thread: a current-thread runtime running `group`'s readers. Opens their
/// connections, meets the other threads at `ready` (the run's clock is set then) and `go`, and
/// runs them unless some connection failed (`failure`).
fn event_loop(
    mut group: Vec<Reader>,
    ready: &Barrier,
    go: &Barrier,
    clock: &OnceLock<Clock>,
    failure: &Mutex<Option<String>>,
    latencies: &Latencies,
    done: &AtomicU64,
) -> Vec<(Tally, Instant)> {
    let fail = |e: String| {
        failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(e);
    };
    let rt = match actix_rt::Runtime::new() {
        Ok(rt) => Some(rt),
        Err(e) => {
            fail(format!("cannot start a runtime: {e}"));
            None
        }
    };
    if let Some(rt) = &rt {
        rt.block_on(async {
            for r in &mut group {
                if let Err(e) = r.connect().await {
                    fail(e);
                    break;
                }
            }
        });
    }
    ready.wait();
    go.wait();
    let Some(rt) = rt else { return Vec::new() };
    if failure.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
        return Vec::new();
    }
    let clock = *clock.get().expect("set before `go`");
    rt.block_on(futures::future::join_all(
        group.into_iter().map(|r| r.run(clock, latencies, done)),
    ))
}

fn plan_of(args: &PayArgs) -> Plan {
    Plan {
        wrong_pin_share: args.wrong_pin_share,
        foreign_share: args.foreign_reader_share,
        foreign_per_minute: args.foreign_per_minute,
        address_change_share: args.address_change_share,
        receipt: !args.no_receipt,
        seed: args.seed,
    }
}

/// What a run measured.
struct Report {
    node: String,
    run: String,
    readers: usize,
    /// `--rate`, when paced.
    rate: Option<f64>,
    threads: usize,
    /// The class the readers' threads ran in.
    client_scheduling: ClientScheduling,
    merchants: usize,
    seed: u64,
    plan: Plan,
    setup_secs: f64,
    warmup_secs: f64,
    /// From the start of the measured window until the last reader finished its last payment.
    measured_secs: f64,
    client_cpu_secs: Option<f64>,
    node_cpu_secs: Option<f64>,
    tally: Tally,
    latencies: Latencies,
}

impl Report {
    fn payments_per_sec(&self) -> f64 {
        if self.measured_secs > 0.0 {
            self.tally.payments as f64 / self.measured_secs
        } else {
            0.0
        }
    }

    fn per_payment_us(&self, cpu: Option<f64>) -> Option<f64> {
        cpu.filter(|_| self.tally.payments > 0)
            .map(|c| round3(c * 1e6 / self.tally.payments as f64))
    }

    fn ok(&self) -> bool {
        self.tally.payments > 0 && self.tally.error_count() == 0 && self.tally.refusals_ok()
    }

    fn json(&self) -> Value {
        let t = &self.tally;
        let pay = self.latencies.percentiles(Step::Payment);
        let mut steps = Map::new();
        for step in Step::ALL {
            let p: Percentiles = self.latencies.percentiles(step);
            steps.insert(
                step.name().into(),
                json!({"count": p.count, "p50_ms": p.p50, "p99_ms": p.p99, "p999_ms": p.p999, "max_ms": p.max}),
            );
        }
        let totals = t.totals;
        json!({
            "command": "pay",
            "node": self.node,
            "run": self.run,
            "readers": self.readers,
            "rate": self.rate,
            "threads": self.threads,
            "client_scheduling": self.client_scheduling.name(),
            "merchants": self.merchants,
            "seed": self.seed,
            "duration_secs": round3(self.measured_secs),
            "warmup_secs": self.warmup_secs,
            "setup_secs": round3(self.setup_secs),
            "payments": t.payments,
            "payments_per_sec": round3(self.payments_per_sec()),
            "p50_ms": pay.p50,
            "p99_ms": pay.p99,
            "p999_ms": pay.p999,
            "max_ms": pay.max,
            "steps": steps,
            "address_confirmations": t.address_confirmations,
            "planted": {
                "wrong_pin": {"share": self.plan.wrong_pin_share, "planted": t.planted_wrong_pin, "refused": t.refused_wrong_pin},
                "foreign_reader": {
                    "share": self.plan.foreign_share,
                    "per_minute": self.plan.foreign_per_minute,
                    "planted": t.planted_foreign,
                    "refused": t.refused_foreign,
                    "skipped_for_rate_limit": t.foreign_skipped,
                },
                "unexpected_refusals": t.unexpected_refusals,
            },
            "refusals_ok": t.refusals_ok(),
            "errors": t.error_count(),
            "errors_by_kind": t.errors,
            "error_samples": t.samples,
            "totals": {
                "orders_created": totals.answered(Step::CreateOrder),
                "checkouts": totals.answered(Step::Checkout),
                "swipes": totals.answered(Step::Swipe),
                "authentications": totals.answered(Step::Authenticate),
                "address_confirmations": totals.answered(Step::ConfirmAddress),
                "receipts": totals.answered(Step::Receipt),
                "payments": totals.payments,
                "settled": totals.settled,
                "http_requests": totals.requests,
            },
            "confirm_receipt": self.plan.receipt,
            "address_change_share": self.plan.address_change_share,
            "client_cpu_secs": self.client_cpu_secs.map(round3),
            "client_cpu_us_per_payment": self.per_payment_us(self.client_cpu_secs),
            "node_cpu_secs": self.node_cpu_secs.map(round3),
            "node_cpu_us_per_payment": self.per_payment_us(self.node_cpu_secs),
            "machine": machine(),
        })
    }

    fn text(&self) -> String {
        use std::fmt::Write as _;
        let t = &self.tally;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "onecard-sim pay: run {} against {}: {} readers ({} scheduling), {} merchants, {:.1} s measured after {} s of warm-up",
            self.run,
            self.node,
            self.readers,
            self.client_scheduling.name(),
            self.merchants,
            self.measured_secs,
            self.warmup_secs
        );
        if let Some(rate) = self.rate {
            let _ = writeln!(
                s,
                "paced at {rate} payments/s in all; a payment's latency counts from when it was due"
            );
        }
        let pay = self.latencies.percentiles(Step::Payment);
        let _ = writeln!(
            s,
            "payments: {} ({:.1}/s); whole payment p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            t.payments,
            self.payments_per_sec(),
            pay.p50,
            pay.p99,
            pay.max
        );
        let _ = writeln!(
            s,
            "{:<16} {:>9} {:>9} {:>9} {:>9}",
            "step", "count", "p50 ms", "p99 ms", "max ms"
        );
        for step in Step::ALL {
            let p = self.latencies.percentiles(step);
            let _ = writeln!(
                s,
                "{:<16} {:>9} {:>9.2} {:>9.2} {:>9.2}",
                step.name(),
                p.count,
                p.p50,
                p.p99,
                p.max
            );
        }
        let _ = writeln!(
            s,
            "planted: wrong PIN {} (refused {}), foreign card {} (refused {}, {} skipped for the rate limit); unexpected refusals {}",
            t.planted_wrong_pin,
            t.refused_wrong_pin,
            t.planted_foreign,
            t.refused_foreign,
            t.foreign_skipped,
            t.unexpected_refusals
        );
        let cpu = |c: Option<f64>| match (c, self.per_payment_us(c)) {
            (Some(c), Some(us)) => format!("{c:.2} s ({us:.0} µs per payment)"),
            (Some(c), None) => format!("{c:.2} s"),
            _ => "n/a".into(),
        };
        let _ = writeln!(
            s,
            "CPU: client {}, node {}",
            cpu(self.client_cpu_secs),
            cpu(self.node_cpu_secs)
        );
        let _ = writeln!(s, "errors: {}", t.error_count());
        for (kind, n) in &t.errors {
            let _ = writeln!(s, "  {kind}: {n}");
        }
        for sample in &t.samples {
            let _ = writeln!(s, "  e.g. {sample}");
        }
        let _ = write!(
            s,
            "refusals: {}",
            if t.refusals_ok() { "ok" } else { "NOT OK" }
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn node_urls_must_be_plain_http_on_loopback() {
        assert_eq!(
            node_address("http://127.0.0.1:8080/").unwrap(),
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080)
        );
        assert_eq!(node_address("http://127.0.0.1").unwrap().port(), 80);
        assert!(node_address("http://localhost:9")
            .unwrap()
            .ip()
            .is_loopback());
        for bad in [
            "https://127.0.0.1:8080",
            "127.0.0.1:8080",
            "http://10.1.2.3:80",
            "http://127.0.0.1:8080/api",
            "http://",
        ] {
            assert!(node_address(bad).is_err(), "{bad}");
        }
    }
}
