//! Account management (SPEC F5): moving money between a consumer's linked bank accounts and
//! into the wallet, at once or by standing transfer rules ("on the 1st, move X to the wallet").
//!
//! The money moves are the engine's (`Engine::transfer_between_banks`, `Engine::credit` from a
//! linked account), each under an id derived from what asked for it (the request's
//! Idempotency-Key, or the rule and the month it runs for), so that a repeat — a client's
//! retry, the scheduler running a rule again after a crash — moves nothing twice. The rules
//! are the node's records: `tr/<consumer>/<rule>` the rule, `td/<due secs>/<consumer>/<rule>`
//! the due index the scheduler reads by key range, never scanning every rule. The auto top-up
//! (the wallet back to the cap from the designated account) is the engine's own rule; it is
//! listed beside these, not stored.

use onecard_engine::commands::{BankTransferCmd, CreditCmd};
use onecard_engine::{Amount, CreditSource, CreditTarget, Outcome, Refusal};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::app::AppError;
use crate::notify::{self, Notification, Recipient};
use crate::records::{self, sha256_hex};
use crate::state::Node;
use crate::store::{self, Write};

/// Where a transfer's money goes: another of the consumer's bank accounts (its id), or the
/// wallet.
pub const WALLET: &str = "wallet";

/// A standing transfer rule: on `day` of every month (UTC), move `amount` from the bank
/// account `from` to `to` (another account, or `wallet`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferRule {
    pub from: String,
    pub to: String,
    pub amount: Amount,
    /// 1 to 28, so that every month has the day.
    pub day: u8,
    /// What the last run did (set by the scheduler).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<RuleRun>,
    /// When it runs next (unix seconds; set by the node).
    #[serde(default)]
    pub next_due: u64,
}

/// One run of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRun {
    /// `YYYY-MM`.
    pub month: String,
    pub at: u64,
    /// `done`, or the refusal's code (`refused_funds`, …).
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Checks a rule as the consumer sends it (the node fills in `next_due` and `last_run`).
pub fn check_rule(rule: &TransferRule) -> Result<(), String> {
    if !(1..=28).contains(&rule.day) {
        return Err("day must be 1 to 28, so that every month has it".into());
    }
    if !rule.amount.is_positive() {
        return Err("amount must be greater than zero".into());
    }
    if rule.from == rule.to {
        return Err("from and to must differ".into());
    }
    Ok(())
}

/// The first moment at or after `now` that is 00:00 UTC of day `day` of a month.
pub fn next_due(now: u64, day: u8) -> u64 {
    let Ok(t) = OffsetDateTime::from_unix_timestamp(i64::try_from(now).unwrap_or(i64::MAX)) else {
        return now;
    };
    let (mut year, mut month) = (t.year(), u8::from(t.month()));
    loop {
        let candidate = time::Month::try_from(month)
            .ok()
            .and_then(|m| time::Date::from_calendar_date(year, m, day).ok())
            .map(|d| d.midnight().assume_utc().unix_timestamp());
        if let Some(c) = candidate.and_then(|c| u64::try_from(c).ok()) {
            if c >= now {
                return c;
            }
        }
        month += 1;
        if month > 12 {
            month = 1;
            year += 1;
        }
    }
}

/// `YYYY-MM` of a moment (UTC).
fn month_of(at: u64) -> String {
    match OffsetDateTime::from_unix_timestamp(i64::try_from(at).unwrap_or(0)) {
        Ok(t) => format!("{:04}-{:02}", t.year(), u8::from(t.month())),
        Err(_) => "0000-00".into(),
    }
}

/// Moves `amount` of `consumer`'s money from bank account `from` to `to` (another account, or
/// [`WALLET`]) under the engine id `id`. Into the wallet it is all or nothing under the cap.
pub async fn transfer(
    node: &Node,
    id: &str,
    consumer: &str,
    from: &str,
    to: &str,
    amount: Amount,
) -> Result<Result<Outcome, Refusal>, AppError> {
    let now = node.now();
    let result = if to == WALLET {
        let designated = node
            .engine
            .bank_accounts(consumer)?
            .and_then(|a| a.into_iter().next());
        let source = if designated.as_deref() == Some(from) {
            CreditSource::BankTransfer
        } else {
            CreditSource::LinkedBank {
                bank: from.to_string(),
            }
        };
        let cmd = CreditCmd {
            id: id.to_string(),
            consumer: consumer.to_string(),
            source,
            target: CreditTarget::WalletOnly,
            amount,
        };
        node.engine.credit(cmd, now).await?
    } else {
        let cmd = BankTransferCmd {
            id: id.to_string(),
            consumer: consumer.to_string(),
            from: from.to_string(),
            to: to.to_string(),
            amount,
        };
        node.engine.transfer_between_banks(cmd, now).await?
    };
    Ok(result)
}

/// The engine id of a transfer asked for with an Idempotency-Key.
pub fn request_transfer_id(consumer: &str, key: &str) -> String {
    format!(
        "trf-{}",
        &sha256_hex(format!("{consumer}\0{key}").as_bytes())[..32]
    )
}

/// The engine id of a rule's run due at `due`: the same for every attempt of that run (a
/// crash before the run is recorded runs it again, and the engine answers the first outcome).
fn rule_run_id(consumer: &str, rule: &str, due: u64) -> String {
    format!(
        "rule-{}",
        &sha256_hex(format!("{consumer}\0{rule}\0{due}").as_bytes())[..32]
    )
}

