//! The money commands of the settlement center's services (SPEC F8, F10, F12), as `impl
//! Engine` blocks: credits to consumers (recharge cards, salaries, bank transfers), fundings of
//! an employer's balance from its bank account, and credit limits set anew. The rules are the
//! ledger's (`ConsumerState::credit_split`, `credited_event`, `merchant_funded_event`); a
//! consumer's credit runs in its actor like any other command, so it cannot interleave with a
//! settlement of the same wallet.

use crate::actors::ConsumerCmd;
use crate::bank::{BankAnswer, BankError, BankOp};
use crate::commands::{check_id, CreditCmd, FundCmd};
use crate::directory::{claim_id, CreditKey};
use crate::engine::Engine;
use crate::error::EngineError;
use crate::ledger::{merchant_funded_event, CreditRecord, CreditSource, Entry, GatewayRules};
use crate::model::{CommandResult, Outcome, Refusal, Secs};
use crate::money::Amount;
use crate::view;

/// The longest reason a credit-limit change keeps.
const MAX_REASON_CHARS: usize = 200;

impl Engine {
    /// Credits a consumer (SPEC F8, F12). Refused, in this order: an id used with other content
    /// (`conflict`), an amount that is not positive (`amount`), a bad id or source
    /// (`invalid`), an unknown consumer or employer (`unknown`); then the consumer's actor
    /// refuses what the cap has no room for (`amount`), an employer's balance that does not
    /// cover it or a bank that refuses (`funds`). A repeat with the same content answers
    /// `credited` again and moves nothing; a refused credit leaves its id free.
    pub async fn credit(&self, cmd: CreditCmd, now: Secs) -> Result<CommandResult, EngineError> {
        let _admission = self.admit()?;
        let now = self.advance_clock(now);
        let key = CreditKey {
            consumer: cmd.consumer.clone(),
            source: cmd.source.clone(),
            target: cmd.target,
            amount: cmd.amount,
        };
        let directory = &self.shared.directory;
        let _claim = loop {
            // Another credit of this id with other content in flight: wait for it to finish
            // (a refused credit leaves the id free).
            directory
                .releases
                .wait_while(|| directory.crediting.get(&cmd.id).is_some_and(|k| *k != key))
                .await;
            if let Some(first) = self.shared.view.credit(&cmd.id)? {
                let same = matches!(&first, CreditRecord::Consumer { consumer, source, target, amount, .. }
                    if *consumer == key.consumer && *source == key.source && *target == key.target && *amount == key.amount);
                if !same {
                    return Ok(Err(Refusal::conflict(format!(
                        "credit id {:?} is already used with other content",
                        cmd.id
                    ))));
                }
            }
            if !cmd.amount.is_positive() {
                return Ok(Err(Refusal::amount(format!(
                    "a credit must be greater than zero, not {}",
                    cmd.amount
                ))));
            }
            if let Err(r) = check_id("credit id", &cmd.id) {
                return Ok(Err(r));
            }
            match &cmd.source {
                CreditSource::RechargeCard { batch } => {
                    if let Err(r) = check_id("recharge batch", batch) {
                        return Ok(Err(r));
                    }
                }
                CreditSource::Employer { employer } => {
                    if self.shared.merchants.get(employer).is_none() {
                        return Ok(Err(Refusal::unknown(format!("no employer {employer:?}"))));
                    }
                }
                CreditSource::BankTransfer => {}
            }
            if let Ok(claim) = claim_id(&directory.crediting, &directory.releases, &cmd.id, &key) {
                break claim;
            }
        };
        let msg = ConsumerCmd::Credit {
            id: cmd.id,
            source: cmd.source,
            target: cmd.target,
            amount: cmd.amount,
        };
        self.ask_consumer(&cmd.consumer, msg, now).await
    }

    /// What a credit (or funding) id was first used for, with the split the consumer's actor
    /// made (`to_wallet`, `to_bank`); `None` while the id is unused. Read from the view, so it
    /// is there as soon as [`Engine::credit`] has answered `credited` (the answer comes after
    /// the journal's sync, and the view is updated at that sync).
    pub fn credit_record(&self, id: &str) -> Result<Option<CreditRecord>, EngineError> {
        Ok(self.shared.view.credit(id)?)
    }

