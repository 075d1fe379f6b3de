//! The authentication front end: the engine's card and reader operations (F1–F3, F13–F15,
//! I9, I10) in front of the authentication center (`cards::AuthCenter`).
//!
//! The center is concurrent (sharded maps, no process-wide lock) and its checks cost
//! microseconds (MACs; an X25519 agreement only for a reader key new in the epoch), so its
//! operations run right on the caller's task. This is where it meets the engine: admission and the engine's clock, the journaling of
//! its durable changes (queued by [`JournalLog`] while the center holds the changed card, so a
//! card's changes reach the log in the order they were made, and awaited before the call
//! answers), the consumer's available credit for the F18 check, the authorisation recorded with
//! the card's change before the reader hears of it, and the security log with cards masked.
//! Separate from the money commands in `engine.rs` because it shares none of their routing: it
//! never talks to a consumer actor. These are `impl Engine` blocks; `engine` does not import
//! this module.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::cards::auth::PaymentLimits;
use crate::cards::{
    AuthCenter, AuthChange, AuthOutcome, Authorisation, CardError, CardKey, ChallengeIssued,
    ChangeLog, EncryptedPin, NewReader, SwipeRefusal,
};
use crate::commands::{IssueCard, ReaderPayment};
use crate::engine::Engine;
use crate::error::EngineError;
use crate::journal::{JournalError, JournalHandle};
use crate::ledger::{Entry, Event, EventKind};
use crate::model::Secs;
use crate::money::Amount;
use crate::view;

type Appended = Pin<Box<dyn Future<Output = Result<u64, JournalError>> + Send>>;

/// The center's [`ChangeLog`] on the journal: each record becomes one journal entry (the card
/// or reader changes, then the authorisation), queued at once; [`JournalLog::durable`] waits
/// until all are on disk.
struct JournalLog<'a> {
    journal: &'a JournalHandle,
    now: Secs,
    queued: Vec<Appended>,
}

impl<'a> JournalLog<'a> {
    fn new(journal: &'a JournalHandle, now: Secs) -> JournalLog<'a> {
        JournalLog {
            journal,
            now,
            queued: Vec::new(),
        }
    }

    async fn durable(self) -> Result<(), EngineError> {
        all_durable(self.queued).await
    }
}

/// Waits for entries queued in the log, in order; the first that could not be written is the
/// error.
async fn all_durable(queued: Vec<Appended>) -> Result<(), EngineError> {
    for appended in queued {
        appended.await?;
    }
    Ok(())
}

impl ChangeLog for JournalLog<'_> {
    fn record(&mut self, changes: Vec<AuthChange>, authorised: Option<&Authorisation>) {
        let mut writes = view::auth_writes(&changes);
        let mut events: Vec<Event> = changes
            .into_iter()
            .map(|ch| Event::new(EventKind::Auth(ch)))
            .collect();
        if let Some(a) = authorised {
            writes.push(view::authorisation_write(a));
            events.push(Event::new(EventKind::PaymentAuthorised(a.clone())));
        }
        let entry = Entry::new(self.now, events);
        self.queued
            .push(Box::pin(self.journal.append(&entry, writes)));
    }
}

/// An authentication decided, with its changes queued in the log and not yet known to be on
/// disk ([`Engine::authenticate_queued`]). Holds the engine's admission and the order's claim
/// until [`QueuedAuth::recorded`].
#[must_use = "an authentication counts only once recorded"]
pub struct QueuedAuth<'e> {
    engine: &'e Engine,
    _admission: crate::engine::Admission<'e>,
    challenge_id: String,
    account: Option<String>,
    outcome: AuthOutcome,
    queued: Vec<Appended>,
}

