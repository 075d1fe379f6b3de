//! Reconciliation: the bank's end-of-day statement (camt.053) of the settlement center's own
//! account against the bank operations the journal records. It changes no balance; it
//! reports.
//!
//! Every operation goes through the own account, the other way round: a debit of a consumer's
//! account (a top-up) is a credit entry on the own account, a credit (a payout, an overflow
//! sweep) a debit entry. Entries and operations are matched by end-to-end id, which is the
//! engine's operation id.
//!
//! Mismatches:
//! - **missing at the bank**: an operation the journal dates on the statement's day, with no
//!   entry;
//! - **missing in the journal**: an entry whose id the journal does not hold (and that is not
//!   one half of a reversal pair: an operation the node never recorded and its reversal,
//!   `RV-<id>`, which cancel out and are listed apart);
//! - **different amount** (or direction), and **different date** (booked on another day than
//!   the journal dates the operation).

use std::collections::HashMap;

use onecard_engine::bank::BankOpKind;
use onecard_engine::bank_ops::JournalBankOp;
use onecard_engine::money::Amount;
use serde::Serialize;

use super::bank::reversal_id;
use super::{BookedEntry, Date, Side, Statement};

/// One mismatch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Mismatch {
    MissingAtBank {
        id: String,
        amount: String,
        journal_date: String,
        journal_record: u64,
    },
    MissingInJournal {
        id: String,
        amount: String,
        side: &'static str,
        booked: String,
    },
    DifferentAmount {
        id: String,
        journal: String,
        bank: String,
    },
    DifferentDate {
        id: String,
        journal_date: String,
        booked: String,
    },
}

/// What reconciliation found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub account: String,
    pub date: String,
    pub statement_id: String,
    /// Entries matched to a journal operation with the same amount, direction and date.
    pub matched: usize,
    /// Operations the node never recorded, each with its reversal, both on the statement.
    pub reversed_pairs: Vec<String>,
    pub mismatches: Vec<Mismatch>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.mismatches.is_empty()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "statement {} of {} for {}: {} entries matched, {} reversed pairs, {} mismatches",
            self.statement_id,
            self.account,
            self.date,
            self.matched,
            self.reversed_pairs.len(),
            self.mismatches.len()
        )?;
        for m in &self.mismatches {
            match m {
                Mismatch::MissingAtBank {
                    id,
                    amount,
                    journal_date,
                    journal_record,
                } => writeln!(
                    f,
                    "  missing at the bank: {id} ({amount}, journal record {journal_record} of {journal_date})"
                )?,
                Mismatch::MissingInJournal {
                    id,
                    amount,
                    side,
                    booked,
                } => writeln!(
                    f,
                    "  missing in the journal: {id} ({side} {amount}, booked {booked})"
                )?,
                Mismatch::DifferentAmount { id, journal, bank } => writeln!(
                    f,
                    "  different amount: {id} (journal {journal}, bank {bank})"
                )?,
                Mismatch::DifferentDate {
                    id,
                    journal_date,
                    booked,
                } => writeln!(
                    f,
                    "  different date: {id} (journal {journal_date}, booked {booked})"
                )?,
            }
        }
        Ok(())
    }
}

/// The signed amount on the own account: positive for a credit entry.
fn signed(amount: Amount, side: Side) -> Amount {
    match side {
        Side::Credit => amount,
        Side::Debit => amount.checked_neg(),
    }
}

/// What an operation does to the own account.
fn op_on_own_account(op: &JournalBankOp) -> Amount {
    match op.kind {
        // Money pulled from a consumer's account arrives on the own account.
        BankOpKind::Debit => op.amount,
        BankOpKind::Credit => op.amount.checked_neg(),
    }
}

fn date_of(secs: u64) -> Option<Date> {
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).ok()?)
        .ok()
        .map(|t| t.date())
}

fn show(amount: Amount) -> String {
    amount.to_string()
}

