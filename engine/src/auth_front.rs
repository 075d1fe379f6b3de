//! The authentication front end: the engine's card and reader operations (F1–F3, F13–F15,
//! I9, I10) in front of the authentication center (`cards::AuthCenter`).
//!
//! The center is pure and held under a mutex; this is where it meets the engine: admission
//! and the engine's clock, the blocking thread for Argon2id, the journaling of its durable
//! changes in the order they were made (before the call answers), the consumer's available
//! credit for the F18 check, the authorisation recorded before the reader hears of it, and the
//! security log with cards masked. Separate from the money commands in `engine.rs` because it
//! shares none of their routing: it never talks to a consumer actor. These are `impl Engine`
//! blocks; `engine` does not import this module.

use std::sync::Arc;

use crate::cards::{
    AuthCenter, AuthChange, AuthOutcome, CardError, CardKey, ChallengeIssued, EncryptedPin,
    NewReader, SwipeRefusal,
};
use crate::commands::IssueCard;
use crate::engine::Engine;
use crate::error::EngineError;
use crate::journal::JournalHandle;
use crate::ledger::{Entry, Event, EventKind};
use crate::model::Secs;
use crate::money::Amount;
use crate::view;

/// Records an authorisation durably with its order id (the address decision included), before
/// the caller hears of it.
async fn record_authorisation(
    journal: &JournalHandle,
    now: Secs,
    outcome: &AuthOutcome,
) -> Result<(), EngineError> {
    if let AuthOutcome::Authorised(a) = outcome {
        let entry = Entry::new(
            now,
            vec![Event::new(EventKind::PaymentAuthorised(a.clone()))],
        );
        journal
            .append(&entry, vec![view::authorisation_write(a)])
            .await?;
    }
    Ok(())
}

/// Security log of an authentication's outcome (the card appears only masked: I10).
fn log_auth_outcome(account: Option<&str>, outcome: &AuthOutcome) {
    let account = account.unwrap_or("?");
    match outcome {
        AuthOutcome::Authorised(a) => tracing::info!(
            account,
            card = %format!("************{}", a.card_last4),
            order = a.order_id,
            temporary_address_change = a.temporary_address_change,
            "payment authorised"
        ),
        AuthOutcome::ConfirmAddressChange => {
            tracing::info!(account, "delivery address differs: asking the consumer")
        }
        AuthOutcome::CreditRefused { .. } | AuthOutcome::AddressChangeDeclined => {
            tracing::info!(account, outcome = ?outcome, "payment not authorised")
        }
        other => tracing::warn!(account, outcome = ?other, "authentication refused"),
    }
}

impl Engine {
    fn auth_center(&self) -> Result<Arc<std::sync::Mutex<AuthCenter>>, EngineError> {
        self.auth.clone().ok_or_else(|| {
            EngineError::Config(
                "no card issuer key is configured (ONECARD_ISSUER_KEY): cards are disabled".into(),
            )
        })
    }

