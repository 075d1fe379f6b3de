//! Domain types shared by the ledger, the journal and the actors: releases, order states,
//! outcomes, refusals and the engine's rule configuration.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::money::Amount;

/// Seconds on the engine's clock. The ledger never reads a clock: time is always an argument.
pub type Secs = u64;

/// The consumer's condition for releasing the money to the merchant (F19).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Release {
    /// Goods received and the consumer satisfied.
    Receipt,
    /// A special identification code, e.g. handed over at delivery.
    Code(String),
    /// Automatically, this many seconds after placement.
    Time { after_secs: u64 },
}

impl Release {
    pub fn kind(&self) -> &'static str {
        match self {
            Release::Receipt => "receipt",
            Release::Code(_) => "code",
            Release::Time { .. } => "time",
        }
    }
}

/// The life of an order in the virtual account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OrderState {
    Pending,
    AwaitingFunds,
    Disputed,
    Settled,
    Cancelled,
    Expired,
    Refused,
}

impl OrderState {
    /// Whether the order can still change by itself or by a command other than a refund:
    /// pending, awaiting funds or disputed. Open orders stay with their consumer's actor;
    /// closed ones live only in the store.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            OrderState::Pending | OrderState::AwaitingFunds | OrderState::Disputed
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OrderState::Pending => "pending",
            OrderState::AwaitingFunds => "awaiting_funds",
            OrderState::Disputed => "disputed",
            OrderState::Settled => "settled",
            OrderState::Cancelled => "cancelled",
            OrderState::Expired => "expired",
            OrderState::Refused => "refused",
        }
    }
}

impl fmt::Display for OrderState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A successful outcome of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    Ok,
    Accepted,
    Settled,
    AwaitingFunds,
    Disputed,
    Cancelled,
    Refunded,
    /// Money credited to a consumer (a recharge, a salary, a bank transfer).
    Credited,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Accepted => "accepted",
            Outcome::Settled => "settled",
            Outcome::AwaitingFunds => "awaiting_funds",
            Outcome::Disputed => "disputed",
            Outcome::Cancelled => "cancelled",
            Outcome::Refunded => "refunded",
            Outcome::Credited => "credited",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The reason class of a refusal, in precedence order: where several apply, the first wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RefusalKind {
    Conflict,
    Amount,
    Invalid,
    Unknown,
    State,
    Credit,
    Code,
    Funds,
    /// A payment-gateway rule of the consumer's (SPEC F9) refused it.
    Gateway,
}

impl RefusalKind {
    /// The outcome as scenario files write it: `refused:credit`, …
    pub fn code(self) -> &'static str {
        match self {
            RefusalKind::Conflict => "refused:conflict",
            RefusalKind::Amount => "refused:amount",
            RefusalKind::Invalid => "refused:invalid",
            RefusalKind::Unknown => "refused:unknown",
            RefusalKind::State => "refused:state",
            RefusalKind::Credit => "refused:credit",
            RefusalKind::Code => "refused:code",
            RefusalKind::Funds => "refused:funds",
            RefusalKind::Gateway => "refused:gateway",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RefusalKind::Conflict => "conflict",
            RefusalKind::Amount => "amount",
            RefusalKind::Invalid => "invalid",
            RefusalKind::Unknown => "unknown",
            RefusalKind::State => "state",
            RefusalKind::Credit => "credit",
            RefusalKind::Code => "code",
            RefusalKind::Funds => "funds",
            RefusalKind::Gateway => "gateway",
        }
    }
}

/// A business refusal: a typed reason and a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
#[error("refused:{}: {message}", kind.as_str())]
pub struct Refusal {
    pub kind: RefusalKind,
    pub message: String,
}

