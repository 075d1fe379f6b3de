//! What the readers of `onecard-sim pay` count: latency per step, payments, planted refusals
//! and errors by kind. Each reader keeps its own [`Tally`] of counts (no sharing while it runs);
//! the run merges them at the end. Latencies go into one set of histograms for all readers
//! ([`Latencies`], one lock per payment): a histogram of 1 µs to an hour at three significant
//! digits is about 190 KB, and seven per reader would be megabytes of memory touched for the
//! first time during the run (page faults, zeroing) for nothing.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::stats::{histogram, Percentiles};

/// The timed steps: one HTTP exchange each, and the whole payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `POST /v1/orders` (the merchant).
    CreateOrder,
    /// `GET /v1/reader/checkouts/{order}`.
    Checkout,
    /// `POST /v1/reader/swipe`.
    Swipe,
    /// `POST /v1/reader/authenticate` (the node places the order on authorisation).
    Authenticate,
    /// `POST /v1/reader/confirm-address`.
    ConfirmAddress,
    /// `POST /v1/consumer/orders/{order}/receipt` (after the payment, not part of it).
    Receipt,
    /// From the merchant's order to the answer that the order is placed.
    Payment,
}

impl Step {
    pub const ALL: [Step; 7] = [
        Step::CreateOrder,
        Step::Checkout,
        Step::Swipe,
        Step::Authenticate,
        Step::ConfirmAddress,
        Step::Receipt,
        Step::Payment,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::CreateOrder => "create_order",
            Step::Checkout => "checkout",
            Step::Swipe => "swipe",
            Step::Authenticate => "authenticate",
            Step::ConfirmAddress => "confirm_address",
            Step::Receipt => "receipt",
            Step::Payment => "payment",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Latency histograms by step, shared by the readers.
pub struct Latencies(Mutex<Vec<Histogram<u64>>>);

impl Default for Latencies {
    fn default() -> Latencies {
        Latencies(Mutex::new(Step::ALL.iter().map(|_| histogram()).collect()))
    }
}

impl Latencies {
    /// Records what one payment took, step by step, under one lock.
    pub fn record(&self, times: &[(Step, Duration)]) {
        if times.is_empty() {
            return;
        }
        let mut h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for &(step, took) in times {
            let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
            h[step.index()].saturating_record(us);
        }
    }

    pub fn percentiles(&self, step: Step) -> Percentiles {
        let h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        Percentiles::of(&h[step.index()])
    }
}

/// Keep this many error messages for the report.
const SAMPLES: usize = 20;

/// Counts over the whole run, warm-up included: what the node's own counters should show.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Answers with the expected status (201 for an order, 200 for the others), by step (the
    /// index of [`Step`]; nothing under `Payment`).
    pub answered: [u64; Step::ALL.len()],
    /// Payments that ended with the order placed.
    pub payments: u64,
    /// Orders settled by the consumer's receipt.
    pub settled: u64,
    /// HTTP requests sent.
    pub requests: u64,
}

impl Totals {
    pub fn answered(&self, step: Step) -> u64 {
        self.answered[step.index()]
    }

