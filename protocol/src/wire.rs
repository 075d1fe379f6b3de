//! The reader API's JSON bodies: what the reader program and the node exchange over HTTP
//! (`/v1/reader/...`). Both sides use these types, so they cannot drift apart. Bytes travel as
//! hex (the `hex` crate: sent in lower case; upper-case digits are accepted too, as
//! docs/reader-protocol.md says); amounts as decimal strings ("12.34") next to their cents.

use serde::{Deserialize, Serialize};

use crate::messages::{AuthOutcome, Authorisation, ChallengeIssued, SwipeRefusal};
use crate::pin::EncryptedPin;
use crate::prompt::Prompt;

/// `GET /v1/reader/checkouts/{order_id}`: the checkout session as the reader shows it before
/// the card is read (step 1 → 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckoutView {
    pub order_id: String,
    pub merchant: String,
    pub amount: String,
    pub amount_cents: u64,
    pub currency: String,
    pub delivery_name: String,
    pub delivery_address: String,
    /// `awaiting_payment` until an order is placed; then the order's state.
    pub status: String,
}

/// `POST /v1/reader/swipe`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwipeBody {
    pub reader_id: String,
    pub card_number: String,
    pub order_id: String,
    pub amount_cents: u64,
}

/// The answer to a swipe: a challenge, or a refusal with its prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum SwipeAnswer {
    Challenge {
        challenge_id: String,
        /// Hex.
        challenge: String,
        /// Hex: the node's X25519 agreement key (the same for the challenges of one epoch).
        node_public: String,
        expires_at: u64,
        prompt: Prompt,
    },
    Refused {
        /// `rate_limited`, `unknown_reader`, `card_not_bound`, `wrong_network`, `card_locked`,
        /// `card_lost`, `invalid_order`.
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_at: Option<u64>,
        prompt: Prompt,
    },
}

/// `POST /v1/reader/authenticate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthenticateBody {
    pub challenge_id: String,
    pub counter: u32,
    /// Hex.
    pub cryptogram: String,
    pub pin: PinBody,
    pub delivery_address: String,
}

/// An [`EncryptedPin`] on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinBody {
    pub reader_public: String,
    pub nonce: String,
    pub ciphertext: String,
}

/// `POST /v1/reader/confirm-address`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmAddressBody {
    pub challenge_id: String,
    pub accept: bool,
}

/// The answer to an authentication or an address confirmation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthAnswer {
    /// `authorised`, `wrong_pin`, `card_locked`, `card_lost`, `bad_cryptogram`, `replayed`,
    /// `pin_unreadable`, `timed_out`, `confirm_address_change`, `address_change_declined`,
    /// `credit_refused`.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tries_left: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_cents: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_cents: Option<u64>,
    /// When a gateway rule refused: which one, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorisation: Option<AuthorisationBody>,
    /// Step 4, when authorised: the order as placed in the virtual account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<PlacedOrder>,
    /// When authorised: a session for the consumer API, proven by card and PIN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionBody>,
    /// On a sign-in: a one-time code for the node's web pages, to show on the reader. The
    /// consumer types it into the sign-in page of any browser; it is good once, for minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_code: Option<WebCodeBody>,
    pub prompt: Prompt,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorisationBody {
    pub order_id: String,
    pub amount_cents: u64,
    pub card_last4: String,
    pub account: String,
    pub reader_id: String,
    pub temporary_address_change: bool,
}

/// The order placed after an authorisation (step 4): `pending`, `settled` (direct mode) or
/// `refused` with the refusal (`refused:credit`, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacedOrder {
    pub id: String,
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionBody {
    pub token: String,
    pub expires_at: u64,
}

/// A one-time code for the web pages' sign-in, shown on the reader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebCodeBody {
    /// As shown and typed: groups of four, dashes and case ignored when typed.
    pub code: String,
    /// Unix seconds.
    pub expires_at: u64,
}

