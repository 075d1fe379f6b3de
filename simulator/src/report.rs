//! The end-of-run report: text for people, one JSON object for scripts.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use onecard_engine::engine::RecoveryInfo;
use serde_json::{json, Map, Value};

use crate::analysis::AnalysisRun;
use crate::checks::{money, Check};
use crate::runner::Book;
use crate::stats::{OpKind, Percentiles, Recorder};

/// What the service operations did (`--services-pct`), for the report.
#[derive(Debug, Clone, Default)]
pub struct ServicesSummary {
    pub pct: f64,
    /// Bills by rule and what became of them (`always:placed`, `ask:declined`, …).
    pub bills: BTreeMap<String, u64>,
    pub recharges_credited: u64,
    pub recharges_refused: u64,
    pub codes_stolen: u64,
    pub codes_repeated: u64,
    pub payrolls: u64,
    pub payrolls_underfunded: u64,
    pub lines_paid: u64,
    pub lines_failed: u64,
    pub lines_repeated: u64,
    pub limit_changes: u64,
    /// The analysis run at the end: records and events read, events counted, consumer-months
    /// in the index, and how long it took.
    pub analysis_records: u64,
    pub analysis_events: u64,
    pub analysis_counted: u64,
    pub analysis_consumer_months: usize,
    pub analysis_ms: f64,
}

impl ServicesSummary {
    pub fn of(pct: f64, book: &Book, a: &AnalysisRun) -> ServicesSummary {
        let s = &book.services;
        ServicesSummary {
            pct,
            bills: s.bill_outcomes.clone(),
            recharges_credited: s
                .credits
                .values()
                .filter(|c| {
                    matches!(
                        c.source,
                        onecard_engine::ledger::CreditSource::RechargeCard { .. }
                    )
                })
                .count() as u64,
            recharges_refused: s.recharges_refused,
            codes_stolen: s.codes_stolen,
            codes_repeated: s.codes_repeated,
            payrolls: s.payrolls,
            payrolls_underfunded: s.payrolls_underfunded,
            lines_paid: s.lines_paid,
            lines_failed: s.lines_failed,
            lines_repeated: s.lines_repeated,
            limit_changes: s.limit_changes,
            analysis_records: a.records,
            analysis_events: a.events,
            analysis_counted: a.counted,
            analysis_consumer_months: a.index.len(),
            analysis_ms: a.millis,
        }
    }

    fn json(&self) -> Value {
        json!({
            "services_pct": self.pct,
            "bills": self.bills,
            "recharges": {
                "credited": self.recharges_credited,
                "refused": self.recharges_refused,
                "codes_redeemed_already": self.codes_stolen,
                "codes_repeated": self.codes_repeated,
            },
            "payroll": {
                "batches": self.payrolls,
                "underfunded": self.payrolls_underfunded,
                "lines_paid": self.lines_paid,
                "lines_failed": self.lines_failed,
                "lines_repeated": self.lines_repeated,
            },
            "limit_changes": self.limit_changes,
            "analysis": {
                "records": self.analysis_records,
                "events": self.analysis_events,
                "counted": self.analysis_counted,
                "consumer_months": self.analysis_consumer_months,
                "ms": round3(self.analysis_ms),
            },
        })
    }
}

/// The engine's restart in the middle of the run.
#[derive(Debug, Clone)]
pub struct Restart {
    /// Lifecycles done when it happened.
    pub after_lifecycles: u64,
    /// Closing the engine and the simulated bank.
    pub close_ms: f64,
    /// Opening them again: `SimBank::open` and `Engine::open` (recovery and reconciliation).
    pub recovery_ms: f64,
    pub info: RecoveryInfo,
}