    /// Counts an answer with the expected status to `step`.
    pub fn answer(&mut self, step: Step) {
        self.answered[step.index()] += 1;
    }
}

/// One reader's counts, or the merge of all of them.
#[derive(Debug, Default)]
pub struct Tally {
    /// Payments that started in the measured window and ended with the order placed.
    pub payments: u64,
    /// Of those, payments where the node asked to confirm the delivery address (and the
    /// consumer accepted).
    pub address_confirmations: u64,
    pub totals: Totals,
    pub planted_wrong_pin: u64,
    pub refused_wrong_pin: u64,
    pub planted_foreign: u64,
    pub refused_foreign: u64,
    /// Foreign-reader swipes not planted because the reader's budget of refused swipes (the
    /// node's rate limit) was spent.
    pub foreign_skipped: u64,
    /// Refusals nobody planted (and planted ones refused for another reason).
    pub unexpected_refusals: u64,
    pub errors: BTreeMap<String, u64>,
    pub samples: Vec<String>,
}

impl Tally {
    /// An error of `kind` (a short, bounded name such as `swipe:http_500:internal`), with a
    /// message kept as a sample.
    pub fn error(&mut self, kind: &str, message: &str) {
        match self.errors.get_mut(kind) {
            Some(n) => *n += 1,
            None => {
                self.errors.insert(kind.to_string(), 1);
            }
        }
        if self.samples.len() < SAMPLES {
            self.samples.push(format!("{kind}: {message}"));
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Every planted refusal refused as expected, and no refusal nobody planted.
    pub fn refusals_ok(&self) -> bool {
        self.refused_wrong_pin == self.planted_wrong_pin
            && self.refused_foreign == self.planted_foreign
            && self.unexpected_refusals == 0
    }

    pub fn merge(&mut self, other: Tally) {
        self.payments += other.payments;
        self.address_confirmations += other.address_confirmations;
        let (a, b) = (&mut self.totals, other.totals);
        for (x, y) in a.answered.iter_mut().zip(b.answered) {
            *x += y;
        }
        a.payments += b.payments;
        a.settled += b.settled;
        a.requests += b.requests;
        self.planted_wrong_pin += other.planted_wrong_pin;
        self.refused_wrong_pin += other.refused_wrong_pin;
        self.planted_foreign += other.planted_foreign;
        self.refused_foreign += other.refused_foreign;
        self.foreign_skipped += other.foreign_skipped;
        self.unexpected_refusals += other.unexpected_refusals;
        for (k, n) in other.errors {
            *self.errors.entry(k).or_default() += n;
        }
        for s in other.samples {
            if self.samples.len() < SAMPLES {
                self.samples.push(s);
            }
        }
    }
}

/// A name from the node (an outcome, a refusal reason, an error code) made safe for an error
/// kind: lower-case letters, digits and `_`, at most 40 characters.
pub fn word(s: &str) -> String {
    let w: String = s
        .chars()
        .take(40)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if w.is_empty() {
        "none".into()
    } else {
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_are_recorded_by_step() {
        let l = Latencies::default();
        l.record(&[
            (Step::Swipe, Duration::from_millis(2)),
            (Step::Swipe, Duration::from_millis(4)),
            (Step::Payment, Duration::from_millis(9)),
        ]);
        assert_eq!(l.percentiles(Step::Swipe).count, 2);
        assert!((l.percentiles(Step::Swipe).max - 4.0).abs() < 0.01);
        assert_eq!(l.percentiles(Step::Payment).count, 1);
        assert_eq!(l.percentiles(Step::Receipt).count, 0);
    }

    #[test]
    fn merging_adds_up_and_refusals_are_checked() {
        let mut a = Tally {
            planted_wrong_pin: 2,
            refused_wrong_pin: 2,
            ..Tally::default()
        };
        a.error("swipe:http_500:internal", "boom");
        let mut b = Tally {
            planted_foreign: 1,
            ..Tally::default()
        };
        b.error("swipe:http_500:internal", "again");
        b.error("authenticate:order_taken", "new outcome");
        a.merge(b);
        assert_eq!(a.error_count(), 3);
        assert_eq!(a.errors["swipe:http_500:internal"], 2);
        assert!(!a.refusals_ok(), "a planted foreign swipe was not refused");
        a.refused_foreign = 1;
        assert!(a.refusals_ok());
        a.unexpected_refusals = 1;
        assert!(!a.refusals_ok());
    }

    #[test]
    fn words_are_bounded() {
        assert_eq!(word("order_taken"), "order_taken");
        assert_eq!(word("Bad Thing!"), "bad_thing_");
        assert_eq!(word(""), "none");
        assert_eq!(word(&"x".repeat(100)).len(), 40);
    }
}