/// A JSON error body, as every 4xx and 5xx of the API carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// A stable machine-readable code (`invalid_json`, `unknown_order`, `idempotency_mismatch`…).
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// Lowercase hex of bytes: the workspace's one hex encoder. A table lookup per nibble into
/// one allocation (`hex::encode` collects an iterator of `char`s, several times the work, and
/// ids, digests and keys are encoded for every request).
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    // Filled as bytes, then checked as UTF-8 once: a `char` pushed at a time costs a capacity
    // check and an encoding each (ids, tokens and fingerprints are drawn for every request).
    let mut out = vec![0u8; bytes.len() * 2];
    for (pair, &b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0x0f)];
    }
    // ASCII digits are UTF-8: the empty fallback is never taken.
    String::from_utf8(out).unwrap_or_default()
}

/// Bytes of hex text (either case); `None` if it is not even-length hex: `hex::decode`, with
/// the error as `None`.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    hex::decode(text).ok()
}

/// Exactly `N` bytes of hex text; `None` for anything else.
fn fixed<const N: usize>(text: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

impl SwipeAnswer {
    pub fn from_result(result: Result<ChallengeIssued, SwipeRefusal>) -> SwipeAnswer {
        match result {
            Ok(ch) => SwipeAnswer::Challenge {
                prompt: ch.prompt(),
                challenge_id: ch.challenge_id,
                challenge: to_hex(&ch.challenge),
                node_public: to_hex(&ch.node_public),
                expires_at: ch.expires_at,
            },
            Err(r) => SwipeAnswer::Refused {
                reason: swipe_refusal_code(&r).to_string(),
                retry_at: match r {
                    SwipeRefusal::RateLimited { retry_at } => Some(retry_at),
                    _ => None,
                },
                prompt: r.prompt(),
            },
        }
    }

    /// Back to the protocol's types; `None` if the body is not one the node sends.
    pub fn into_result(self) -> Option<Result<ChallengeIssued, SwipeRefusal>> {
        match self {
            SwipeAnswer::Challenge {
                challenge_id,
                challenge,
                node_public,
                expires_at,
                ..
            } => Some(Ok(ChallengeIssued {
                challenge_id,
                challenge: fixed(&challenge)?,
                node_public: fixed(&node_public)?,
                expires_at,
            })),
            SwipeAnswer::Refused {
                reason, retry_at, ..
            } => Some(Err(match reason.as_str() {
                "rate_limited" => SwipeRefusal::RateLimited {
                    retry_at: retry_at.unwrap_or(0),
                },
                "unknown_reader" => SwipeRefusal::UnknownReader,
                "card_not_bound" => SwipeRefusal::CardNotBound,
                "wrong_network" => SwipeRefusal::WrongNetwork,
                "card_locked" => SwipeRefusal::CardLocked,
                "card_lost" => SwipeRefusal::CardLost,
                "invalid_order" => SwipeRefusal::InvalidOrder,
                _ => return None,
            })),
        }
    }
}

pub fn swipe_refusal_code(r: &SwipeRefusal) -> &'static str {
    match r {
        SwipeRefusal::RateLimited { .. } => "rate_limited",
        SwipeRefusal::UnknownReader => "unknown_reader",
        SwipeRefusal::CardNotBound => "card_not_bound",
        SwipeRefusal::WrongNetwork => "wrong_network",
        SwipeRefusal::CardLocked => "card_locked",
        SwipeRefusal::CardLost => "card_lost",
        SwipeRefusal::InvalidOrder => "invalid_order",
    }
}

impl PinBody {
    pub fn of(pin: &EncryptedPin) -> PinBody {
        PinBody {
            reader_public: to_hex(&pin.reader_public),
            nonce: to_hex(&pin.nonce),
            ciphertext: to_hex(&pin.ciphertext),
        }
    }

    pub fn to_pin(&self) -> Option<EncryptedPin> {
        Some(EncryptedPin {
            reader_public: fixed(&self.reader_public)?,
            nonce: fixed(&self.nonce)?,
            ciphertext: from_hex(&self.ciphertext)?,
        })
    }
}