impl Refusal {
    pub fn new(kind: RefusalKind, message: impl Into<String>) -> Refusal {
        Refusal {
            kind,
            message: message.into(),
        }
    }
    pub fn conflict(m: impl Into<String>) -> Refusal {
        Refusal::new(RefusalKind::Conflict, m)
    }
    pub fn amount(m: impl Into<String>) -> Refusal {
        Refusal::new(RefusalKind::Amount, m)
    }
    pub fn invalid(m: impl Into<String>) -> Refusal {
        Refusal::new(RefusalKind::Invalid, m)
    }
    pub fn unknown(m: impl Into<String>) -> Refusal {
        Refusal::new(RefusalKind::Unknown, m)
    }
    pub fn state(m: impl Into<String>) -> Refusal {
        Refusal::new(RefusalKind::State, m)
    }
    pub fn credit(m: impl Into<String>) -> Refusal {
        Refusal::new(RefusalKind::Credit, m)
    }
    pub fn code(m: impl Into<String>) -> Refusal {
        Refusal::new(RefusalKind::Code, m)
    }
    pub fn funds(m: impl Into<String>) -> Refusal {
        Refusal::new(RefusalKind::Funds, m)
    }
    pub fn gateway(m: impl Into<String>) -> Refusal {
        Refusal::new(RefusalKind::Gateway, m)
    }
    /// `refused:REASON`, the form scenario files and the API use.
    pub fn code_str(&self) -> String {
        self.kind.code().to_string()
    }
}

/// Which of a consumer's payment-gateway rules (SPEC F9) refused a payment, and why, in words
/// for the reader's display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRefusal {
    pub rule: &'static str,
    pub reason: String,
}

/// The recorded result of a command: what a repeat of the same command returns (I6).
pub type CommandResult = Result<Outcome, Refusal>;

/// The rules' parameters. `topup_threshold` defaults to `wallet_cap`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulesConfig {
    /// The settlement account (wallet) never holds more than this.
    pub wallet_cap: Amount,
    /// After a debit that leaves the wallet below this, it is topped up to the cap.
    pub topup_threshold: Amount,
    /// Orders up to this amount settle at once (F21 direct mode); zero turns it off.
    pub direct_max: Amount,
    /// Pending receipt and code orders expire this long after placement.
    pub order_expiry_secs: u64,
    /// The wrong special code that makes an order disputed (the n-th wrong one).
    pub code_attempts_max: u32,
    /// The authentication center's rules: PIN failures before a lock, challenge lifetime,
    /// refused swipes per minute.
    pub auth: crate::cards::AuthConfig,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            wallet_cap: Amount::from_cents(500_000),
            topup_threshold: Amount::from_cents(500_000),
            direct_max: Amount::ZERO,
            order_expiry_secs: 604_800,
            code_attempts_max: 5,
            auth: crate::cards::AuthConfig::default(),
        }
    }
}

impl RulesConfig {
    /// Checks that the parameters make sense together.
    pub fn validate(&self) -> Result<(), String> {
        if self.wallet_cap.is_negative() || self.wallet_cap.is_zero() {
            return Err(format!(
                "wallet_cap must be positive, got {}",
                self.wallet_cap
            ));
        }
        if self.topup_threshold.is_negative() || self.topup_threshold > self.wallet_cap {
            return Err(format!(
                "topup_threshold must be between 0 and wallet_cap ({}), got {}",
                self.wallet_cap, self.topup_threshold
            ));
        }
        if self.direct_max.is_negative() {
            return Err(format!(
                "direct_max must not be negative, got {}",
                self.direct_max
            ));
        }
        if self.order_expiry_secs == 0 {
            return Err("order_expiry_secs must be positive".into());
        }
        if self.code_attempts_max == 0 {
            return Err("code_attempts_max must be at least 1".into());
        }
        if self.auth.max_pin_failures == 0 {
            return Err("max_pin_failures must be at least 1".into());
        }
        if self.auth.max_counter_jump == 0 {
            return Err("max_counter_jump must be positive".into());
        }
        if self.auth.challenge_ttl_secs == 0 {
            return Err("challenge_ttl_secs must be positive".into());
        }
        Ok(())
    }
}
