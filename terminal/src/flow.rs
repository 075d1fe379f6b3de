//! A payment at the reader (SPEC F18 steps 2–3): read the card, swipe at the node, take the
//! PIN, let the card sign the node's challenge, send the encrypted PIN and the cryptogram, ask
//! about a different delivery address if the node wants to know, and show every outcome.
//!
//! The card is reached through a [`CardChannel`] (PC/SC in the real program), the node through
//! a [`NodeLink`] (the node's HTTP API, `crate::http_link`; in process in the tests and the
//! demo, with the links of `onecard-testkit`), the consumer
//! through a [`Console`] (display, keypad, sound). Nothing here blocks on anything else, and no
//! failure is silent: every way a payment can end has a prompt.

use onecard_protocol::{
    encrypt_pin, is_sign_in, AuthOutcome, Authorisation, ChallengeIssued, EncryptedPin, Prompt,
    SoundCue, SwipeRefusal, SIGN_IN_PREFIX,
};
use rand::{CryptoRng, RngCore};

use crate::apdu::{self, ApduError, CardData};
use crate::channel::{CardChannel, CardIoError};
use onecard_protocol::wire::to_hex;

/// The node could not be reached, or answered with nonsense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the settlement node cannot be reached: {0}")]
pub struct LinkError(pub String);

/// The reader program's link to the node.
pub trait NodeLink {
    /// Step 2: this reader, with this card, wants to pay this order.
    fn swipe(
        &mut self,
        reader_id: &str,
        card_number: &str,
        order_id: &str,
        amount_cents: u64,
    ) -> Result<Result<ChallengeIssued, SwipeRefusal>, LinkError>;

    /// Step 3: the card's answer to the challenge and the encrypted PIN.
    fn authenticate(
        &mut self,
        challenge_id: &str,
        counter: u32,
        cryptogram: &[u8],
        pin: &EncryptedPin,
        delivery_address: &str,
    ) -> Result<AuthOutcome, LinkError>;

    /// The consumer's answer about a delivery address other than the registered one.
    fn confirm_address_change(
        &mut self,
        challenge_id: &str,
        accept: bool,
    ) -> Result<AuthOutcome, LinkError>;
}

/// The reader's display, keypad and speaker.
pub trait Console {
    fn show(&mut self, prompt: &Prompt);
    /// The PIN as typed on the keypad; `None` if the consumer cancels.
    fn read_pin(&mut self) -> Option<String>;
    /// A yes/no question (the prompt says what is asked).
    fn confirm(&mut self, question: &Prompt) -> bool;
}

/// What the reader program is asked to pay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRequest {
    /// This reader's special identification code.
    pub reader_id: String,
    pub order_id: String,
    pub amount_cents: u64,
    pub delivery_address: String,
}

impl PaymentRequest {
    /// A sign-in at this reader: card and PIN prove the consumer, for a session of the node's
    /// consumer API; nothing is paid (an amount of zero, no delivery address).
    pub fn sign_in(reader_id: &str, rng: &mut impl RngCore) -> PaymentRequest {
        let mut nonce = [0u8; 12];
        rng.fill_bytes(&mut nonce);
        PaymentRequest {
            reader_id: reader_id.to_string(),
            order_id: format!("{SIGN_IN_PREFIX}{}", to_hex(&nonce)),
            amount_cents: 0,
            delivery_address: String::new(),
        }
    }
}

/// How a payment ended at the reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentEnd {
    /// The node authorised the payment; the order can be placed.
    Authorised(Authorisation),
    /// The node refused (binding, PIN, credit, …); the prompt says why.
    Refused(Prompt),
    /// The flow stopped at the reader: the card was removed, the reader vanished, the node was
    /// unreachable, the consumer cancelled. Nothing was charged.
    Aborted { reason: String, prompt: Prompt },
}

/// Prompts of the reader program's own (the node's are `onecard_protocol::Prompt`'s).
pub mod prompts {
    use super::{Prompt, SoundCue};

    fn p(text: &str, sound: SoundCue) -> Prompt {
        Prompt {
            text: text.to_string(),
            sound,
        }
    }
    pub fn card_removed() -> Prompt {
        p("Card removed: payment cancelled", SoundCue::Error)
    }
    pub fn reader_gone() -> Prompt {
        p(
            "Card reader disconnected: payment cancelled",
            SoundCue::Error,
        )
    }
    pub fn no_service() -> Prompt {
        p(
            "No card reader service is running: payment cancelled",
            SoundCue::Error,
        )
    }
    pub fn card_unreadable() -> Prompt {
        p("This card cannot be read", SoundCue::Error)
    }
    pub fn node_unreachable() -> Prompt {
        p(
            "Cannot reach the payment service: try again later",
            SoundCue::Error,
        )
    }
    pub fn cancelled() -> Prompt {
        p("Payment cancelled", SoundCue::Attention)
    }
    pub fn reading_card() -> Prompt {
        p("Reading your card…", SoundCue::Ok)
    }
    pub fn signed_in() -> Prompt {
        p("Signed in", SoundCue::Ok)
    }
}