    /// Funds a merchant's (an employer's) balance from its bank account (SPEC F12): the bank
    /// debits the account, then `MerchantFunded` is journaled. A repeat of the id with the
    /// same merchant and amount answers `credited` and moves nothing; with other content it is
    /// a `conflict`. The bank refusing is `funds`, and leaves the id free. Fundings run one at
    /// a time: they are rare (a payroll batch each), and so a repeat can never race the first.
    pub async fn fund_merchant(
        &self,
        cmd: FundCmd,
        now: Secs,
    ) -> Result<CommandResult, EngineError> {
        let _admission = self.admit()?;
        let now = self.advance_clock(now);
        let _one_at_a_time = self.fundings.lock().await;
        if let Some(first) = self.shared.view.credit(&cmd.id)? {
            let same = matches!(&first, CreditRecord::Merchant { merchant, amount }
                if *merchant == cmd.merchant && *amount == cmd.amount);
            return Ok(if same {
                Ok(Outcome::Credited)
            } else {
                Err(Refusal::conflict(format!(
                    "funding id {:?} is already used with other content",
                    cmd.id
                )))
            });
        }
        if !cmd.amount.is_positive() {
            return Ok(Err(Refusal::amount(format!(
                "a funding must be greater than zero, not {}",
                cmd.amount
            ))));
        }
        if let Err(r) = check_id("funding id", &cmd.id) {
            return Ok(Err(r));
        }
        let Some(state) = self.shared.merchants.get(&cmd.merchant) else {
            return Ok(Err(Refusal::unknown(format!(
                "no merchant {:?}",
                cmd.merchant
            ))));
        };
        let Some(bank_ref) = state.bank.clone() else {
            return Ok(Err(Refusal::invalid(format!(
                "merchant {} has no bank account to be funded from",
                cmd.merchant
            ))));
        };
        let account = self.merchant_bank_account(&cmd.merchant, &bank_ref, &state.bank_sealed)?;
        let op = self.shared.new_bank_op_id();
        let answer = self
            .shared
            .bank
            .debit(BankOp {
                id: op.clone(),
                account,
                amount: cmd.amount,
            })
            .await;
        match answer {
            Ok(BankAnswer::Done) => {
                let ev = merchant_funded_event(&cmd.id, &cmd.merchant, &bank_ref, cmd.amount, &op);
                let writes = view::credit_write(&ev.kind).into_iter().collect();
                self.shared
                    .journal
                    .append(&Entry::new(now, vec![ev]), writes)
                    .await?;
                self.shared.bank.confirm(std::slice::from_ref(&op));
                Ok(Ok(Outcome::Credited))
            }
            Ok(BankAnswer::Refused(reason)) => Ok(Err(Refusal::funds(format!(
                "the bank refused to fund {} with {}: {reason}",
                cmd.merchant, cmd.amount
            )))),
            Err(BankError::UnknownAccount(_)) => Ok(Err(Refusal::unknown(format!(
                "the bank does not know merchant {}'s account",
                cmd.merchant
            )))),
            Err(e) => Err(e.into()),
        }
    }

    /// Sets a consumer's credit limit (SPEC F10) and journals why. A limit below what is
    /// reserved refuses new reservations only; nothing reserved is cancelled. Setting the
    /// limit the consumer has already changes nothing.
    pub async fn set_credit_limit(
        &self,
        consumer: &str,
        limit: Amount,
        reason: &str,
        now: Secs,
    ) -> Result<CommandResult, EngineError> {
        let _admission = self.admit()?;
        let now = self.advance_clock(now);
        if limit.is_negative() {
            return Ok(Err(Refusal::amount(format!(
                "a credit limit cannot be negative: {limit}"
            ))));
        }
        if reason.trim().is_empty()
            || reason.chars().count() > MAX_REASON_CHARS
            || reason.chars().any(char::is_control)
        {
            return Ok(Err(Refusal::invalid(format!(
                "a credit limit change needs a reason of 1 to {MAX_REASON_CHARS} printable characters"
            ))));
        }
        let cmd = ConsumerCmd::SetCreditLimit {
            limit,
            reason: reason.to_string(),
        };
        self.ask_consumer(consumer, cmd, now).await
    }

    /// Sets a consumer's payment-gateway rules (SPEC F9), or removes them (`None`). Checked
    /// from the next authorisation on. Refused: rules that are not well formed (`invalid`),
    /// an unknown consumer (`unknown`).
    pub async fn set_gateway_rules(
        &self,
        consumer: &str,
        rules: Option<GatewayRules>,
        now: Secs,
    ) -> Result<CommandResult, EngineError> {
        let _admission = self.admit()?;
        let now = self.advance_clock(now);
        if let Some(Err(e)) = rules.as_ref().map(GatewayRules::validate) {
            return Ok(Err(Refusal::invalid(format!("gateway rules: {e}"))));
        }
        let cmd = ConsumerCmd::SetGatewayRules { rules };
        self.ask_consumer(consumer, cmd, now).await
    }

    /// A consumer's payment-gateway rules, and what payments at readers spent today under them;
    /// `None` if there is no such consumer.
    pub fn gateway_rules(
        &self,
        consumer: &str,
        now: Secs,
    ) -> Result<Option<(Option<GatewayRules>, Amount)>, EngineError> {
        let Some(c) = self.shared.view.consumer_record(consumer)? else {
            return Ok(None);
        };
        let spent = match &c.gateway {
            Some(rules) if c.gateway_spent.day == rules.day_of(now) => c.gateway_spent.amount,
            _ => Amount::ZERO,
        };
        Ok(Some((c.gateway, spent)))
    }
}
