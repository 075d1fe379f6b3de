//! Salaries (F12), apart from HTTP: storing a checked payroll batch, the worker that funds and
//! pays it line by line, and the batch's report.
//!
//! An employer is a merchant of a kind (`MerchantProfile::employer`), so its balance is the
//! engine's merchant balance: a batch is paid from it, after funding it with the batch's total
//! from the employer's bank account (`Engine::fund_merchant`). A batch is checked whole before
//! anything is stored ([`file`]); a valid one is stored in one commit (the batch, every line
//! `pending`, the employer's index and the worker's queue `po/`), and the worker pays it:
//!
//! 1. **fund**: `fund_merchant` under [`funding_id`]. Refused (the employer's bank cannot pay)
//!    → the batch is `failed` with the reason, no line is paid, the employer is notified.
//! 2. **each line, in order**: `Engine::credit` from the employer's balance under
//!    [`credit_id`], to the wallet (`WalletOverflowToBank`: what the cap has no room for goes
//!    on to the employee's bank account) or to the bank account. The line's outcome, the
//!    batch's counts and the employee's notification are one commit. A refusal fails that line
//!    only (the reason is in the report); so does a bank that does not know the employee's
//!    account. Any other engine error is a fault: the pass stops, and the batch is taken up
//!    again later (the worker's timer), still `paying`.
//! 3. **all lines decided** → `done` or `done_with_failures`, and the employer is notified.
//!
//! **Crashes.** Every engine command here is idempotent by its id, derived from the batch's
//! reference and the line's number. A crash after the engine paid a line and before the node
//! recorded it is repaired by paying the line again: the engine answers `credited` and moves
//! nothing. So no line is paid twice, and the worker, which resumes every batch of `po/` at
//! start-up, completes the report. A batch whose funding was journaled but not recorded is
//! funded "again" the same way.
//!
//! What is left of the funding after failed lines stays in the employer's balance (it can be
//! paid out as a merchant's balance is).

pub mod file;

use std::time::Duration;

use actix_web::web;
use onecard_engine::commands::{CreditCmd, FundCmd};
use onecard_engine::ledger::CreditRecord;
use onecard_engine::{Amount, CreditSource, CreditTarget, Refusal};
use serde::{Deserialize, Serialize};

use crate::app::AppError;
use crate::notify::{self, Notification, Recipient};
use crate::records::{
    self, FailureReason, LineState, PayAccount, PayrollBatch, PayrollLine, PayrollState,
};
use crate::state::{now_ms, Node};
use crate::store::{self, Write};
use file::CheckedBatch;

/// The engine id of a batch's funding.
pub fn funding_id(reference: &str) -> String {
    format!("payroll-fund-{reference}")
}

/// The engine id of a line's credit.
pub fn credit_id(reference: &str, line: u32) -> String {
    format!("payroll-{reference}-{line}")
}

/// SHA-256 over the lines' content (employee, amount, account, in order): two uploads of one
/// batch id are the same batch when this is the same, whatever the file's format.
pub fn digest(batch: &CheckedBatch) -> String {
    let mut text = String::new();
    for l in &batch.lines {
        // Employee ids have no control characters (checked), so `\0` cannot occur in one.
        text.push_str(&format!(
            "{}\0{}\0{}\n",
            l.employee,
            l.amount,
            l.account.as_str()
        ));
    }
    records::sha256_hex(text.as_bytes())
}

/// A new batch, as stored, and the writes of its one commit: the batch, every line
/// `pending`, the employer's index and the worker's queue.
pub fn new_batch(
    employer: &str,
    batch_id: &str,
    checked: &CheckedBatch,
) -> (PayrollBatch, Vec<Write>) {
    let reference = records::payroll_ref(employer, batch_id);
    let created_ms = now_ms();
    let batch = PayrollBatch {
        reference: reference.clone(),
        employer: employer.to_string(),
        batch_id: batch_id.to_string(),
        digest: digest(checked),
        total: checked.total,
        lines: u32::try_from(checked.lines.len()).unwrap_or(u32::MAX),
        state: PayrollState::Paying,
        funded: false,
        paid: 0,
        failed: 0,
        paid_total: Amount::ZERO,
        failure: None,
        created_ms,
        finished_at: None,
    };
    let mut writes = Vec::with_capacity(checked.lines.len() + 3);
    writes.push(store::json(records::payroll_key(&reference), &batch));
    writes.push(store::json(
        records::employer_payroll_key(employer, created_ms, &reference),
        &(),
    ));
    writes.push(store::json(
        records::payroll_open_key(created_ms, &reference),
        &(),
    ));
    for l in &checked.lines {
        writes.push(store::json(
            records::payroll_line_key(&reference, l.line),
            &PayrollLine {
                line: l.line,
                employee: l.employee.clone(),
                amount: l.amount,
                account: l.account,
                state: LineState::Pending,
                to_wallet: None,
                to_bank: None,
                reason: None,
            },
        ));
    }
    (batch, writes)
}