fn abort(console: &mut dyn Console, reason: String, prompt: Prompt) -> PaymentEnd {
    console.show(&prompt);
    PaymentEnd::Aborted { reason, prompt }
}

fn card_failure(console: &mut dyn Console, e: CardIoError) -> PaymentEnd {
    let prompt = match e {
        CardIoError::CardRemoved => prompts::card_removed(),
        CardIoError::ReaderGone(_) => prompts::reader_gone(),
        CardIoError::NoService(_) => prompts::no_service(),
        CardIoError::Unresponsive(_) => prompts::card_unreadable(),
    };
    abort(console, e.to_string(), prompt)
}

fn apdu_failure(console: &mut dyn Console, e: ApduError) -> PaymentEnd {
    abort(console, e.to_string(), prompts::card_unreadable())
}

/// Selects the OneCard application and reads the card's identity.
pub fn read_card(card: &mut dyn CardChannel) -> Result<CardData, Result<CardIoError, ApduError>> {
    let sel = card.transmit(&apdu::select()).map_err(Ok)?;
    apdu::check(&sel).map_err(Err)?;
    let data = card.transmit(&apdu::read_card_data()).map_err(Ok)?;
    apdu::parse_card_data(&data).map_err(Err)
}

/// Runs one payment at the reader. See the module documentation.
pub fn pay(
    card: &mut dyn CardChannel,
    node: &mut dyn NodeLink,
    console: &mut dyn Console,
    req: &PaymentRequest,
    rng: &mut (impl RngCore + CryptoRng),
) -> PaymentEnd {
    console.show(&prompts::reading_card());
    let data = match read_card(card) {
        Ok(d) => d,
        Err(Ok(io)) => return card_failure(console, io),
        Err(Err(apdu)) => return apdu_failure(console, apdu),
    };
    let challenge = match node.swipe(
        &req.reader_id,
        &data.card_number,
        &req.order_id,
        req.amount_cents,
    ) {
        Err(e) => return abort(console, e.to_string(), prompts::node_unreachable()),
        Ok(Err(refusal)) => {
            let prompt = refusal.prompt();
            console.show(&prompt);
            return PaymentEnd::Refused(prompt);
        }
        Ok(Ok(ch)) => ch,
    };
    console.show(&challenge.prompt());
    let Some(pin) = console.read_pin() else {
        return abort(
            console,
            "the consumer cancelled at the PIN".into(),
            prompts::cancelled(),
        );
    };
    let command =
        match apdu::generate_cryptogram(&challenge.challenge, req.amount_cents, &req.order_id) {
            Ok(c) => c,
            Err(e) => return apdu_failure(console, e),
        };
    let answer = match card.transmit(&command) {
        Ok(a) => a,
        Err(e) => return card_failure(console, e),
    };
    let signed = match apdu::parse_cryptogram(&answer) {
        Ok(s) => s,
        Err(e) => return apdu_failure(console, e),
    };
    // The PIN leaves the reader only encrypted to this challenge's node key.
    let encrypted = match encrypt_pin(&challenge.node_public, &challenge.challenge, &pin, rng) {
        Ok(e) => e,
        Err(_) => {
            // Not a PIN at all (wrong length, not digits): the node would count nothing.
            let prompt = AuthOutcome::PinUnreadable.prompt();
            console.show(&prompt);
            return PaymentEnd::Refused(prompt);
        }
    };
    drop(pin);
    let mut outcome = match node.authenticate(
        &challenge.challenge_id,
        signed.counter,
        &signed.cryptogram,
        &encrypted,
        &req.delivery_address,
    ) {
        Ok(o) => o,
        Err(e) => return abort(console, e.to_string(), prompts::node_unreachable()),
    };
    if outcome == AuthOutcome::ConfirmAddressChange {
        let accept = console.confirm(&outcome.prompt());
        outcome = match node.confirm_address_change(&challenge.challenge_id, accept) {
            Ok(o) => o,
            Err(e) => return abort(console, e.to_string(), prompts::node_unreachable()),
        };
    }
    let prompt = match &outcome {
        AuthOutcome::Authorised(_) if is_sign_in(&req.order_id) => prompts::signed_in(),
        _ => outcome.prompt(),
    };
    console.show(&prompt);
    match outcome {
        AuthOutcome::Authorised(a) => PaymentEnd::Authorised(a),
        _ => PaymentEnd::Refused(prompt),
    }
}
