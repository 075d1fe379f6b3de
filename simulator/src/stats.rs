//! What a run measured: operations and their latency by kind, outcomes, and what went wrong.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

/// The kinds of operation the simulator times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OpKind {
    Place,
    Confirm,
    Code,
    Cancel,
    Refund,
    Tick,
    Deposit,
    BankMode,
    /// A bill's order placed by its autopay rule (or the consumer's approval).
    Bill,
    /// A recharge card's credit, and its wrong codes (another consumer, a repeat).
    Recharge,
    /// An employer's balance funded for a payroll batch.
    Fund,
    /// A payroll line's credit (and its repeats).
    Salary,
    /// A credit limit set anew.
    CreditLimit,
}

impl OpKind {
    pub const ALL: [OpKind; 8] = [
        OpKind::Place,
        OpKind::Confirm,
        OpKind::Code,
        OpKind::Cancel,
        OpKind::Refund,
        OpKind::Tick,
        OpKind::Deposit,
        OpKind::BankMode,
    ];

    /// The service operations (`--services-pct`), reported apart so that a run without them
    /// reports what it always did.
    pub const SERVICES: [OpKind; 5] = [
        OpKind::Bill,
        OpKind::Recharge,
        OpKind::Fund,
        OpKind::Salary,
        OpKind::CreditLimit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Place => "place",
            OpKind::Confirm => "confirm",
            OpKind::Code => "code",
            OpKind::Cancel => "cancel",
            OpKind::Refund => "refund",
            OpKind::Tick => "tick",
            OpKind::Deposit => "deposit",
            OpKind::BankMode => "bank_mode",
            OpKind::Bill => "bill",
            OpKind::Recharge => "recharge",
            OpKind::Fund => "fund",
            OpKind::Salary => "salary",
            OpKind::CreditLimit => "credit_limit",
        }
    }

    /// Commands a consumer sends to the engine, acknowledged once durable: the population of
    /// the headline latency percentiles. Ticks (work over every consumer) and calls to the
    /// simulated bank are reported on their own.
    pub fn is_consumer_command(self) -> bool {
        matches!(
            self,
            OpKind::Place | OpKind::Confirm | OpKind::Code | OpKind::Cancel | OpKind::Refund
        )
    }
}

/// Latencies in microseconds, 1 µs to one hour, three significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

/// Percentiles of one histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// Keep this many messages about unexpected outcomes and errors for the report.
const SAMPLES: usize = 20;

/// Everything recorded during a run. Lives on the runtime's one thread (behind a `RefCell`).
pub struct Recorder {
    by_kind: BTreeMap<OpKind, Histogram<u64>>,
    consumer_commands: Histogram<u64>,
    /// (kind, outcome) → how many; counted without building a string per command.
    counts: std::collections::HashMap<(OpKind, &'static str), u64>,
    /// Lifecycles completed (all their commands answered as the rules allow), by path.
    pub lifecycles: BTreeMap<&'static str, u64>,
    /// Service operations completed the same way, by kind (`bill`, `recharge`, `payroll`,
    /// `credit_limit`).
    pub services: BTreeMap<&'static str, u64>,
    pub unexpected: u64,
    pub errors: u64,
    pub samples: Vec<String>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            by_kind: OpKind::ALL
                .iter()
                .chain(OpKind::SERVICES.iter())
                .map(|k| (*k, histogram()))
                .collect(),
            consumer_commands: histogram(),
            counts: Default::default(),
            lifecycles: BTreeMap::new(),
            services: BTreeMap::new(),
            unexpected: 0,
            errors: 0,
            samples: Vec::new(),
        }
    }
}

impl Recorder {
    /// An acknowledged operation: its latency and its outcome.
    /// `kind:outcome` → how many, e.g. `place:accepted`, `confirm:awaiting_funds`.
    pub fn outcomes(&self) -> BTreeMap<String, u64> {
        self.counts
            .iter()
            .map(|((kind, outcome), n)| (format!("{}:{outcome}", kind.name()), *n))
            .collect()
    }

    pub fn op(&mut self, kind: OpKind, took: Duration, outcome: &'static str) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        if let Some(h) = self.by_kind.get_mut(&kind) {
            h.saturating_record(us);
        }
        if kind.is_consumer_command() {
            self.consumer_commands.saturating_record(us);
        }
        *self.counts.entry((kind, outcome)).or_default() += 1;
    }

    /// An outcome the rules do not allow here.
    pub fn unexpected(&mut self, message: String) {
        self.unexpected += 1;
        self.sample(message);
    }

    /// A fault: the engine or the bank could not carry the command out.
    pub fn error(&mut self, message: String) {
        self.errors += 1;
        self.sample(message);
    }

    fn sample(&mut self, message: String) {
        if self.samples.len() < SAMPLES {
            self.samples.push(message);
        }
    }

    pub fn lifecycle_done(&mut self, path: &'static str) {
        *self.lifecycles.entry(path).or_default() += 1;
    }

    pub fn service_done(&mut self, kind: &'static str) {
        *self.services.entry(kind).or_default() += 1;
    }

    pub fn lifecycles_done(&self) -> u64 {
        self.lifecycles.values().sum()
    }

    pub fn percentiles(&self, kind: OpKind) -> Percentiles {
        self.by_kind
            .get(&kind)
            .map(Percentiles::of)
            .unwrap_or_default()
    }

    /// Percentiles over every consumer command (place, confirm, code, cancel, refund).
    pub fn command_percentiles(&self) -> Percentiles {
        Percentiles::of(&self.consumer_commands)
    }
}

/// The process's peak resident set size so far (`VmHWM`), in bytes; `None` off Linux.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// CPU time this process has used so far (user + system, every thread), from
/// `/proc/self/stat`: with the lifecycles done in between, the CPU cost per lifecycle, which a
/// busy machine distorts much less than the wall-clock rate.
pub fn process_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the name.
    let utime: f64 = fields.nth(11)?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) / ticks as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_out_in_milliseconds() {
        let mut r = Recorder::default();
        for ms in 1..=1000u64 {
            r.op(OpKind::Place, Duration::from_millis(ms), "accepted");
        }
        r.op(OpKind::Tick, Duration::from_secs(5), "ok");
        let p = r.command_percentiles();
        assert_eq!(p.count, 1000);
        assert!((p.p50 - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.max - 1000.0).abs() < 1.0, "{p:?}");
        assert_eq!(r.percentiles(OpKind::Tick).count, 1);
        assert_eq!(r.outcomes()["place:accepted"], 1000);
    }

    #[test]
    fn peak_rss_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_bytes().unwrap() > 0);
        }
    }
}