/// What `verify` said, without the replayed state.
#[derive(Debug, Clone)]
pub struct VerifySummary {
    pub ok: bool,
    pub error: Option<String>,
    pub records: u64,
    pub entries: u64,
    pub events: u64,
    pub topups_done: u64,
    pub topups_refused: u64,
    pub view_checked: Option<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct Residency {
    pub resident_at_end: usize,
    pub activations: u64,
    pub passivations: u64,
}

pub struct Report {
    pub seed: u64,
    pub consumers: u64,
    pub merchants: u64,
    pub orders: u64,
    pub concurrency: usize,
    pub arbiters: usize,
    pub tick_every: u64,
    /// Which bank the engine worked with: the in-process one, or the ISO 20022 adapter to a
    /// bank simulator's URL.
    pub bank: String,
    /// What the run did not exercise or check, and why (for `--bank`).
    pub notes: Vec<String>,
    pub data_dir: String,
    pub data_kept: bool,
    pub setup_secs: f64,
    /// The measured run: the phases, without setup, the restart and the drain.
    pub run_secs: f64,
    /// CPU time of the whole process (every thread) during the measured run.
    pub run_cpu_secs: f64,
    pub drain_secs: f64,
    pub checks_secs: f64,
    /// Lifecycles generated; the recorder counts those completed.
    pub lifecycles_started: u64,
    /// With `--services-pct`: what the service operations did.
    pub services: Option<ServicesSummary>,
    pub stopped_by_duration: bool,
    pub rec: Recorder,
    pub restart: Option<Restart>,
    /// Peak RSS at the end of the measured run, and at the very end (after the checks, which
    /// hold the live state and the replay at once).
    pub peak_rss_run: Option<u64>,
    pub peak_rss_end: Option<u64>,
    /// Consumer actors in memory at the end of the run, and how often they were activated
    /// and passivated (since the last engine start).
    pub residency: Residency,
    pub opening_total: i128,
    pub deposits_total: i128,
    pub order_states: BTreeMap<&'static str, u64>,
    pub verify: VerifySummary,
    pub checks: Vec<Check>,
    pub digest: Option<String>,
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn per_sec(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

fn mib(b: Option<u64>) -> String {
    b.map_or("n/a".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0))
}

impl Report {
    pub fn invariants_ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    pub fn lifecycles_done(&self) -> u64 {
        self.rec.lifecycles_done()
    }

    pub fn lifecycles_per_sec(&self) -> f64 {
        per_sec(self.lifecycles_done(), self.run_secs)
    }

    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = self.write_text(&mut s);
        s
    }