/// The writes that store `rule` (with its next run from `now`) in place of `before`.
pub fn store_rule(
    consumer: &str,
    name: &str,
    mut rule: TransferRule,
    before: Option<&TransferRule>,
    first_run: Option<u64>,
    now: u64,
) -> (TransferRule, Vec<Write>) {
    rule.next_due = first_run.unwrap_or_else(|| next_due(now, rule.day));
    rule.last_run = before.and_then(|b| b.last_run.clone());
    let mut writes = Vec::new();
    if let Some(b) = before {
        writes.push(store::remove(records::transfer_due_key(
            b.next_due, consumer, name,
        )));
    }
    writes.push(store::json(
        records::transfer_due_key(rule.next_due, consumer, name),
        &(),
    ));
    writes.push(store::json(
        records::transfer_rule_key(consumer, name),
        &rule,
    ));
    (rule, writes)
}

/// How many due rules one pass runs at most.
const PASS: usize = 256;

/// Runs every rule that is due: the engine's transfer under the rule's id for the month, then
/// in one commit the rule's result, its next run, and the consumer's notification. A crash in
/// between runs it again, and the engine answers the same id with its first outcome.
pub async fn run_due(node: &Node) -> Result<usize, AppError> {
    let now = node.now();
    let (due, _) = node.store.keys_while("td/", PASS, |k| {
        records::parse_transfer_due_key(k).is_none_or(|(d, _, _)| d <= now)
    })?;
    let mut ran = 0;
    for key in due {
        let Some((due_at, consumer, name)) = records::parse_transfer_due_key(&key) else {
            node.store.commit(vec![store::remove(key)]).await?;
            continue;
        };
        let rule_key = records::transfer_rule_key(&consumer, &name);
        let Some(mut rule) = node.store.get::<TransferRule>(&rule_key)? else {
            node.store.commit(vec![store::remove(key)]).await?;
            continue;
        };
        if rule.next_due != due_at {
            // A stale index entry (the rule was changed): the rule's own is elsewhere.
            node.store.commit(vec![store::remove(key)]).await?;
            continue;
        }
        let month = month_of(due_at);
        let id = rule_run_id(&consumer, &name, due_at);
        let result = transfer(node, &id, &consumer, &rule.from, &rule.to, rule.amount).await?;
        let (code, reason) = match &result {
            Ok(_) => ("done".to_string(), None),
            Err(r) => (r.code_str().replace(':', "_"), Some(r.message.clone())),
        };
        rule.last_run = Some(RuleRun {
            month: month.clone(),
            at: now,
            result: code.clone(),
            reason: reason.clone(),
        });
        // The next month's run: strictly after this one.
        rule.next_due = next_due(due_at + 1, rule.day);
        let mut writes = vec![
            store::remove(key),
            store::json(
                records::transfer_due_key(rule.next_due, &consumer, &name),
                &(),
            ),
            store::json(rule_key, &rule),
        ];
        let n = Notification {
            id: format!("ntf_{id}"),
            recipient: Recipient::consumer(&consumer),
            event_type: if result.is_ok() {
                "transfer.done".into()
            } else {
                "transfer.failed".into()
            },
            payload: serde_json::json!({
                "rule": name,
                "month": month,
                "from": rule.from,
                "to": rule.to,
                "amount": rule.amount.to_string(),
                "result": code,
                "reason": reason,
            }),
            created_at: now,
        };
        writes.extend(notify::writes(node, &n)?);
        node.store.commit(writes).await?;
        node.work_wake.notify();
        ran += 1;
    }
    Ok(ran)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-06 12:00 UTC.
    const NOW: u64 = 1_796_558_400;

    #[test]
    fn a_rule_runs_next_at_midnight_of_its_day_this_month_or_the_next() {
        // The 6th at noon: the 6th has passed, the 7th has not.
        assert_eq!(month_of(next_due(NOW, 6)), "2027-01");
        assert_eq!(month_of(next_due(NOW, 7)), "2026-12");
        assert_eq!(next_due(NOW, 7), NOW + 12 * 3600);
        // Midnight itself is due at once.
        let midnight = NOW - 12 * 3600;
        assert_eq!(next_due(midnight, 6), midnight);
        // Across the year's end, and strictly after a run.
        let dec_28 = next_due(NOW, 28);
        assert_eq!(month_of(next_due(dec_28 + 1, 28)), "2027-01");
    }

    #[test]
    fn rules_are_checked_before_they_are_stored() {
        let rule = |day, amount: &str, from: &str| TransferRule {
            from: from.into(),
            to: WALLET.into(),
            amount: Amount::parse(amount).unwrap(),
            day,
            last_run: None,
            next_due: 0,
        };
        assert!(check_rule(&rule(1, "10.00", "bk-1")).is_ok());
        assert!(check_rule(&rule(0, "10.00", "bk-1")).is_err());
        assert!(check_rule(&rule(29, "10.00", "bk-1")).is_err());
        assert!(check_rule(&rule(1, "0.00", "bk-1")).is_err());
        assert!(check_rule(&rule(1, "1.00", WALLET)).is_err());
    }

    #[test]
    fn run_ids_are_one_per_run_of_a_rule() {
        assert_eq!(rule_run_id("c", "r", 7), rule_run_id("c", "r", 7));
        assert_ne!(rule_run_id("c", "r", 7), rule_run_id("c", "r", 8));
        assert_ne!(rule_run_id("c\0r", "", 7), rule_run_id("c", "r", 7));
        assert!(request_transfer_id("c", "k").len() <= 128);
    }
}