/// Matches `statement` against the journal's operations `ops`.
pub fn reconcile(ops: &[JournalBankOp], statement: &Statement) -> Report {
    let by_id: HashMap<&str, &JournalBankOp> = ops.iter().map(|o| (o.id.as_str(), o)).collect();
    let entry_ids: HashMap<&str, &BookedEntry> = statement
        .entries
        .iter()
        .map(|e| (e.end_to_end_id.as_str(), e))
        .collect();
    let mut report = Report {
        account: statement.account.clone(),
        date: statement.date.to_string(),
        statement_id: statement.statement_id.clone(),
        matched: 0,
        reversed_pairs: Vec::new(),
        mismatches: Vec::new(),
    };
    for entry in &statement.entries {
        let id = entry.end_to_end_id.as_str();
        let bank = signed(entry.amount, entry.side);
        match by_id.get(id) {
            Some(op) => {
                let journal = op_on_own_account(op);
                let journal_date = date_of(op.at);
                if journal != bank {
                    report.mismatches.push(Mismatch::DifferentAmount {
                        id: id.to_string(),
                        journal: show(journal),
                        bank: show(bank),
                    });
                } else if journal_date != Some(entry.booked) {
                    report.mismatches.push(Mismatch::DifferentDate {
                        id: id.to_string(),
                        journal_date: journal_date.map(|d| d.to_string()).unwrap_or_default(),
                        booked: entry.booked.to_string(),
                    });
                } else {
                    report.matched += 1;
                }
            }
            None => {
                // An operation the node never recorded, and its reversal: they cancel out.
                let reversal = entry_ids.get(reversal_id(id).as_str()).filter(|r| {
                    signed(r.amount, r.side)
                        .checked_add(bank)
                        .is_ok_and(|sum| sum.is_zero())
                });
                let original = statement.entries.iter().find(|o| {
                    reversal_id(&o.end_to_end_id) == id
                        && !by_id.contains_key(o.end_to_end_id.as_str())
                        && signed(o.amount, o.side)
                            .checked_add(bank)
                            .is_ok_and(|sum| sum.is_zero())
                });
                if reversal.is_some() {
                    report.reversed_pairs.push(id.to_string());
                } else if original.is_none() {
                    report.mismatches.push(Mismatch::MissingInJournal {
                        id: id.to_string(),
                        amount: show(entry.amount),
                        side: match entry.side {
                            Side::Credit => "credit",
                            Side::Debit => "debit",
                        },
                        booked: entry.booked.to_string(),
                    });
                }
            }
        }
    }
    for op in ops {
        if date_of(op.at) == Some(statement.date) && !entry_ids.contains_key(op.id.as_str()) {
            report.mismatches.push(Mismatch::MissingAtBank {
                id: op.id.clone(),
                amount: show(op.amount),
                journal_date: statement.date.to_string(),
                journal_record: op.seq,
            });
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{date, datetime};

    fn op(
        id: &str,
        kind: BankOpKind,
        cents: i64,
        at: time::OffsetDateTime,
        seq: u64,
    ) -> JournalBankOp {
        JournalBankOp {
            id: id.into(),
            kind,
            amount: Amount::from_cents(cents),
            at: at.unix_timestamp() as u64,
            seq,
        }
    }

    fn entry(id: &str, cents: i64, side: Side, booked: Date) -> BookedEntry {
        BookedEntry {
            end_to_end_id: id.into(),
            amount: Amount::from_cents(cents),
            side,
            booked,
        }
    }

    fn statement(entries: Vec<BookedEntry>) -> Statement {
        Statement {
            msg_id: "M1".into(),
            created: datetime!(2026-12-06 23:59 UTC),
            statement_id: "S1".into(),
            account: "ONECARD-SETTLEMENT".into(),
            currency: "EUR".into(),
            date: date!(2026 - 12 - 06),
            opening: Amount::ZERO,
            closing: Amount::ZERO,
            entries,
        }
    }

    #[test]
    fn every_planted_mismatch_is_reported_and_nothing_else() {
        let day = datetime!(2026-12-06 10:00 UTC);
        let ops = vec![
            op("a-1", BankOpKind::Debit, 1_000, day, 1),
            op("a-2", BankOpKind::Credit, 250, day, 2),
            op("a-3", BankOpKind::Debit, 700, day, 3), // left out by the bank
            op("a-4", BankOpKind::Debit, 900, day, 4), // booked with another amount
            op(
                "a-5",
                BankOpKind::Debit,
                300,
                datetime!(2026-12-05 23:59 UTC),
                5,
            ), // booked a day late
            op(
                "a-6",
                BankOpKind::Debit,
                100,
                datetime!(2026-12-05 12:00 UTC),
                6,
            ), // another day
        ];
        let d = date!(2026 - 12 - 06);
        let s = statement(vec![
            entry("a-1", 1_000, Side::Credit, d),
            entry("a-2", 250, Side::Debit, d),
            entry("a-4", 990, Side::Credit, d),
            entry("a-5", 300, Side::Credit, d),
            entry("x-9", 42, Side::Credit, d), // unknown to the journal
            entry("o-1", 500, Side::Credit, d), // never recorded, and reversed
            entry("RV-o-1", 500, Side::Debit, d),
        ]);
        let r = reconcile(&ops, &s);
        assert_eq!(r.matched, 2, "{r}");
        assert_eq!(r.reversed_pairs, vec!["o-1".to_string()]);
        let mut kinds: Vec<String> = r
            .mismatches
            .iter()
            .map(|m| {
                let v = serde_json::to_value(m).unwrap();
                format!(
                    "{}:{}",
                    v["kind"].as_str().unwrap(),
                    v["id"].as_str().unwrap()
                )
            })
            .collect();
        kinds.sort();
        assert_eq!(
            kinds,
            vec![
                "different_amount:a-4",
                "different_date:a-5",
                "missing_at_bank:a-3",
                "missing_in_journal:x-9",
            ],
            "{r}"
        );
    }

    #[test]
    fn a_matching_statement_is_clean() {
        let day = datetime!(2026-12-06 08:00 UTC);
        let ops = vec![op("b-1", BankOpKind::Debit, 5_000, day, 1)];
        let s = statement(vec![entry(
            "b-1",
            5_000,
            Side::Credit,
            date!(2026 - 12 - 06),
        )]);
        let r = reconcile(&ops, &s);
        assert!(r.is_clean(), "{r}");
        assert_eq!(r.matched, 1);
    }
}
