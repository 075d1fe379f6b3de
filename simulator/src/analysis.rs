//! The monthly spending analysis, run over the engine's journal at the end of a run with
//! `--services-pct`: the node's own pure aggregation (`onecard_node::analysis::Item::of` and
//! `apply`, keyed by `YearMonth`) fed from `Engine::feed_after`, from the first record, into
//! an in-memory index instead of the node's store. The checks then hold its totals against
//! sums computed independently from the journal's replay (`checks::analysis`), so a change in
//! what the feed says or in how the analysis counts shows up as a failed check.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use onecard_engine::feed::FeedKind;
use onecard_engine::Engine;
use onecard_node::analysis::{apply, Item, YearMonth, UNCATEGORISED};
use onecard_node::records::MonthAggregate;

use crate::population::{biller_id, BILLER_KINDS};

/// Journal records read per call, as the node's follower reads them.
const BATCH: usize = 512;

/// What one analysis run found.
#[derive(Debug, Default)]
pub struct AnalysisRun {
    /// Per consumer and month, what the node's analysis would store.
    pub index: BTreeMap<(String, YearMonth), MonthAggregate>,
    /// How many `Credited` events each credit id has in the journal (I6: at most one).
    pub credited: HashMap<String, u32>,
    /// Records with entries read, events read, and events the analysis counted.
    pub records: u64,
    pub events: u64,
    pub counted: u64,
    pub millis: f64,
    /// Why the run stopped early, if it did (reading the feed, the arithmetic).
    pub error: Option<String>,
}

impl AnalysisRun {
    /// A consumer's spending and income summed over every month, in cents.
    pub fn totals(&self) -> BTreeMap<&str, (i128, i128)> {
        let mut out: BTreeMap<&str, (i128, i128)> = BTreeMap::new();
        for ((consumer, _), agg) in &self.index {
            let t = out.entry(consumer.as_str()).or_default();
            t.0 += agg.spending.cents();
            t.1 += agg.income.cents();
        }
        out
    }

    /// Spending in one category over every consumer and month, in cents.
    pub fn category_total(&self, category: &str) -> i128 {
        self.index
            .values()
            .filter_map(|agg| agg.by_category.get(category))
            .map(|a| a.cents())
            .sum()
    }

    pub fn months(&self) -> usize {
        let mut months: Vec<YearMonth> = self.index.keys().map(|(_, m)| *m).collect();
        months.sort();
        months.dedup();
        months.len()
    }
}

/// A merchant's category as the node would name it: a biller's `bill:<kind>`, any other
/// merchant (the population has no profiles) uncategorised.
fn category(merchant: &str) -> String {
    (0..BILLER_KINDS.len())
        .find(|k| biller_id(*k) == merchant)
        .map_or_else(
            || UNCATEGORISED.to_string(),
            |k| format!("bill:{}", BILLER_KINDS[k]),
        )
}

/// Reads the whole journal as the node's analysis follower does, a batch at a time, and
/// aggregates it. Runs on the runtime's thread with every worker finished.
pub fn run(engine: &Engine) -> AnalysisRun {
    let start = Instant::now();
    let mut out = AnalysisRun::default();
    if let Err(e) = follow(engine, &mut out) {
        out.error = Some(e);
    }
    out.millis = start.elapsed().as_secs_f64() * 1000.0;
    out
}

fn follow(engine: &Engine, out: &mut AnalysisRun) -> Result<(), String> {
    let mut after = 0;
    loop {
        let feed = engine
            .feed_after(after, BATCH)
            .map_err(|e| format!("reading the feed after record {after}: {e}"))?;
        if feed.through <= after {
            return Ok(());
        }
        after = feed.through;
        for record in &feed.records {
            out.records += 1;
            for entry in &record.entries {
                let month = YearMonth::of_unix(entry.at);
                for ev in &entry.events {
                    out.events += 1;
                    if let FeedKind::Credited { credit, .. } = &ev.kind {
                        *out.credited.entry(credit.clone()).or_default() += 1;
                    }
                    let item = Item::of(&ev.kind, category)
                        .map_err(|e| format!("record {}: {e}", record.seq))?;
                    if let Some(item) = item {
                        let agg = out
                            .index
                            .entry((item.consumer().to_string(), month))
                            .or_default();
                        apply(agg, &item).map_err(|e| format!("record {}: {e}", record.seq))?;
                        out.counted += 1;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn billers_are_counted_as_bills_and_the_rest_uncategorised() {
        assert_eq!(category("biller-water"), "bill:water");
        assert_eq!(category("biller-phone"), "bill:phone");
        assert_eq!(category("m3"), UNCATEGORISED);
    }
}