/// How long the worker waits before it looks at the unfinished batches again when nothing
/// wakes it: the retry of a batch a fault stopped.
const RETRY: Duration = Duration::from_secs(1);

/// Lines read per page while paying a batch.
const PAGE: usize = 500;

/// The payroll worker: pays every unfinished batch, oldest first, when woken (a batch was
/// stored) and every [`RETRY`]; at start-up it resumes whatever a stop or a crash left.
pub async fn run(node: web::Data<Node>) {
    while !node.is_stopping() {
        if let Err(e) = pass(&node).await {
            tracing::error!(error = %e, "the payroll worker failed; it tries again shortly");
        }
        if node.is_stopping() {
            break;
        }
        tokio::select! {
            _ = node.payroll_wake.notified() => {}
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// One pass over the unfinished batches. A fault in one batch is logged and the pass goes on
/// with the next (each is retried at the next pass).
pub async fn pass(node: &Node) -> Result<(), AppError> {
    let (open, _) = node.store.keys_while("po/", 1000, |_| true)?;
    for key in open {
        if node.is_stopping() {
            return Ok(());
        }
        let Some(reference) = records::parse_payroll_open_key(&key) else {
            continue;
        };
        let Some(batch) = node
            .store
            .get::<PayrollBatch>(&records::payroll_key(reference))?
        else {
            node.store.commit(vec![store::remove(key.clone())]).await?;
            continue;
        };
        if let Err(e) = pay_batch(node, batch, &key).await {
            tracing::warn!(batch = %reference, error = %e, "a payroll batch stopped on a fault; taken up again shortly");
        }
    }
    Ok(())
}

fn reason_of(r: &Refusal) -> FailureReason {
    FailureReason {
        code: r.code_str().replace(':', "_"),
        message: r.message.clone(),
    }
}

/// Funds the batch if it is not yet, then pays its pending lines in order, then finishes it.
async fn pay_batch(node: &Node, mut batch: PayrollBatch, open_key: &str) -> Result<(), AppError> {
    if batch.state != PayrollState::Paying {
        node.store.commit(vec![store::remove(open_key)]).await?;
        return Ok(());
    }
    if !batch.funded {
        let fund = FundCmd {
            id: funding_id(&batch.reference),
            merchant: batch.employer.clone(),
            amount: batch.total,
        };
        match node.engine.fund_merchant(fund, node.now()).await? {
            Ok(_) => {
                batch.funded = true;
                node.store
                    .commit(vec![store::json(
                        records::payroll_key(&batch.reference),
                        &batch,
                    )])
                    .await?;
                tracing::info!(batch = %batch.reference, employer = %batch.employer, total = %batch.total, "payroll funded");
            }
            Err(r) => {
                tracing::info!(batch = %batch.reference, employer = %batch.employer, reason = %r.message, "payroll not funded: failed");
                batch.state = PayrollState::Failed;
                batch.failure = Some(reason_of(&r));
                batch.finished_at = Some(node.now());
                let mut writes = vec![
                    store::json(records::payroll_key(&batch.reference), &batch),
                    store::remove(open_key),
                ];
                writes.extend(notify::writes(node, &employer_notification(node, &batch))?);
                node.store.commit(writes).await?;
                node.work_wake.notify();
                return Ok(());
            }
        }
    }
    let prefix = records::payroll_lines_prefix(&batch.reference);
    let mut after: Option<String> = None;
    loop {
        let page = node
            .store
            .scan::<PayrollLine>(&prefix, after.as_deref(), PAGE)?;
        let full = page.len() == PAGE;
        for (key, line) in page {
            after = Some(key);
            if line.state != LineState::Pending {
                continue;
            }
            if node.is_stopping() {
                return Ok(());
            }
            pay_line(node, &mut batch, line).await?;
        }
        if !full {
            break;
        }
    }
    if batch.paid + batch.failed >= batch.lines {
        batch.state = if batch.failed == 0 {
            PayrollState::Done
        } else {
            PayrollState::DoneWithFailures
        };
        batch.finished_at = Some(node.now());
        let mut writes = vec![
            store::json(records::payroll_key(&batch.reference), &batch),
            store::remove(open_key),
        ];
        writes.extend(notify::writes(node, &employer_notification(node, &batch))?);
        node.store.commit(writes).await?;
        node.work_wake.notify();
        tracing::info!(batch = %batch.reference, employer = %batch.employer, paid = batch.paid, failed = batch.failed, "payroll finished");
    }
    Ok(())
}

/// Pays one line and records its outcome, the batch's counts and the employee's notification
/// in one commit. A fault returns `Err` with nothing recorded (the line stays pending).
async fn pay_line(
    node: &Node,
    batch: &mut PayrollBatch,
    mut line: PayrollLine,
) -> Result<(), AppError> {
    let id = credit_id(&batch.reference, line.line);
    let cmd = CreditCmd {
        id: id.clone(),
        consumer: line.employee.clone(),
        source: CreditSource::Employer {
            employer: batch.employer.clone(),
        },
        target: match line.account {
            PayAccount::Wallet => CreditTarget::WalletOverflowToBank,
            PayAccount::Bank => CreditTarget::Bank,
        },
        amount: line.amount,
    };
    match node.engine.credit(cmd, node.now()).await {
        Ok(Ok(_)) => {
            let (to_wallet, to_bank) = match node.engine.credit_record(&id)? {
                Some(CreditRecord::Consumer {
                    to_wallet, to_bank, ..
                }) => (to_wallet, to_bank),
                // Not possible after `credited`; the line is paid whatever the split.
                _ => match line.account {
                    PayAccount::Wallet => (line.amount, Amount::ZERO),
                    PayAccount::Bank => (Amount::ZERO, line.amount),
                },
            };
            line.state = LineState::Paid;
            line.to_wallet = Some(to_wallet);
            line.to_bank = Some(to_bank);
            batch.paid += 1;
            batch.paid_total = batch
                .paid_total
                .checked_add(line.amount)
                .map_err(|e| AppError::Internal(e.to_string()))?;
        }
        Ok(Err(r)) => {
            line.state = LineState::Failed;
            line.reason = Some(reason_of(&r));
            batch.failed += 1;
        }
        Err(e) => return Err(e.into()),
    }
    let mut writes = vec![
        store::json(
            records::payroll_line_key(&batch.reference, line.line),
            &line,
        ),
        store::json(records::payroll_key(&batch.reference), &*batch),
    ];
    writes.extend(notify::writes(
        node,
        &employee_notification(node, batch, &line),
    )?);
    node.store.commit(writes).await?;
    node.work_wake.notify();
    Ok(())
}

/// The employee's notification of their line: `salary.paid` (with where the money went) or
/// `salary.failed` (with why). Its id is the line's, so a line paid again after a crash
/// notifies once.
pub fn employee_notification(
    node: &Node,
    batch: &PayrollBatch,
    line: &PayrollLine,
) -> Notification {
    let paid = line.state == LineState::Paid;
    let employer_name = node.merchants.get(&batch.employer).map(|m| m.name.clone());
    let mut payload = serde_json::json!({
        "reference": batch.reference,
        "batch_id": batch.batch_id,
        "employer": batch.employer,
        "employer_name": employer_name,
        "line": line.line,
        "amount": line.amount.to_string(),
        "currency": node.currency,
        "account": line.account.as_str(),
    });
    if let Some(p) = payload.as_object_mut() {
        if let Some(w) = line.to_wallet {
            p.insert("to_wallet".into(), w.to_string().into());
        }
        if let Some(b) = line.to_bank {
            p.insert("to_bank".into(), b.to_string().into());
        }
        if let Some(r) = &line.reason {
            p.insert(
                "reason".into(),
                serde_json::json!({"code": r.code, "message": r.message}),
            );
        }
    }
    Notification {
        id: format!("ntf_{}_{}", batch.reference, line.line),
        recipient: Recipient::consumer(&line.employee),
        event_type: if paid { "salary.paid" } else { "salary.failed" }.to_string(),
        payload,
        created_at: node.now(),
    }
}

/// The employer's notification of a finished batch: `payroll.done` (its counts; failed lines
/// are in the report) or `payroll.failed` (not funded, with why).
pub fn employer_notification(node: &Node, batch: &PayrollBatch) -> Notification {
    let failed = batch.state == PayrollState::Failed;
    let summary = summary(node, batch);
    Notification {
        id: format!(
            "ntf_{}_{}",
            batch.reference,
            if failed { "failed" } else { "done" }
        ),
        recipient: Recipient::merchant(&batch.employer),
        event_type: if failed {
            "payroll.failed"
        } else {
            "payroll.done"
        }
        .to_string(),
        payload: serde_json::to_value(&summary).unwrap_or(serde_json::Value::Null),
        created_at: node.now(),
    }
}

/// How many lines are in each state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counts {
    pub lines: u32,
    pub pending: u32,
    pub paid: u32,
    pub failed: u32,
}

/// A batch as its employer sees it, without its lines (the answer to an upload, the list,
/// the notifications).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PayrollSummary {
    pub reference: String,
    pub batch_id: String,
    pub employer: String,
    /// `paying`, `done`, `done_with_failures`, `failed` (not funded: nothing paid).
    pub state: String,
    pub total: String,
    pub currency: String,
    /// Whether the employer's balance was funded with the total from its bank account.
    pub funded: bool,
    /// What was paid to employees so far.
    pub paid_total: String,
    pub counts: Counts,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureReason>,
    /// Unix seconds.
    pub created_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<u64>,
    /// The report's path.
    pub url: String,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LineView {
    pub line: u32,
    pub employee: String,
    pub amount: String,
    pub account: String,
    /// `pending`, `paid`, `failed`.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_wallet: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_bank: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<FailureReason>,
}

/// The batch's report: its summary and a page of its lines, in line order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PayrollReport {
    #[serde(flatten)]
    pub summary: PayrollSummary,
    pub lines: Vec<LineView>,
    /// Pass as `after` for the next page of lines; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<u32>,
}

/// The path of a batch's report.
pub fn url_of(batch_id: &str) -> String {
    format!("/v1/employer/payrolls/{batch_id}")
}

pub fn summary(node: &Node, b: &PayrollBatch) -> PayrollSummary {
    // A batch that was never funded paid no line: every line counts as failed with it.
    let (paid, failed) = if b.state == PayrollState::Failed {
        (0, b.lines)
    } else {
        (b.paid, b.failed)
    };
    PayrollSummary {
        reference: b.reference.clone(),
        batch_id: b.batch_id.clone(),
        employer: b.employer.clone(),
        state: b.state.as_str().to_string(),
        total: b.total.to_string(),
        currency: node.currency.clone(),
        funded: b.funded,
        paid_total: b.paid_total.to_string(),
        counts: Counts {
            lines: b.lines,
            pending: b.lines.saturating_sub(paid + failed),
            paid,
            failed,
        },
        failure: b.failure.clone(),
        created_at: b.created_ms / 1000,
        finished_at: b.finished_at,
        url: url_of(&b.batch_id),
    }
}

/// The report with up to `limit` lines after line `after` (line numbers).
pub fn report(
    node: &Node,
    b: &PayrollBatch,
    after: Option<u32>,
    limit: usize,
) -> Result<PayrollReport, AppError> {
    let prefix = records::payroll_lines_prefix(&b.reference);
    let after_key = after.map(|a| records::payroll_line_key(&b.reference, a));
    let rows =
        node.store
            .scan::<PayrollLine>(&prefix, after_key.as_deref(), limit.saturating_add(1))?;
    let more = rows.len() > limit;
    let unfunded = (b.state == PayrollState::Failed).then(|| FailureReason {
        code: "batch_not_funded".into(),
        message: b
            .failure
            .as_ref()
            .map_or_else(String::new, |f| f.message.clone()),
    });
    let lines: Vec<LineView> = rows
        .into_iter()
        .take(limit)
        .map(|(_, l)| {
            let (state, reason) = match (l.state, &unfunded) {
                (LineState::Pending, Some(why)) => (LineState::Failed, Some(why.clone())),
                _ => (l.state, l.reason.clone()),
            };
            LineView {
                line: l.line,
                employee: l.employee,
                amount: l.amount.to_string(),
                account: l.account.as_str().to_string(),
                state: state.as_str().to_string(),
                to_wallet: l.to_wallet.map(|a| a.to_string()),
                to_bank: l.to_bank.map(|a| a.to_string()),
                reason,
            }
        })
        .collect();
    let next_after = if more {
        lines.last().map(|l| l.line)
    } else {
        None
    };
    Ok(PayrollReport {
        summary: summary(node, b),
        lines,
        next_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_ids_are_short_and_distinct_per_line() {
        let r = records::payroll_ref(&"e".repeat(128), &"b".repeat(64));
        assert!(funding_id(&r).len() <= 128);
        assert!(credit_id(&r, 10_000).len() <= 128);
        assert_ne!(credit_id(&r, 1), credit_id(&r, 11));
        assert_ne!(funding_id(&r), credit_id(&r, 1));
    }

    #[test]
    fn the_digest_is_the_lines_content_whatever_the_format() {
        let csv = file::check(
            file::read_csv(b"employee,amount,account\na,1.5,wallet\nb,2.00,bank\n"),
            |_| Ok::<_, ()>(true),
        )
        .unwrap()
        .unwrap();
        let lines = vec![
            serde_json::json!({"employee": "a", "amount": "1.50", "account": "wallet"}),
            serde_json::json!({"employee": "b", "amount": "2", "account": "bank"}),
        ];
        let json = file::check(file::read_json(&lines), |_| Ok::<_, ()>(true))
            .unwrap()
            .unwrap();
        assert_eq!(digest(&csv), digest(&json));
        let other = file::check(file::read_json(&lines[..1]), |_| Ok::<_, ()>(true))
            .unwrap()
            .unwrap();
        assert_ne!(digest(&csv), digest(&other));
    }
}
