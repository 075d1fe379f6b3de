//! The messages of the reader protocol as types: what the node answers a swipe (a challenge or
//! a refusal) and an authentication (an outcome, an authorisation). The node's authentication
//! center (`onecard_engine::cards::AuthCenter`) makes them; the reader program shows their
//! prompts; [`crate::wire`] carries them as JSON.

use serde::{Deserialize, Serialize};

use crate::crypto::CHALLENGE_LEN;
use crate::mask::mask_last4;
use crate::prompt::Prompt;

/// The order ids of sign-ins: the consumer proves card and PIN at the reader to use the
/// consumer API, and nothing is paid. A sign-in is for an amount of zero, with no delivery
/// address; every other order id needs an amount above zero.
pub const SIGN_IN_PREFIX: &str = "signin-";

/// Whether an order id is a sign-in's ([`SIGN_IN_PREFIX`]).
pub fn is_sign_in(order_id: &str) -> bool {
    order_id.starts_with(SIGN_IN_PREFIX)
}

/// A swipe was accepted: what goes back to the reader program.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeIssued {
    pub challenge_id: String,
    /// The challenge the card's cryptogram must cover.
    pub challenge: [u8; CHALLENGE_LEN],
    /// The node's X25519 agreement key (the same for the challenges of one epoch): the PIN for
    /// this challenge is encrypted under a key agreed with it (`pin`).
    pub node_public: [u8; 32],
    /// The challenge is valid while `now < expires_at`.
    pub expires_at: u64,
}

impl ChallengeIssued {
    /// "Enter your PIN".
    pub fn prompt(&self) -> Prompt {
        Prompt::enter_pin()
    }
}

/// Why a swipe was refused (step 2). Shown to the consumer through [`SwipeRefusal::prompt`];
/// the variant itself is for the node's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum SwipeRefusal {
    /// Too many refused swipes on this reader: refused unchecked until `retry_at`.
    #[error("too many refused swipes on this reader; retry at {retry_at}")]
    RateLimited { retry_at: u64 },
    #[error("unknown reader")]
    UnknownReader,
    /// The card is not the one bound to this reader (I9).
    #[error("card not bound to this reader")]
    CardNotBound,
    /// The connection does not come from the reader's registered network (I9).
    #[error("connection not from the reader's registered network")]
    WrongNetwork,
    #[error("card locked")]
    CardLocked,
    #[error("card reported lost")]
    CardLost,
    /// The order id is empty or longer than 128 bytes, or the amount is zero.
    #[error("invalid order")]
    InvalidOrder,
}

impl SwipeRefusal {
    pub fn prompt(&self) -> Prompt {
        match self {
            SwipeRefusal::RateLimited { .. } => Prompt::rate_limited(),
            SwipeRefusal::UnknownReader
            | SwipeRefusal::CardNotBound
            | SwipeRefusal::WrongNetwork => Prompt::not_bound(),
            SwipeRefusal::CardLocked => Prompt::card_locked(),
            SwipeRefusal::CardLost => Prompt::card_lost(),
            SwipeRefusal::InvalidOrder => Prompt::invalid_order(),
        }
    }
}

/// Everything step 3 established: the order may be placed (step 4).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authorisation {
    pub order_id: String,
    pub amount_cents: u64,
    /// The last four digits of the card's number.
    pub card_last4: String,
    /// The consumer id the order is for.
    pub account: String,
    pub reader_id: String,
    /// The consumer confirmed a delivery address other than the registered one, for this order
    /// only (the registered address is unchanged).
    pub temporary_address_change: bool,
}

impl std::fmt::Debug for Authorisation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorisation")
            .field("order_id", &self.order_id)
            .field("amount_cents", &self.amount_cents)
            .field("card", &mask_last4(&self.card_last4))
            .field("account", &self.account)
            .field("reader_id", &self.reader_id)
            .field("temporary_address_change", &self.temporary_address_change)
            .finish()
    }
}

/// The outcome of an authentication (step 3) or of the consumer's answer about the delivery
/// address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthOutcome {
    /// The challenge is unknown, already used, or expired.
    TimedOut,
    /// The card is locked: by this attempt's wrong PIN, or before it.
    CardLocked,
    /// The card was reported lost since the swipe.
    CardLost,
    /// The cryptogram is not the card's for this challenge, order, amount and counter.
    BadCryptogram,
    /// The cryptogram is right but its counter is not above the last one accepted.
    Replayed,
    /// The cryptogram is right but its counter is more than `max_counter_jump` above the last
    /// one accepted. The challenge stays usable and the card is not changed.
    CounterOutOfWindow,
    /// Another payment holds this order: it is authorised already, or being authorised right
    /// now. Refused before the PIN; the challenge ends.
    OrderTaken,
    /// The encrypted PIN could not be decrypted (damaged or tampered with). Not counted as a
    /// wrong PIN.
    PinUnreadable,
    /// A wrong PIN; the card locks after `tries_left` more.
    WrongPin {
        tries_left: u32,
    },
    /// The delivery address is not the registered one: the reader asks the consumer and sends
    /// the answer for the same challenge id (`/v1/reader/confirm-address`).
    ConfirmAddressChange,
    /// The consumer did not confirm the other delivery address.
    AddressChangeDeclined,
    /// The amount is above the available credit.
    CreditRefused {
        amount_cents: u64,
        available_cents: u64,
    },
    /// One of the consumer's own payment-gateway rules refuses the payment (SPEC F9): which
    /// (`max_per_payment`, `max_per_day`, `merchant`, `category`, `hours`) and why, in words.
    GatewayRefused {
        rule: String,
        reason: String,
    },
    Authorised(Authorisation),
}

impl AuthOutcome {
    pub fn prompt(&self) -> Prompt {
        match self {
            AuthOutcome::TimedOut => Prompt::timed_out(),
            AuthOutcome::CardLocked => Prompt::card_locked(),
            AuthOutcome::CardLost => Prompt::card_lost(),
            AuthOutcome::BadCryptogram | AuthOutcome::Replayed => Prompt::card_not_recognised(),
            AuthOutcome::CounterOutOfWindow => Prompt::counter_out_of_window(),
            AuthOutcome::OrderTaken => Prompt::order_taken(),
            AuthOutcome::PinUnreadable => Prompt::pin_unreadable(),
            AuthOutcome::WrongPin { tries_left } => Prompt::wrong_pin(*tries_left),
            AuthOutcome::ConfirmAddressChange => Prompt::confirm_address_change(),
            AuthOutcome::AddressChangeDeclined => Prompt::address_change_declined(),
            AuthOutcome::CreditRefused { .. } => Prompt::credit_refused(),
            AuthOutcome::GatewayRefused { reason, .. } => Prompt::gateway_refused(reason),
            AuthOutcome::Authorised(_) => Prompt::authorised(),
        }
    }

    pub fn is_authorised(&self) -> bool {
        matches!(self, AuthOutcome::Authorised(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_authorisation_shows_the_card_masked() {
        let a = Authorisation {
            order_id: "o1".into(),
            amount_cents: 1,
            card_last4: "7890".into(),
            account: "alice".into(),
            reader_id: "r1".into(),
            temporary_address_change: false,
        };
        let shown = format!("{a:?}");
        assert!(shown.contains("************7890"), "{shown}");
    }

    #[test]
    fn sign_ins_are_recognised_by_their_prefix() {
        assert!(is_sign_in("signin-00ff"));
        assert!(!is_sign_in("o-1"));
        assert!(!is_sign_in("SIGNIN-1"));
    }
}