impl AuthorisationBody {
    pub fn of(a: &Authorisation) -> AuthorisationBody {
        AuthorisationBody {
            order_id: a.order_id.clone(),
            amount_cents: a.amount_cents,
            card_last4: a.card_last4.clone(),
            account: a.account.clone(),
            reader_id: a.reader_id.clone(),
            temporary_address_change: a.temporary_address_change,
        }
    }

    pub fn to_authorisation(&self) -> Authorisation {
        Authorisation {
            order_id: self.order_id.clone(),
            amount_cents: self.amount_cents,
            card_last4: self.card_last4.clone(),
            account: self.account.clone(),
            reader_id: self.reader_id.clone(),
            temporary_address_change: self.temporary_address_change,
        }
    }
}

impl AuthAnswer {
    /// The outcome's fields; `order` and `session` are the node's to fill in.
    pub fn of(outcome: &AuthOutcome) -> AuthAnswer {
        let mut a = AuthAnswer {
            outcome: auth_outcome_code(outcome).to_string(),
            tries_left: None,
            amount_cents: None,
            available_cents: None,
            rule: None,
            reason: None,
            authorisation: None,
            order: None,
            session: None,
            web_code: None,
            prompt: outcome.prompt(),
        };
        match outcome {
            AuthOutcome::WrongPin { tries_left } => a.tries_left = Some(*tries_left),
            AuthOutcome::CreditRefused {
                amount_cents,
                available_cents,
            } => {
                a.amount_cents = Some(*amount_cents);
                a.available_cents = Some(*available_cents);
            }
            AuthOutcome::GatewayRefused { rule, reason } => {
                a.rule = Some(rule.clone());
                a.reason = Some(reason.clone());
            }
            AuthOutcome::Authorised(auth) => a.authorisation = Some(AuthorisationBody::of(auth)),
            _ => {}
        }
        a
    }

    /// Back to the protocol's outcome; `None` if the body is not one the node sends.
    pub fn to_outcome(&self) -> Option<AuthOutcome> {
        Some(match self.outcome.as_str() {
            "timed_out" => AuthOutcome::TimedOut,
            "card_locked" => AuthOutcome::CardLocked,
            "card_lost" => AuthOutcome::CardLost,
            "bad_cryptogram" => AuthOutcome::BadCryptogram,
            "replayed" => AuthOutcome::Replayed,
            "counter_out_of_window" => AuthOutcome::CounterOutOfWindow,
            "order_taken" => AuthOutcome::OrderTaken,
            "pin_unreadable" => AuthOutcome::PinUnreadable,
            "wrong_pin" => AuthOutcome::WrongPin {
                tries_left: self.tries_left?,
            },
            "confirm_address_change" => AuthOutcome::ConfirmAddressChange,
            "address_change_declined" => AuthOutcome::AddressChangeDeclined,
            "credit_refused" => AuthOutcome::CreditRefused {
                amount_cents: self.amount_cents?,
                available_cents: self.available_cents?,
            },
            "gateway_refused" => AuthOutcome::GatewayRefused {
                rule: self.rule.clone()?,
                reason: self.reason.clone()?,
            },
            "authorised" => {
                AuthOutcome::Authorised(self.authorisation.as_ref()?.to_authorisation())
            }
            _ => return None,
        })
    }
}

