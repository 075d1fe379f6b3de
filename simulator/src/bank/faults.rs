//! The simulator's faults (docs/bank-http.md): their settings, their partial JSON updates, and
//! the order in which notifications are served while they are on.

use std::collections::{HashMap, HashSet};

use onecard_adapters::iso20022::Reason;
use serde::{Deserialize, Serialize};

/// The longest `delay_ms` or `hang_ms` accepted: a day is already far beyond any client timeout.
pub const MAX_WAIT_MS: u64 = 86_400_000;

/// What the fault settings are now (`GET /admin/faults`). All off by default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Faults {
    pub delay_ms: u64,
    pub drop_after_booking: u64,
    pub hang_ms: u64,
    pub duplicate_notifications: bool,
    pub reorder_notifications: bool,
    pub omit_statement_line: bool,
    pub reject_next: RejectNext,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RejectNext {
    pub count: u64,
    /// Always a code [`Reason::from_code`] knows.
    pub code: String,
}

impl Default for Faults {
    fn default() -> Faults {
        Faults {
            delay_ms: 0,
            drop_after_booking: 0,
            hang_ms: 30_000,
            duplicate_notifications: false,
            reorder_notifications: false,
            omit_statement_line: false,
            reject_next: RejectNext {
                count: 0,
                code: "AM04".into(),
            },
        }
    }
}

/// `POST /admin/faults`: the fields it names are set, the others kept.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsUpdate {
    pub delay_ms: Option<u64>,
    pub drop_after_booking: Option<u64>,
    pub hang_ms: Option<u64>,
    pub duplicate_notifications: Option<bool>,
    pub reorder_notifications: Option<bool>,
    pub omit_statement_line: Option<bool>,
    pub reject_next: Option<RejectNextUpdate>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectNextUpdate {
    pub count: Option<u64>,
    pub code: Option<String>,
}

impl Faults {
    /// Applies an update whole, or nothing of it when a value is refused.
    pub fn update(&mut self, u: FaultsUpdate) -> Result<(), String> {
        for (name, ms) in [("delay_ms", u.delay_ms), ("hang_ms", u.hang_ms)] {
            if ms.is_some_and(|ms| ms > MAX_WAIT_MS) {
                return Err(format!("{name} must be at most {MAX_WAIT_MS}"));
            }
        }
        let code = u.reject_next.as_ref().and_then(|r| r.code.as_deref());
        if let Some(code) = code {
            if Reason::from_code(code).is_none() {
                return Err(format!(
                    "unknown reject_next code {code:?} (AC01, AC04, AC06, AG01, AM04, AM05, MS03)"
                ));
            }
        }
        let mut next = self.clone();
        next.delay_ms = u.delay_ms.unwrap_or(next.delay_ms);
        next.drop_after_booking = u.drop_after_booking.unwrap_or(next.drop_after_booking);
        next.hang_ms = u.hang_ms.unwrap_or(next.hang_ms);
        next.duplicate_notifications = u
            .duplicate_notifications
            .unwrap_or(next.duplicate_notifications);
        next.reorder_notifications = u
            .reorder_notifications
            .unwrap_or(next.reorder_notifications);
        next.omit_statement_line = u.omit_statement_line.unwrap_or(next.omit_statement_line);
        if let Some(r) = u.reject_next {
            next.reject_next.count = r.count.unwrap_or(next.reject_next.count);
            next.reject_next.code = r.code.unwrap_or(next.reject_next.code);
        }
        *self = next;
        Ok(())
    }

    pub fn reject_reason(&self) -> Reason {
        Reason::from_code(&self.reject_next.code).unwrap_or(Reason::InsufficientFunds)
    }
}

/// What has been served of the notifications, for the duplicate and reorder faults.
#[derive(Debug, Default)]
pub struct Serving {
    /// How many times each sequence number was served.
    served: HashMap<u64, u32>,
    /// The `after` values (pair starts) whose pair was served second first.
    swapped: HashSet<u64>,
}

impl Serving {
    /// The sequence number to serve for `after=N`, with `count` notifications made so far
    /// (numbered 1 to `count`); `None` when there is none (204).
    ///
    /// Plain: N + 1. `duplicate_notifications`: a client that asks `after=N` right after it got
    /// N is served N once more first. `reorder_notifications`: pairs (1, 2), (3, 4), … are
    /// served second first: the first `after=0` gets 2, the next `after=0` gets 1.
    pub fn pick(&mut self, faults: &Faults, after: u64, count: u64) -> Option<u64> {
        let pick = if faults.duplicate_notifications
            && (1..=count).contains(&after)
            && self.served.get(&after) == Some(&1)
        {
            after
        } else if faults.reorder_notifications
            && after % 2 == 0
            && after.checked_add(2).is_some_and(|n| n <= count)
            && self.swapped.insert(after)
        {
            after + 2
        } else if after < count {
            after + 1
        } else {
            return None;
        };
        *self.served.entry(pick).or_insert(0) += 1;
        Some(pick)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Follows the notifications as a client does: asks after the highest number it has with
    /// none missing below it.
    fn follow(faults: &Faults, count: u64) -> Vec<u64> {
        let mut serving = Serving::default();
        let mut got = Vec::new();
        let mut have = HashSet::new();
        let mut cursor = 0;
        while let Some(n) = serving.pick(faults, cursor, count) {
            got.push(n);
            have.insert(n);
            while have.contains(&(cursor + 1)) {
                cursor += 1;
            }
        }
        got
    }

    #[test]
    fn notifications_are_served_in_order_twice_or_swapped() {
        let mut f = Faults::default();
        assert_eq!(follow(&f, 3), [1, 2, 3]);
        f.duplicate_notifications = true;
        assert_eq!(follow(&f, 3), [1, 1, 2, 2, 3, 3]);
        f.duplicate_notifications = false;
        f.reorder_notifications = true;
        assert_eq!(follow(&f, 5), [2, 1, 4, 3, 5]);
    }

    #[test]
    fn an_update_sets_what_it_names_or_nothing() {
        let mut f = Faults::default();
        let u: FaultsUpdate =
            serde_json::from_str(r#"{"delay_ms": 5, "reject_next": {"count": 2}}"#).unwrap();
        f.update(u).unwrap();
        assert_eq!((f.delay_ms, f.reject_next.count), (5, 2));
        assert_eq!(f.reject_next.code, "AM04");
        let bad: FaultsUpdate =
            serde_json::from_str(r#"{"delay_ms": 7, "reject_next": {"code": "XX99"}}"#).unwrap();
        assert!(f.update(bad).is_err());
        assert_eq!(f.delay_ms, 5);
        assert!(serde_json::from_str::<FaultsUpdate>(r#"{"delay": 1}"#).is_err());
    }
}