impl QueuedAuth<'_> {
    /// What was decided; not to be told to anyone before [`QueuedAuth::recorded`].
    pub fn outcome(&self) -> &AuthOutcome {
        &self.outcome
    }

    /// Waits until the authentication's changes are on disk, then lets go of the order (an
    /// authorisation on record now refuses a second payer) and returns the outcome; if they
    /// could not be written, nothing it decided counts and the error is the answer.
    pub async fn recorded(self) -> Result<AuthOutcome, EngineError> {
        let durable = all_durable(self.queued).await;
        let outcome = self
            .engine
            .authorisation_settled(&self.challenge_id, durable.map(|()| self.outcome))?;
        log_auth_outcome(self.account.as_deref(), &outcome);
        Ok(outcome)
    }
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
    fn auth_center(&self) -> Result<&Arc<AuthCenter>, EngineError> {
        self.auth.as_ref().ok_or_else(|| {
            EngineError::Config(
                "no card issuer key is configured (ONECARD_ISSUER_KEY): cards are disabled".into(),
            )
        })
    }

    /// Runs `op` on the authentication center with a journal log, then waits until the
    /// changes it recorded are on disk before returning its result.
    async fn with_auth<T>(
        &self,
        now: Secs,
        op: impl FnOnce(&AuthCenter, &mut JournalLog<'_>) -> T,
    ) -> Result<T, EngineError> {
        let center = self.auth_center()?;
        let mut log = JournalLog::new(&self.shared.journal, now);
        let result = op(center, &mut log);
        log.durable().await?;
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
        self.with_auth(now, |c, log| {
            c.issue_card(
                &req.number,
                &req.holder,
                &req.pin,
                &req.registered_address,
                log,
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
        self.with_auth(now, |c, log| c.register_reader(reader, log))
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
        self.with_auth(now, |c, log| c.unlock_card(number, log))
            .await
    }

    /// The holder reports the card lost: it never authenticates again.
    pub async fn report_lost(
        &self,
        number: &str,
        now: Secs,
    ) -> Result<Result<(), CardError>, EngineError> {
        let _admission = self.admit()?;
        let now = self.advance_clock(now);
        self.with_auth(now, |c, log| c.report_lost(number, log))
            .await
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
        let result = self.auth_center()?.swipe(
            reader_id,
            card_number,
            peer,
            order_id,
            amount_cents,
            now,
            // The thread's CSPRNG (ChaCha, seeded and reseeded from the OS): three draws per
            // swipe without three getrandom calls.
            &mut rand::thread_rng(),
        );
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
    /// The account of a challenge and what limits its payment now: the available credit, and
    /// the verdict of the consumer's gateway rules on `at_reader` (merchant, and what the node
    /// knows of it), if given. Both are checked again when the order is placed.
    fn challenge_limits(
        &self,
        challenge_id: &str,
        at_reader: Option<(&str, &ReaderPayment)>,
        now: Secs,
    ) -> Result<(Option<String>, PaymentLimits), EngineError> {
        let center = self.auth_center()?;
        let account = center.challenge_account(challenge_id);
        let Some(consumer) = account.as_deref() else {
            return Ok((account, PaymentLimits::default()));
        };
        let Some(c) = self.shared.view.consumer_record(consumer)? else {
            return Ok((account, PaymentLimits::default()));
        };
        let available = c.credit_limit.cents().saturating_sub(c.reserved.cents());
        let mut limits = PaymentLimits::from(u64::try_from(available.max(0)).unwrap_or(u64::MAX));
        if let (Some((merchant, payment)), Some(rules), Some(cents)) =
            (at_reader, &c.gateway, center.challenge_amount(challenge_id))
        {
            let amount = Amount::from_cents(i64::try_from(cents).unwrap_or(i64::MAX));
            let spent = if c.gateway_spent.day == rules.day_of(now) {
                c.gateway_spent.amount
            } else {
                Amount::ZERO
            };
            limits.gateway = rules
                .check(merchant, &payment.category, amount, spent, now)
                .err();
        }
        Ok((account, limits))
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
        at_reader: Option<(&str, &ReaderPayment)>,
        now: Secs,
    ) -> Result<AuthOutcome, EngineError> {
        self.authenticate_queued(
            challenge_id,
            counter,
            cryptogram,
            pin,
            delivery_address,
            confirm_address_change,
            at_reader,
            now,
        )
        .await?
        .recorded()
        .await
    }

    /// [`Engine::authenticate`] without waiting for its changes to be on disk: the outcome is
    /// decided and its changes are queued in the log; [`QueuedAuth::recorded`] waits for them
    /// and must be awaited before anyone hears of the outcome. Meanwhile the caller may queue
    /// what follows from it (the order's placement), which then needs no wait of its own in
    /// between: the log writes records in order and stops at its first failure, so whatever
    /// comes after the authentication in the log is durable only if the authentication is.
    /// The order stays held against other payers until `recorded`.
    #[allow(clippy::too_many_arguments)]
    pub async fn authenticate_queued(
        &self,
        challenge_id: &str,
        counter: u32,
        cryptogram: &[u8],
        pin: &EncryptedPin,
        delivery_address: &str,
        confirm_address_change: Option<bool>,
        at_reader: Option<(&str, &ReaderPayment)>,
        now: Secs,
    ) -> Result<QueuedAuth<'_>, EngineError> {
        let admission = self.admit()?;
        let now = self.advance_clock(now);
        let (account, credit) = self.challenge_limits(challenge_id, at_reader, now)?;
        // Asked while the authentication holds the order, so no other can slip in between.
        let mut lookup_failed = None;
        let order_authorised = |order: &str| match self.shared.view.authorisation(order) {
            Ok(found) => found.is_some(),
            Err(e) => {
                lookup_failed = Some(e);
                // Unknown: refuse rather than risk a second authorisation.
                true
            }
        };
        let center = self.auth_center()?;
        let mut log = JournalLog::new(&self.shared.journal, now);
        let outcome = center.authenticate(
            challenge_id,
            counter,
            cryptogram,
            pin,
            delivery_address,
            confirm_address_change,
            credit,
            now,
            order_authorised,
            &mut log,
        );
        let queued = QueuedAuth {
            engine: self,
            _admission: admission,
            challenge_id: challenge_id.to_string(),
            account,
            outcome,
            queued: log.queued,
        };
        if let Some(e) = lookup_failed {
            // Its changes (a counter, say) still count; the answer is the error.
            queued.recorded().await?;
            return Err(e.into());
        }
        Ok(queued)
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
        at_reader: Option<(&str, &ReaderPayment)>,
        now: Secs,
    ) -> Result<AuthOutcome, EngineError> {
        let _admission = self.admit()?;
        let now = self.advance_clock(now);
        let (account, limits) = self.challenge_limits(challenge_id, at_reader, now)?;
        let outcome = self
            .with_auth(now, |c, log| {
                c.confirm_address_change(challenge_id, accept, limits, now, log)
            })
            .await;
        let outcome = self.authorisation_settled(challenge_id, outcome)?;
        log_auth_outcome(account.as_deref(), &outcome);
        Ok(outcome)
    }

    /// After an authentication's changes were written (or failed to be): an authorisation on
    /// record lets go of its order (the record now refuses a second payer); one whose record
    /// failed lets go too, and the error is the answer (nothing was authorised).
    fn authorisation_settled(
        &self,
        challenge_id: &str,
        outcome: Result<AuthOutcome, EngineError>,
    ) -> Result<AuthOutcome, EngineError> {
        let center = self.auth_center()?;
        match &outcome {
            Ok(AuthOutcome::Authorised(a)) => {
                center.authorisation_recorded(&a.order_id, challenge_id)
            }
            Ok(_) => {}
            Err(_) => center.abandon_challenge(challenge_id),
        }
        outcome
    }

    /// A card as the node holds it now (token, last four, status, counter, failures), if
    /// issued; looked up by its number's token.
    pub fn card(&self, number: &str) -> Result<Option<crate::cards::Card>, EngineError> {
        Ok(self.auth_center()?.card(number))
    }

    /// The cards locked now (too many wrong PINs; an administrator unlocks them), in token
    /// order. Each is known by its token and last four digits only (I10).
    pub fn locked_cards(&self) -> Result<Vec<crate::cards::Card>, EngineError> {
        Ok(self.auth_center()?.locked_cards())
    }

    /// The order an outstanding challenge is for (`None`: unknown, used or expired).
    pub fn challenge_order(&self, challenge_id: &str) -> Result<Option<String>, EngineError> {
        Ok(self.auth_center()?.challenge_order(challenge_id))
    }
}