pub fn auth_outcome_code(o: &AuthOutcome) -> &'static str {
    match o {
        AuthOutcome::TimedOut => "timed_out",
        AuthOutcome::CardLocked => "card_locked",
        AuthOutcome::CardLost => "card_lost",
        AuthOutcome::BadCryptogram => "bad_cryptogram",
        AuthOutcome::Replayed => "replayed",
        AuthOutcome::CounterOutOfWindow => "counter_out_of_window",
        AuthOutcome::OrderTaken => "order_taken",
        AuthOutcome::PinUnreadable => "pin_unreadable",
        AuthOutcome::WrongPin { .. } => "wrong_pin",
        AuthOutcome::ConfirmAddressChange => "confirm_address_change",
        AuthOutcome::AddressChangeDeclined => "address_change_declined",
        AuthOutcome::CreditRefused { .. } => "credit_refused",
        AuthOutcome::GatewayRefused { .. } => "gateway_refused",
        AuthOutcome::Authorised(_) => "authorised",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_non_hex() {
        let bytes = [0u8, 1, 0xab, 0xff, 0x10];
        assert_eq!(to_hex(&bytes), "0001abff10");
        assert_eq!(from_hex("0001ABff10").unwrap(), bytes);
        assert_eq!(from_hex(""), Some(Vec::new()));
        for bad in ["abc", "zz", "+f", " 0", "0x01", "é1"] {
            assert_eq!(from_hex(bad), None, "{bad:?}");
        }
        assert_eq!(fixed::<2>("00ff"), Some([0, 255]));
        assert_eq!(fixed::<2>("00FF"), Some([0, 255]));
        assert_eq!(fixed::<2>("00ff00"), None);
        assert_eq!(fixed::<2>("00f"), None);
    }

    #[test]
    fn every_byte_encodes_as_the_hex_crate_does_and_decodes_back() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(to_hex(&all), hex::encode(&all));
        assert_eq!(from_hex(&to_hex(&all)).unwrap(), all);
        assert_eq!(to_hex(&[]), "");
    }

    #[test]
    fn a_pin_body_of_the_wrong_sizes_is_no_pin() {
        let pin = EncryptedPin {
            reader_public: [1; 32],
            nonce: [2; 12],
            ciphertext: vec![3; 20],
        };
        let body = PinBody::of(&pin);
        assert_eq!(body.to_pin(), Some(pin));
        let mut short_key = body.clone();
        short_key.reader_public.truncate(62);
        assert_eq!(short_key.to_pin(), None);
        let mut long_nonce = body.clone();
        long_nonce.nonce.push_str("00");
        assert_eq!(long_nonce.to_pin(), None);
        let mut odd = body;
        odd.ciphertext.push('0');
        assert_eq!(odd.to_pin(), None);
    }

    #[test]
    fn every_auth_outcome_survives_the_wire() {
        let auth = Authorisation {
            order_id: "o1".into(),
            amount_cents: 1234,
            card_last4: "4242".into(),
            account: "alice".into(),
            reader_id: "r1".into(),
            temporary_address_change: true,
        };
        for o in [
            AuthOutcome::TimedOut,
            AuthOutcome::CardLocked,
            AuthOutcome::CardLost,
            AuthOutcome::BadCryptogram,
            AuthOutcome::Replayed,
            AuthOutcome::CounterOutOfWindow,
            AuthOutcome::OrderTaken,
            AuthOutcome::PinUnreadable,
            AuthOutcome::WrongPin { tries_left: 2 },
            AuthOutcome::ConfirmAddressChange,
            AuthOutcome::AddressChangeDeclined,
            AuthOutcome::CreditRefused {
                amount_cents: 5,
                available_cents: 4,
            },
            AuthOutcome::Authorised(auth),
        ] {
            let json = serde_json::to_string(&AuthAnswer::of(&o)).unwrap();
            let back: AuthAnswer = serde_json::from_str(&json).unwrap();
            assert_eq!(back.to_outcome(), Some(o));
        }
    }

    #[test]
    fn every_swipe_answer_survives_the_wire() {
        let ch = ChallengeIssued {
            challenge_id: "c1".into(),
            challenge: [7; 16],
            node_public: [9; 32],
            expires_at: 99,
        };
        for r in [
            Ok(ch),
            Err(SwipeRefusal::RateLimited { retry_at: 60 }),
            Err(SwipeRefusal::UnknownReader),
            Err(SwipeRefusal::CardNotBound),
            Err(SwipeRefusal::WrongNetwork),
            Err(SwipeRefusal::CardLocked),
            Err(SwipeRefusal::CardLost),
            Err(SwipeRefusal::InvalidOrder),
        ] {
            let json = serde_json::to_string(&SwipeAnswer::from_result(r.clone())).unwrap();
            let back: SwipeAnswer = serde_json::from_str(&json).unwrap();
            assert_eq!(back.into_result(), Some(r));
        }
    }
}
