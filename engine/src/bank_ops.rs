//! The bank operations the journal records, read from the log: what reconciliation
//! (`onecard reconcile`) matches against a bank's statement.
//!
//! An event that names a bank operation (`bank_op`) moves its money on the consumer's bank
//! clearing account, in the same event's postings: negative for money pulled from the bank
//! (a debit: top-up, funding, the opening wallet), positive for money pushed to it (a credit:
//! a refund's overflow).

use std::path::Path;

use crate::bank::BankOpKind;
use crate::journal::{self, JournalError};
use crate::ledger::AccountRef;
use crate::model::Secs;
use crate::money::Amount;

/// One bank operation as the journal holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalBankOp {
    pub id: String,
    pub kind: BankOpKind,
    /// Positive.
    pub amount: Amount,
    /// The engine's clock when the command ran (seconds since the Unix epoch, UTC).
    pub at: Secs,
    /// The journal record holding it.
    pub seq: u64,
}

/// Every bank operation in the journal in `data_dir` (and `archive_dir`), in journal order.
/// Reads the log only: run it on a stopped node's data or a copy.
pub fn journal_bank_ops(
    data_dir: &Path,
    archive_dir: Option<&Path>,
) -> Result<Vec<JournalBankOp>, JournalError> {
    let mut out = Vec::new();
    for rec in journal::read_log(data_dir, archive_dir)? {
        let (rec, _) = rec?;
        for entry in &rec.entries {
            for ev in &entry.events {
                let Some(id) = ev.bank_op() else { continue };
                let mut moved = Amount::ZERO;
                for p in &ev.postings {
                    // A recharge's batch clearing account (`recharge:<batch>`) is no bank's:
                    // only the consumer's own clearing account is what the bank moved (a
                    // recharge's overflow is a credit of that part, not the net of the two).
                    let not_a_bank = ev.consumer().is_some() && ev.is_external_clearing(p);
                    if matches!(p.account, AccountRef::BankClearing(_)) && !not_a_bank {
                        moved = moved
                            .checked_add(p.amount)
                            .map_err(|e| JournalError::Corrupt {
                                seq: rec.seq,
                                reason: e.to_string(),
                            })?;
                    }
                }
                if moved.is_zero() {
                    continue;
                }
                out.push(JournalBankOp {
                    id: id.clone(),
                    kind: if moved.is_negative() {
                        BankOpKind::Debit
                    } else {
                        BankOpKind::Credit
                    },
                    amount: if moved.is_negative() {
                        moved.checked_neg()
                    } else {
                        moved
                    },
                    at: entry.at,
                    seq: rec.seq,
                });
            }
        }
    }
    Ok(out)
}
