//! The typed commands: the requests the engine takes from outside and the checks of their
//! raw fields that need no state.
//!
//! [`OpenConsumer`], [`PlaceOrder`], [`RefundRequest`] and [`IssueCard`] arrive as text and
//! JSON (a scenario file, the CLI, an HTTP body); [`PlaceCmd`] and [`RefundCmd`] carry an
//! `Amount` and a `Release` already, for callers that did their own parsing. Kept apart from
//! the `Engine` so that the request shapes (which the node, the CLI and the simulator build)
//! can be read without the routing and recovery around them, and so that the pure parsing
//! ([`parse_release`], `check_id`) is testable on its own. Re-exported by `engine`.

use serde::{Deserialize, Serialize};

use crate::model::{Refusal, Release};
use crate::money::Amount;

/// A request to open a consumer: amounts as text, checked by the engine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenConsumer {
    pub consumer: String,
    pub credit_limit: String,
    /// The designated bank account, which must exist at the bank.
    pub bank: String,
    /// Moved from the bank account into the wallet at opening.
    pub wallet: String,
}

/// A request to place an order, as it arrives from outside.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlaceOrder {
    pub id: String,
    pub consumer: String,
    pub merchant: String,
    pub amount: String,
    /// One of `{"on":"receipt"}`, `{"on":"code","code":"…"}`, `{"on":"time","after_secs":N}`.
    pub release: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefundRequest {
    pub id: String,
    pub order: String,
    pub amount: String,
}

/// A place-order command with typed fields (for callers that hold an `Amount` and a
/// `Release` already: the simulator, an API layer after its own parsing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceCmd {
    pub id: String,
    pub consumer: String,
    pub merchant: String,
    pub amount: Amount,
    pub release: Release,
    /// A payment at a reader, which the consumer's gateway rules apply to (SPEC F9); `None`
    /// for what no reader pays (a bill its rule pays, a scenario's order).
    pub at_reader: Option<ReaderPayment>,
}

/// What the gateway rules need to know of a payment at a reader besides its merchant and
/// amount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderPayment {
    /// The merchant's category (`groceries`, …).
    pub category: String,
}

/// A refund command with a typed amount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundCmd {
    pub id: String,
    pub order: String,
    pub amount: Amount,
}

/// Money for a consumer under an id (SPEC F8, F12): a recharge card, a salary, a bank
/// transfer. Idempotent by `id` (one name space for credits and fundings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditCmd {
    pub id: String,
    pub consumer: String,
    pub source: crate::ledger::CreditSource,
    pub target: crate::ledger::CreditTarget,
    pub amount: Amount,
}

/// Money from one of a consumer's bank accounts to another (stored names), under an id
/// (SPEC F5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BankTransferCmd {
    pub id: String,
    pub consumer: String,
    pub from: String,
    pub to: String,
    pub amount: Amount,
}

/// A merchant's (an employer's) balance funded from its bank account, under an id (SPEC F12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FundCmd {
    pub id: String,
    pub merchant: String,
    pub amount: Amount,
}

/// Parses a release condition, refusing anything that is not exactly one of the three forms.
pub fn parse_release(v: &serde_json::Value) -> Result<Release, Refusal> {
    let invalid = |m: &str| Refusal::invalid(format!("release {v}: {m}"));
    let obj = v.as_object().ok_or_else(|| invalid("must be an object"))?;
    let on = obj
        .get("on")
        .and_then(|x| x.as_str())
        .ok_or_else(|| invalid("needs \"on\""))?;
    let allowed: &[&str] = match on {
        "receipt" => &["on"],
        "code" => &["on", "code"],
        "time" => &["on", "after_secs"],
        _ => return Err(invalid("\"on\" must be receipt, code or time")),
    };
    if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(invalid(&format!("unexpected field {k:?}")));
    }
    match on {
        "receipt" => Ok(Release::Receipt),
        "code" => match obj.get("code").and_then(|c| c.as_str()) {
            Some(c) if !c.is_empty() && c.len() <= 256 => Ok(Release::Code(c.to_string())),
            _ => Err(invalid("a code release needs a non-empty \"code\" string")),
        },
        _ => match obj.get("after_secs").and_then(|s| s.as_u64()) {
            Some(n) if n > 0 => Ok(Release::Time { after_secs: n }),
            _ => Err(invalid(
                "a time release needs a positive integer \"after_secs\"",
            )),
        },
    }
}

/// Checks an id or a name from outside: non-empty, bounded, printable.
pub(crate) fn check_id(what: &str, id: &str) -> Result<(), Refusal> {
    // Characters, not bytes, as the API's schema says (`maxLength` counts characters).
    if id.is_empty() || id.chars().count() > 128 || id.chars().any(|c| c.is_control()) {
        return Err(Refusal::invalid(format!(
            "{what} {id:?} must be 1 to 128 characters with no control characters"
        )));
    }
    Ok(())
}

/// A card to issue (F1): its number, its holder (an existing consumer), the PIN (kept only as
/// a keyed verifier) and the holder's registered delivery address.
#[derive(Clone, Serialize, Deserialize)]
pub struct IssueCard {
    pub number: String,
    pub holder: String,
    pub pin: String,
    pub registered_address: String,
}

impl std::fmt::Debug for IssueCard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssueCard")
            .field("number", &crate::cards::mask_card_number(&self.number))
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn release_forms_are_exact() {
        assert_eq!(
            parse_release(&json!({"on":"receipt"})),
            Ok(Release::Receipt)
        );
        assert_eq!(
            parse_release(&json!({"on":"code","code":"12"})),
            Ok(Release::Code("12".into()))
        );
        assert_eq!(
            parse_release(&json!({"on":"time","after_secs":5})),
            Ok(Release::Time { after_secs: 5 })
        );
        for bad in [
            json!({"on":"someday"}),
            json!({"on":"code"}),
            json!({"on":"code","code":""}),
            json!({"on":"time","after_secs":0}),
            json!({"on":"time","after_secs":-1}),
            json!({"on":"time","after_secs":1.5}),
            json!({"on":"time","after_secs":"5"}),
            json!({"on":"receipt","code":"1"}),
            json!("receipt"),
            json!(null),
        ] {
            assert_eq!(
                parse_release(&bad).map_err(|r| r.kind),
                Err(crate::model::RefusalKind::Invalid),
                "{bad}"
            );
        }
    }

    #[test]
    fn an_id_is_limited_in_characters_not_bytes() {
        let wide = "é".repeat(128);
        assert_eq!(wide.len(), 256);
        assert!(check_id("order", &wide).is_ok());
        assert!(check_id("order", &"é".repeat(129)).is_err());
        assert!(check_id("order", &"a".repeat(128)).is_ok());
        assert!(check_id("order", &"a".repeat(129)).is_err());
        assert!(check_id("order", "").is_err());
        assert!(check_id("order", "a\u{7}b").is_err());
    }
}