    /// Runs `op` on the authentication center on a blocking thread (PIN hashing and checks
    /// take Argon2id's time), queues its durable changes to the journal while still holding
    /// the center (so that changes reach the journal in the order they were made), then waits
    /// until they are on disk before returning the result.
    async fn with_auth<T: Send + 'static>(
        &self,
        now: Secs,
        op: impl FnOnce(&mut AuthCenter) -> T + Send + 'static,
    ) -> Result<T, EngineError> {
        let center = self.auth_center()?;
        let journal = self.shared.journal.clone();
        let (result, durable) = tokio::task::spawn_blocking(move || {
            let mut c = center
                .lock()
                .map_err(|_| EngineError::Internal("the authentication center panicked".into()))?;
            let result = op(&mut c);
            let changes: Vec<AuthChange> = c.take_changes();
            let durable = (!changes.is_empty()).then(|| {
                let writes = view::auth_writes(&changes);
                let events = changes
                    .into_iter()
                    .map(|ch| Event::new(EventKind::Auth(ch)))
                    .collect();
                journal.append(&Entry::new(now, events), writes)
            });
            Ok::<_, EngineError>((result, durable))
        })
        .await
        .map_err(|e| EngineError::Internal(format!("authentication task: {e}")))??;
        if let Some(d) = durable {
            d.await?;
        }
        Ok(result)
    }

    /// Issues a card to an existing consumer (F1). Returns the card's key, derived from the
    /// issuer master key, for personalising the card; the node keeps only the PIN's hash.
    pub async fn issue_card(
        &self,
        req: IssueCard,
        now: Secs,
    ) -> Result<Result<CardKey, CardError>, EngineError> {
        let _admission = self.admit()?;
        let now = self.advance_clock(now);
        if !self.has_consumer(&req.holder)? {
            return Ok(Err(CardError::InvalidField { field: "holder" }));
        }
        self.with_auth(now, move |c| {
            c.issue_card(
                &req.number,
                &req.holder,
                &req.pin,
                &req.registered_address,
                &mut rand::rngs::OsRng,
            )
        })
        .await
    }

    /// Registers a reader and binds it 1:1 to its card and account (F2). The node stores the
    /// reader with the card's token, not its number.
    pub async fn register_reader(
        &self,
        reader: NewReader,
        now: Secs,
    ) -> Result<Result<(), CardError>, EngineError> {
        let _admission = self.admit()?;
        let now = self.advance_clock(now);
        self.with_auth(now, move |c| c.register_reader(reader))
            .await
    }

    /// Administrator: unlocks a card locked by wrong PINs.
    pub async fn unlock_card(
        &self,
        number: &str,
        now: Secs,
    ) -> Result<Result<(), CardError>, EngineError> {
        let _admission = self.admit()?;
        let now = self.advance_clock(now);
        let number = number.to_string();
        self.with_auth(now, move |c| c.unlock_card(&number)).await
    }

    /// The holder reports the card lost: it never authenticates again.
    pub async fn report_lost(
        &self,
        number: &str,
        now: Secs,
    ) -> Result<Result<(), CardError>, EngineError> {
        let _admission = self.admit()?;
        let now = self.advance_clock(now);
        let number = number.to_string();
        self.with_auth(now, move |c| c.report_lost(&number)).await
    }

    /// Step 2 (F2, I9): a reader, from `peer`, presents a card for an order. A challenge if
    /// reader, card and address are bound to each other; a refusal (rate-limited) otherwise.
    pub async fn swipe(
        &self,
        reader_id: &str,
        card_number: &str,
        peer: std::net::IpAddr,
        order_id: &str,
        amount: Amount,
        now: Secs,
    ) -> Result<Result<ChallengeIssued, SwipeRefusal>, EngineError> {
        let _admission = self.admit()?;
        let now = self.advance_clock(now);
        let Ok(amount_cents) = u64::try_from(amount.cents()) else {
            return Ok(Err(SwipeRefusal::InvalidOrder));
        };
        let masked = crate::cards::mask_card_number(card_number);
        let (reader, card_number, order_id) = (
            reader_id.to_string(),
            card_number.to_string(),
            order_id.to_string(),
        );
        let result = self
            .with_auth(now, move |c| {
                c.swipe(
                    &reader,
                    &card_number,
                    peer,
                    &order_id,
                    amount_cents,
                    now,
                    &mut rand::rngs::OsRng,
                )
            })
            .await?;
        // Security log: every refused swipe, with the card masked (I10). Refusals of a reader
        // already rate-limited are logged at debug only, so that a flood cannot flood the log.
        match &result {
            Err(SwipeRefusal::RateLimited { retry_at }) => {
                tracing::debug!(reader = reader_id, card = %masked, %peer, retry_at, "swipe refused: rate-limited")
            }
            Err(refusal) => {
                tracing::warn!(reader = reader_id, card = %masked, %peer, reason = %refusal, "swipe refused")
            }
            Ok(_) => {
                tracing::info!(reader = reader_id, card = %masked, "swipe accepted: challenge issued")
            }
        }
        Ok(result)
    }

    /// The account an outstanding challenge is for, and its available credit now in cents.
    fn challenge_credit(&self, challenge_id: &str) -> Result<(Option<String>, u64), EngineError> {
        let account = self
            .auth_center()?
            .lock()
            .map_err(|_| EngineError::Internal("the authentication center panicked".into()))?
            .challenge_account(challenge_id);
        let credit = self.available_credit_cents(account.as_deref())?;
        Ok((account, credit))
    }

    /// The available credit of a consumer now, in cents (0 if unknown).
    fn available_credit_cents(&self, consumer: Option<&str>) -> Result<u64, EngineError> {
        let Some(consumer) = consumer else {
            return Ok(0);
        };
        Ok(match self.shared.view.consumer_record(consumer)? {
            None => 0,
            Some(c) => {
                let available = c.credit_limit.cents().saturating_sub(c.reserved.cents());
                u64::try_from(available.max(0)).unwrap_or(u64::MAX)
            }
        })
    }

    /// Step 3: the card's cryptogram, the encrypted PIN, the delivery address; checked in the
    /// order SPEC F18 gives (card, PIN, address, credit against the account's available credit
    /// now). Counter, PIN failures and a lock are durable before the answer.
    #[allow(clippy::too_many_arguments)]
    pub async fn authenticate(
        &self,
        challenge_id: &str,
        counter: u32,
        cryptogram: &[u8],
        pin: &EncryptedPin,
        delivery_address: &str,
        confirm_address_change: Option<bool>,
        now: Secs,
    ) -> Result<AuthOutcome, EngineError> {
        let _admission = self.admit()?;
        let now = self.advance_clock(now);
        let (account, credit) = self.challenge_credit(challenge_id)?;
        let (challenge_id, cryptogram, pin, delivery_address) = (
            challenge_id.to_string(),
            cryptogram.to_vec(),
            pin.clone(),
            delivery_address.to_string(),
        );
        let outcome = self
            .with_auth(now, move |c| {
                c.authenticate(
                    &challenge_id,
                    counter,
                    &cryptogram,
                    &pin,
                    &delivery_address,
                    confirm_address_change,
                    credit,
                    now,
                )
            })
            .await?;
        record_authorisation(&self.shared.journal, now, &outcome).await?;
        log_auth_outcome(account.as_deref(), &outcome);
        Ok(outcome)
    }

    /// The authorisation given at a reader for the payment of `order`, if any: card (last
    /// four), reader, account, and whether a one-time delivery address was confirmed.
    pub fn authorisation(
        &self,
        order: &str,
    ) -> Result<Option<crate::cards::Authorisation>, EngineError> {
        Ok(self.shared.view.authorisation(order)?)
    }

    /// The consumer's answer to `ConfirmAddressChange`.
    pub async fn confirm_address_change(
        &self,
        challenge_id: &str,
        accept: bool,
        now: Secs,
    ) -> Result<AuthOutcome, EngineError> {
        let _admission = self.admit()?;
        let now = self.advance_clock(now);
        let (account, credit) = self.challenge_credit(challenge_id)?;
        let challenge_id = challenge_id.to_string();
        let outcome = self
            .with_auth(now, move |c| {
                c.confirm_address_change(&challenge_id, accept, credit, now)
            })
            .await?;
        record_authorisation(&self.shared.journal, now, &outcome).await?;
        log_auth_outcome(account.as_deref(), &outcome);
        Ok(outcome)
    }

    /// A card as the node holds it now (token, last four, status, counter, failures), if
    /// issued; looked up by its number's token.
    pub fn card(&self, number: &str) -> Result<Option<crate::cards::Card>, EngineError> {
        Ok(self
            .auth_center()?
            .lock()
            .map_err(|_| EngineError::Internal("the authentication center panicked".into()))?
            .card(number)
            .cloned())
    }

    /// The order an outstanding challenge is for (`None`: unknown, used or expired).
    pub fn challenge_order(&self, challenge_id: &str) -> Result<Option<String>, EngineError> {
        Ok(self
            .auth_center()?
            .lock()
            .map_err(|_| EngineError::Internal("the authentication center panicked".into()))?
            .challenge_order(challenge_id))
    }
}
