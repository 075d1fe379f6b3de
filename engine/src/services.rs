//! The money commands of the settlement center's services (SPEC F8, F10, F12), as `impl
//! Engine` blocks: credits to consumers (recharge cards, salaries, bank transfers), fundings of
//! an employer's balance from its bank account, and credit limits set anew. The rules are the
//! ledger's (`ConsumerState::credit_split`, `credited_event`, `merchant_funded_event`); a
//! consumer's credit runs in its actor like any other command, so it cannot interleave with a
//! settlement of the same wallet.

use crate::actors::ConsumerCmd;
use crate::bank::{BankAnswer, BankError, BankOp};
use crate::commands::{check_id, BankTransferCmd, CreditCmd, FundCmd};
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
        let key = CreditKey::Credit {
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
                    if *consumer == cmd.consumer && *source == cmd.source && *target == cmd.target && *amount == cmd.amount);
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
                CreditSource::LinkedBank { bank } => {
                    if let Err(r) = check_id("bank account", bank) {
                        return Ok(Err(r));
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

    /// What a credit or funding id was first used for, if it was: the content, and for a
    /// consumer's credit how it was split between wallet and bank account (the actor decides
    /// the split under the cap, so only the engine knows it). Read from the view, activating no
    /// actor; the node shows it in a payroll's report and its employees' notifications.
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
        // The id is claimed like a consumer's credit's, in the same directory: a credit or a
        // transfer sent at the same time under the same new id waits for this funding (and is
        // then refused for the id), and this funding waits for them.
        let key = CreditKey::Funding {
            merchant: cmd.merchant.clone(),
            amount: cmd.amount,
        };
        let _claim = claim_credit_id(&self.shared.directory, &cmd.id, &key).await;
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

    /// Links another bank account to a consumer (SPEC F5). With a data key the node keeps
    /// only its reference and the account sealed (I10). Refused: an account that is already
    /// someone's, designated or linked (`conflict`), a bad name (`invalid`), an unknown
    /// consumer (`unknown`). Linking an account the consumer has already changes nothing.
    /// Answers the account's stored name, by which the consumer names it from then on.
    pub async fn link_bank(
        &self,
        consumer: &str,
        account: &str,
        now: Secs,
    ) -> Result<Result<String, Refusal>, EngineError> {
        let _admission = self.admit()?;
        let now = self.advance_clock(now);
        if let Err(r) = check_id("bank account", account) {
            return Ok(Err(r));
        }
        let bank_ref = self.shared.bank_ref(account);
        let Some(_claim) = self.claim(&[format!("bank:{bank_ref}")]) else {
            return Ok(Err(Refusal::conflict(
                "this bank account is being linked or opened right now",
            )));
        };
        match self.shared.view.bank_owner(&bank_ref)? {
            Some(owner) if owner == consumer => return Ok(Ok(bank_ref)),
            Some(_) => {
                return Ok(Err(Refusal::conflict(
                    "this bank account belongs to another consumer",
                )))
            }
            None => {}
        }
        let sealed = self
            .shared
            .data_key
            .as_ref()
            .map(|key| crate::seal::seal(key, &bank_ref, account, &mut rand::thread_rng()));
        let cmd = ConsumerCmd::LinkBank {
            bank: bank_ref.clone(),
            sealed,
        };
        let r = self.ask_consumer(consumer, cmd, now).await?;
        if r.is_ok() && self.shared.data_key.is_some() {
            self.shared
                .bank_accounts
                .insert(bank_ref.clone(), account.to_string());
        }
        Ok(r.map(|_| bank_ref))
    }

    /// Makes one of a consumer's linked accounts (by its stored name) the designated one:
    /// top-ups come from it and overflows go to it from then on.
    pub async fn designate_bank(
        &self,
        consumer: &str,
        bank: &str,
        now: Secs,
    ) -> Result<CommandResult, EngineError> {
        let _admission = self.admit()?;
        let now = self.advance_clock(now);
        let cmd = ConsumerCmd::DesignateBank {
            bank: bank.to_string(),
        };
        self.ask_consumer(consumer, cmd, now).await
    }

    /// Moves `amount` from one of a consumer's bank accounts to another (stored names), under
    /// the id `id` (idempotent; one name space with credits and fundings). The bank refusing
    /// either side is `funds`, and nothing moves.
    pub async fn transfer_between_banks(
        &self,
        cmd: BankTransferCmd,
        now: Secs,
    ) -> Result<CommandResult, EngineError> {
        let _admission = self.admit()?;
        let now = self.advance_clock(now);
        // An id used with other content is a conflict before anything else is looked at
        // (FORMAT.md's precedence), as for credits and fundings: a malformed repeat of a
        // used id is refused for the id, not for its amount. (The actor checks again, under
        // the claim, for a transfer that finished in between.)
        if let Some(first) = self.shared.view.credit(&cmd.id)? {
            let same = matches!(&first, CreditRecord::Transfer { consumer, from, to, amount }
                if *consumer == cmd.consumer && *from == cmd.from && *to == cmd.to && *amount == cmd.amount);
            if !same {
                return Ok(Err(Refusal::conflict(format!(
                    "transfer id {:?} is already used with other content",
                    cmd.id
                ))));
            }
        }
        if !cmd.amount.is_positive() {
            return Ok(Err(Refusal::amount(format!(
                "a transfer must be greater than zero, not {}",
                cmd.amount
            ))));
        }
        if let Err(r) = check_id("transfer id", &cmd.id) {
            return Ok(Err(r));
        }
        let key = CreditKey::Transfer {
            consumer: cmd.consumer.clone(),
            from: cmd.from.clone(),
            to: cmd.to.clone(),
            amount: cmd.amount,
        };
        let _claim = claim_credit_id(&self.shared.directory, &cmd.id, &key).await;
        let msg = ConsumerCmd::TransferBetweenBanks {
            id: cmd.id,
            from: cmd.from,
            to: cmd.to,
            amount: cmd.amount,
        };
        self.ask_consumer(&cmd.consumer, msg, now).await
    }

    /// A consumer's bank accounts (stored names): the designated one first, then the linked
    /// ones; `None` if there is no such consumer.
    pub fn bank_accounts(&self, consumer: &str) -> Result<Option<Vec<String>>, EngineError> {
        Ok(self.shared.view.consumer_record(consumer)?.map(|c| {
            std::iter::once(c.bank)
                .chain(c.linked.into_keys())
                .collect()
        }))
    }

    /// The real account behind a stored name (unsealed with the data key), for showing it
    /// masked.
    pub fn real_bank_account(&self, bank: &str) -> Result<String, EngineError> {
        self.shared.real_bank_account(bank)
    }
}

/// Claims `id` in the credits' directory for `key`, waiting first while another command holds
/// it in flight with other content (which then leaves it recorded, or free if refused).
async fn claim_credit_id<'a>(
    directory: &'a crate::directory::Directory,
    id: &str,
    key: &CreditKey,
) -> crate::directory::IdClaim<'a, CreditKey> {
    loop {
        directory
            .releases
            .wait_while(|| directory.crediting.get(id).is_some_and(|k| *k != *key))
            .await;
        if let Ok(claim) = claim_id(&directory.crediting, &directory.releases, id, key) {
            return claim;
        }
    }
}
