//! What the reader shows and plays (F3): one fixed, short English prompt and one sound cue per
//! step or outcome of the card flow. The texts are the contract with the reader program and the
//! tests pin them; they never contain a card number, PIN or amount of credit.

use serde::{Deserialize, Serialize};

/// The sound the reader plays with a prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SoundCue {
    /// Success: the payment is authorised.
    Ok,
    /// The consumer has something to do (enter the PIN, answer a question).
    Attention,
    /// The step failed; the consumer may try again or pay otherwise.
    Error,
    /// The card cannot be used any more until the bank acts.
    Locked,
}

/// A line for the reader's display and the sound that goes with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prompt {
    pub text: String,
    pub sound: SoundCue,
}

impl Prompt {
    fn new(text: impl Into<String>, sound: SoundCue) -> Prompt {
        Prompt {
            text: text.into(),
            sound,
        }
    }

    /// A challenge was issued: the reader asks for the PIN.
    pub fn enter_pin() -> Prompt {
        Prompt::new("Enter your PIN", SoundCue::Attention)
    }

    /// A wrong PIN that did not lock the card.
    pub fn wrong_pin(tries_left: u32) -> Prompt {
        let text = if tries_left == 1 {
            "Wrong PIN, 1 try left".to_string()
        } else {
            format!("Wrong PIN, {tries_left} tries left")
        };
        Prompt::new(text, SoundCue::Error)
    }

    /// The card is locked (too many wrong PINs).
    pub fn card_locked() -> Prompt {
        Prompt::new("Card locked: contact your bank", SoundCue::Locked)
    }

    /// The card was reported lost.
    pub fn card_lost() -> Prompt {
        Prompt::new("Card reported lost: contact your bank", SoundCue::Locked)
    }

    /// The delivery address is not the registered one: the consumer confirms or aborts (F14).
    pub fn confirm_address_change() -> Prompt {
        Prompt::new(
            "Delivery address differs from your registered one: confirm this one-time change?",
            SoundCue::Attention,
        )
    }

    /// The consumer did not confirm the other delivery address.
    pub fn address_change_declined() -> Prompt {
        Prompt::new(
            "Payment cancelled: delivery address not confirmed",
            SoundCue::Error,
        )
    }

    /// The amount is above the available credit (F15).
    pub fn credit_refused() -> Prompt {
        Prompt::new(
            "Amount above your available credit: please choose another means of payment",
            SoundCue::Error,
        )
    }

    /// A payment rule the consumer set refuses it (F9); `reason` says which limit, merchant,
    /// category or hours.
    pub fn gateway_refused(reason: &str) -> Prompt {
        Prompt::new(
            format!("Refused by your payment rules: {reason}"),
            SoundCue::Error,
        )
    }

    /// Every check passed.
    pub fn authorised() -> Prompt {
        Prompt::new("Payment authorised", SoundCue::Ok)
    }

    /// Card and reader are not bound to each other, or the reader is not where it is
    /// registered (F2, I9). One text for all three causes, so that a stranger learns nothing
    /// about which part of the binding failed.
    pub fn not_bound() -> Prompt {
        Prompt::new("This card does not belong to this reader", SoundCue::Error)
    }

    /// The reader had too many refused swipes in the last minute.
    pub fn rate_limited() -> Prompt {
        Prompt::new("Too many attempts: wait a minute", SoundCue::Error)
    }

    /// The challenge is unknown, used up or expired.
    pub fn timed_out() -> Prompt {
        Prompt::new("Session timed out: swipe again", SoundCue::Error)
    }

    /// The card's cryptogram is wrong or replayed.
    pub fn card_not_recognised() -> Prompt {
        Prompt::new("Card not recognised", SoundCue::Error)
    }

    /// The encrypted PIN could not be decrypted (damaged or tampered with on the way).
    pub fn pin_unreadable() -> Prompt {
        Prompt::new("PIN could not be read: swipe again", SoundCue::Error)
    }

    /// The order the swipe is for cannot be paid by card (no id, an id too long, a zero
    /// amount).
    pub fn invalid_order() -> Prompt {
        Prompt::new("Order not valid: return to the shop", SoundCue::Error)
    }

    /// The card's transaction counter jumped further than the node accepts: the card must be
    /// checked by its issuer.
    pub fn counter_out_of_window() -> Prompt {
        Prompt::new("Card needs checking: contact your bank", SoundCue::Error)
    }

    /// Someone else is paying, or has paid, this order.
    pub fn order_taken() -> Prompt {
        Prompt::new("This order is already being paid", SoundCue::Error)
    }
}