    fn write_text(&self, s: &mut String) -> std::fmt::Result {
        writeln!(
            s,
            "onecard-sim load: seed {}, {} consumers, {} merchants, {} orders, concurrency {}, {} arbiters, a tick every {} lifecycles",
            self.seed, self.consumers, self.merchants, self.orders, self.concurrency, self.arbiters, self.tick_every
        )?;
        writeln!(s, "bank: {}", self.bank)?;
        for n in &self.notes {
            writeln!(s, "note: {n}")?;
        }
        writeln!(
            s,
            "data: {}{}",
            self.data_dir,
            if self.data_kept {
                " (kept)"
            } else {
                " (removed)"
            }
        )?;
        writeln!(
            s,
            "setup: {} consumers and {} merchants opened in {:.2} s ({:.0} consumers/s)",
            self.consumers,
            self.merchants,
            self.setup_secs,
            per_sec(self.consumers, self.setup_secs)
        )?;
        writeln!(
            s,
            "run: {} of {} lifecycles started, {} completed in {:.2} s: {:.1} lifecycles/s{}",
            self.lifecycles_started,
            self.orders,
            self.lifecycles_done(),
            self.run_secs,
            self.lifecycles_per_sec(),
            if self.stopped_by_duration {
                " (stopped by --duration)"
            } else {
                ""
            }
        )?;
        writeln!(
            s,
            "  CPU: {:.1} s of all threads, {:.1} µs per lifecycle",
            self.run_cpu_secs,
            self.run_cpu_secs * 1e6 / self.lifecycles_done().max(1) as f64
        )?;
        writeln!(
            s,
            "  {:<22} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9}",
            "operation", "count", "ops/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
        )?;
        let row = |s: &mut String, name: &str, p: Percentiles| {
            writeln!(
                s,
                "  {:<22} {:>9} {:>10.1} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                name,
                p.count,
                per_sec(p.count, self.run_secs),
                p.p50,
                p.p99,
                p.p999,
                p.max
            )
        };
        for k in OpKind::ALL {
            row(s, k.name(), self.rec.percentiles(k))?;
        }
        row(s, "consumer commands", self.rec.command_percentiles())?;
        if self.services.is_some() {
            for k in OpKind::SERVICES {
                row(s, k.name(), self.rec.percentiles(k))?;
            }
        }
        writeln!(
            s,
            "  (ops/s over the measured run; the final tick of the drain is counted with the ticks)"
        )?;
        let paths: Vec<String> = self
            .rec
            .lifecycles
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        writeln!(s, "lifecycles by path: {}", paths.join(", "))?;
        let outcomes: Vec<String> = self
            .rec
            .outcomes()
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        writeln!(s, "outcomes: {}", outcomes.join(", "))?;
        if let Some(v) = &self.services {
            let done: Vec<String> = self
                .rec
                .services
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            let bills: Vec<String> = v.bills.iter().map(|(k, n)| format!("{k} {n}")).collect();
            writeln!(
                s,
                "services ({} % of the work items): {}",
                v.pct,
                done.join(", ")
            )?;
            writeln!(s, "  bills by rule: {}", bills.join(", "))?;
            writeln!(
                s,
                "  recharges: {} credited, {} refused for the cap; wrong codes: {} redeemed already (refused to another consumer), {} repeated by the same consumer",
                v.recharges_credited, v.recharges_refused, v.codes_stolen, v.codes_repeated
            )?;
            writeln!(
                s,
                "  payrolls: {} batches ({} under-funded), {} lines paid, {} failed for funds, {} repeated",
                v.payrolls, v.payrolls_underfunded, v.lines_paid, v.lines_failed, v.lines_repeated
            )?;
            writeln!(s, "  credit limits set: {}", v.limit_changes)?;
            writeln!(
                s,
                "  analysis: {} records, {} events ({} counted) into {} consumer-months in {:.1} ms",
                v.analysis_records,
                v.analysis_events,
                v.analysis_counted,
                v.analysis_consumer_months,
                v.analysis_ms
            )?;
        }
        if let Some(r) = &self.restart {
            writeln!(
                s,
                "restart after {} lifecycles: closed in {:.1} ms, reopened (recovery) in {:.1} ms: the view at record {} ({} entries), {} merchants, {} consumers with time-driven work ahead, {} bank operations confirmed, {} reversed",
                r.after_lifecycles,
                r.close_ms,
                r.recovery_ms,
                r.info.last_seq,
                r.info.entries,
                r.info.merchants,
                r.info.timed_consumers,
                r.info.bank_ops_confirmed,
                r.info.bank_ops_reversed
            )?;
        }
        let states: Vec<String> = self
            .order_states
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        writeln!(
            s,
            "final orders: {}; drain {:.2} s, checks {:.2} s",
            states.join(", "),
            self.drain_secs,
            self.checks_secs
        )?;
        if self.verify.records > 0 {
            writeln!(
                s,
                "journal: {} entries in {} records (one flush each): {:.1} entries per flush",
                self.verify.entries,
                self.verify.records,
                self.verify.entries as f64 / self.verify.records as f64
            )?;
        }
        writeln!(
            s,
            "money: opening {} + deposits {} at the bank; top-ups paid {}, refused {}",
            money(self.opening_total),
            money(self.deposits_total),
            self.verify.topups_done,
            self.verify.topups_refused
        )?;
        writeln!(
            s,
            "peak RSS: {} at the end of the run, {} at the end",
            mib(self.peak_rss_run),
            mib(self.peak_rss_end)
        )?;
        writeln!(
            s,
            "consumer actors: {} resident at the end of the run; {} activations, {} passivations",
            self.residency.resident_at_end, self.residency.activations, self.residency.passivations
        )?;
        if !self.rec.samples.is_empty() {
            writeln!(
                s,
                "problems ({} unexpected outcomes, {} errors; first {}):",
                self.rec.unexpected,
                self.rec.errors,
                self.rec.samples.len()
            )?;
            for m in &self.rec.samples {
                writeln!(s, "  {m}")?;
            }
        }
        writeln!(s, "checks:")?;
        for c in &self.checks {
            writeln!(
                s,
                "  {:<4} {:<18} {}",
                if c.ok { "ok" } else { "FAIL" },
                c.name,
                c.detail
            )?;
        }
        writeln!(
            s,
            "digest: {}",
            self.digest.as_deref().unwrap_or("none (no final state)")
        )?;
        write!(
            s,
            "invariants: {}",
            if self.invariants_ok() { "ok" } else { "FAILED" }
        )
    }

    pub fn json(&self) -> Value {
        let all = self.rec.command_percentiles();
        let mut ops = Map::new();
        let mut counts = Map::new();
        let mut latency = Map::new();
        for k in OpKind::ALL {
            let p = self.rec.percentiles(k);
            ops.insert(
                k.name().into(),
                json!(round3(per_sec(p.count, self.run_secs))),
            );
            counts.insert(k.name().into(), json!(p.count));
            latency.insert(
                k.name().into(),
                json!({"p50": p.p50, "p99": p.p99, "p999": p.p999, "max": p.max}),
            );
        }
        if self.services.is_some() {
            for k in OpKind::SERVICES {
                let p = self.rec.percentiles(k);
                ops.insert(
                    k.name().into(),
                    json!(round3(per_sec(p.count, self.run_secs))),
                );
                counts.insert(k.name().into(), json!(p.count));
                latency.insert(
                    k.name().into(),
                    json!({"p50": p.p50, "p99": p.p99, "p999": p.p999, "max": p.max}),
                );
            }
        }
        ops.insert(
            "lifecycles".into(),
            json!(round3(self.lifecycles_per_sec())),
        );
        counts.insert("lifecycles".into(), json!(self.lifecycles_done()));
        let mut out = json!({
            "seed": self.seed,
            "consumers": self.consumers,
            "merchants": self.merchants,
            "orders": self.orders,
            "concurrency": self.concurrency,
            "arbiters": self.arbiters,
            "tick_every": self.tick_every,
            "bank": self.bank,
            "notes": self.notes,
            "lifecycles_started": self.lifecycles_started,
            "lifecycles": self.lifecycles_done(),
            "lifecycles_by_path": self.rec.lifecycles,
            "stopped_by_duration": self.stopped_by_duration,
            "setup_secs": round3(self.setup_secs),
            "run_secs": round3(self.run_secs),
            "run_cpu_secs": round3(self.run_cpu_secs),
            "cpu_us_per_lifecycle": round3(self.run_cpu_secs * 1e6 / self.lifecycles_done().max(1) as f64),
            "drain_secs": round3(self.drain_secs),
            "checks_secs": round3(self.checks_secs),
            "lifecycles_per_sec": round3(self.lifecycles_per_sec()),
            "ops_per_sec": ops,
            "counts": counts,
            "p50_ms": all.p50,
            "p99_ms": all.p99,
            "p999_ms": all.p999,
            "max_ms": all.max,
            "latency_ms": latency,
        });
        let more = json!({
            "outcomes": self.rec.outcomes(),
            "order_states": self.order_states,
            "peak_rss_bytes": self.peak_rss_run,
            "peak_rss_end_bytes": self.peak_rss_end,
            "resident_consumers_end": self.residency.resident_at_end,
            "activations": self.residency.activations,
            "passivations": self.residency.passivations,
            "restarted": self.restart.is_some(),
            "recovery_ms": self.restart.as_ref().map(|r| round3(r.recovery_ms)),
            "restart": self.restart.as_ref().map(|r| json!({
                "after_lifecycles": r.after_lifecycles,
                "close_ms": round3(r.close_ms),
                "recovery_ms": round3(r.recovery_ms),
                "last_seq": r.info.last_seq,
                "merchants": r.info.merchants,
                "timed_consumers": r.info.timed_consumers,
                "entries": r.info.entries,
                "bank_ops_confirmed": r.info.bank_ops_confirmed,
                "bank_ops_reversed": r.info.bank_ops_reversed,
            })),
            "opening_total": money(self.opening_total),
            "deposits_total": money(self.deposits_total),
            "topups_done": self.verify.topups_done,
            "topups_refused": self.verify.topups_refused,
            "verify": {
                "ok": self.verify.ok,
                "error": self.verify.error,
                "records": self.verify.records,
                "entries": self.verify.entries,
                "events": self.verify.events,
                "view_checked": self.verify.view_checked,
            },
            "checks": self.checks.iter().map(|c| json!({
                "name": c.name, "ok": c.ok, "detail": c.detail
            })).collect::<Vec<_>>(),
            "unexpected": self.rec.unexpected,
            "errors": self.rec.errors,
            "problems": self.rec.samples,
            "digest": self.digest,
            "data_dir": self.data_kept.then_some(&self.data_dir),
            "invariants_ok": self.invariants_ok(),
            "services": self.services.as_ref().map(|v| {
                let mut j = v.json();
                j["done"] = json!(self.rec.services);
                j
            }),
        });
        // Two halves: one `json!` this size is beyond the macro's recursion limit.
        if let (Value::Object(a), Value::Object(b)) = (&mut out, more) {
            a.extend(b);
        }
        out
    }
}
