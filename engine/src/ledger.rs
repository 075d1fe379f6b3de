//! The pure ledger: account state, the events that change it, and the rules that decide which
//! events a command produces.
//!
//! Architecture invariant: nothing here does I/O, awaits, or reads a clock. Time comes in as an
//! argument and bank answers come in as values, so every rule can be tested deterministically.
//! The actors (`actors.rs`) orchestrate these decisions with the bank and the journal; replay,
//! the view and `verify` apply the same events to rebuild state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::fast_map::{FastMap, FastSet};
use crate::model::{
    CommandResult, GatewayRefusal, OrderState, Outcome, Refusal, Release, RulesConfig, Secs,
};
use crate::money::{Amount, AmountError};

/// An account of the node's double-entry ledger. The sum over all of them is always zero (I2).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AccountRef {
    /// A consumer's settlement account (wallet), capped.
    Wallet(String),
    /// A merchant's balance at the settlement center.
    Merchant(String),
    /// The mirror of money that came from (negative) or went to (positive) a bank account
    /// outside the node: an external clearing account.
    BankClearing(String),
}

impl AccountRef {
    pub fn kind(&self) -> &'static str {
        match self {
            AccountRef::Wallet(_) => "wallet",
            AccountRef::Merchant(_) => "merchant",
            AccountRef::BankClearing(_) => "bank clearing",
        }
    }
}

/// One leg of a balanced movement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posting {
    pub account: AccountRef,
    pub amount: Amount,
}

impl Posting {
    pub fn new(account: AccountRef, amount: Amount) -> Posting {
        Posting { account, amount }
    }
}

/// The id of an operation at a bank; the bank answers a repeated id with its first answer.
pub type BankOpId = String;

/// What happened, as recorded in the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// The rules in force from this point of the journal on.
    Configured(RulesConfig),
    ConsumerOpened {
        consumer: String,
        credit_limit: Amount,
        /// The designated bank account: with a data key its reference (`bk-…`), never the
        /// account itself (I10).
        bank: String,
        bank_op: Option<BankOpId>,
        /// With a data key, the account sealed under it (`seal::seal`); `None` without.
        bank_sealed: Option<Vec<u8>>,
    },
    MerchantOpened {
        merchant: String,
        /// The merchant's bank account: its reference with a data key (I10), as given without.
        bank: Option<String>,
        /// With a data key, the account sealed under it; `None` without.
        bank_sealed: Option<Vec<u8>>,
    },
    /// An order id taken, with its first outcome: accepted (pending), settled (direct mode,
    /// followed by `OrderSettled` in the same entry), or refused for credit or funds.
    OrderPlaced {
        order: String,
        consumer: String,
        merchant: String,
        amount: Amount,
        release: Release,
        result: CommandResult,
        direct: bool,
    },
    OrderSettled {
        order: String,
        consumer: String,
        merchant: String,
        wallet_paid: Amount,
        bank_paid: Amount,
        bank_op: Option<BankOpId>,
    },
    OrderAwaitingFunds {
        order: String,
        consumer: String,
        reason: String,
    },
    WalletToppedUp {
        consumer: String,
        amount: Amount,
        bank_op: BankOpId,
    },
    TopUpRefused {
        consumer: String,
        amount: Amount,
        reason: String,
    },
    CodeRejected {
        order: String,
        consumer: String,
        attempts: u32,
    },
    OrderDisputed {
        order: String,
        consumer: String,
    },
    OrderCancelled {
        order: String,
        consumer: String,
    },
    OrderExpired {
        order: String,
        consumer: String,
    },
    Refunded {
        refund: String,
        order: String,
        consumer: String,
        merchant: String,
        amount: Amount,
        to_wallet: Amount,
        to_bank: Amount,
        bank_op: Option<BankOpId>,
    },
    /// Time passed (a tick); keeps the clock durable even when nothing else happened.
    ClockAdvanced,
    /// A card or reader as it now is (issued, registered, counter accepted, PIN failures,
    /// locked, unlocked, lost): the authentication center's durable state (issue 4). A card is
    /// known by its token and last four digits, never by its full number (I10). Moves no
    /// money.
    Auth(crate::cards::AuthChange),
    /// A payment authorised at a reader (SPEC F18 step 3), recorded with its order id: which
    /// card and reader, and whether the consumer confirmed a one-time delivery address.
    PaymentAuthorised(crate::cards::Authorisation),
    /// A merchant's balance paid out to its bank account: a credit transfer the bank booked
    /// (pain.002 `ACSC`). `payout` is the bank operation's id. Postings: the merchant
    /// −amount, the clearing account of its bank account (`bank`, its reference with a data
    /// key; the clearing account is [`merchant_clearing`]`(bank)`) +amount. (New variants go last: the log's records name variants by position.)
    PayoutMade {
        payout: BankOpId,
        merchant: String,
        bank: String,
        amount: Amount,
    },
    /// A payout the bank rejected: moves nothing; kept with the bank's reason.
    PayoutRefused {
        payout: BankOpId,
        merchant: String,
        amount: Amount,
        reason: String,
    },
    /// Money credited to a consumer (SPEC F8 recharge, F12 salary), under the id `credit`
    /// (idempotent, I6). Postings: the source −amount ([`CreditSource`]), the wallet
    /// +`to_wallet`, the designated bank account's clearing account +`to_bank` (what the cap
    /// left no room for, or all of it for [`CreditTarget::Bank`]). `bank_op` is the bank
    /// operation: the debit of a bank transfer, or the credit of `to_bank`.
    ConsumerCredited {
        credit: String,
        consumer: String,
        source: CreditSource,
        target: CreditTarget,
        amount: Amount,
        to_wallet: Amount,
        to_bank: Amount,
        bank_op: Option<BankOpId>,
    },
    /// A merchant's (an employer's) balance funded from its bank account, under the id
    /// `funding` (idempotent). Postings: the clearing account [`merchant_clearing`]`(bank)`
    /// −amount, the merchant +amount.
    MerchantFunded {
        funding: String,
        merchant: String,
        bank: String,
        amount: Amount,
        bank_op: BankOpId,
    },
    /// A consumer's credit limit set anew (SPEC F10), with the reason. A lower limit refuses
    /// new reservations only: what is reserved stays (I4 holds at the moment of reservation).
    CreditLimitChanged {
        consumer: String,
        limit: Amount,
        reason: String,
    },
    /// A consumer's payment-gateway rules set anew (SPEC F9); `None` removes them.
    GatewayRulesSet {
        consumer: String,
        rules: Option<GatewayRules>,
    },
    /// A payment at a reader that counts against the consumer's daily limit (written with its
    /// placement, only while the consumer has one): `day` is the consumer's local day number.
    GatewaySpent {
        consumer: String,
        order: String,
        day: i64,
        amount: Amount,
    },
    /// Another bank account linked to a consumer (SPEC F5): with a data key its reference,
    /// the account sealed in `bank_sealed` (I10).
    BankLinked {
        consumer: String,
        bank: String,
        bank_sealed: Option<Vec<u8>>,
    },
    /// A linked bank account becomes the designated one (the one top-ups come from and
    /// overflows go to); the one designated before stays linked.
    BankDesignated {
        consumer: String,
        bank: String,
    },
    /// Money moved between two of a consumer's bank accounts through the node (SPEC F5), under
    /// the id `transfer` (idempotent): `from` debited by `debit_op`, `to` credited by
    /// `credit_op`. Postings: the clearing account of `from` −amount, of `to` +amount.
    BankTransferred {
        transfer: String,
        consumer: String,
        from: String,
        to: String,
        amount: Amount,
        debit_op: BankOpId,
        credit_op: BankOpId,
    },
}

/// A consumer's payment-gateway rules (SPEC F9): the conditions under which a payment at a
/// reader may go through. Checked at authorisation (the reader shows which rule refused) and
/// again when the order is placed, in the consumer's actor, so that two payments at once
/// cannot both slip under the daily limit. (Every field is always serialized: the journal and
/// the view encode it with bincode, which has no notion of a skipped field.)
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayRules {
    /// The most one payment may be.
    #[serde(default)]
    pub max_per_payment: Option<Amount>,
    /// The most the payments of one day may add up to.
    #[serde(default)]
    pub max_per_day: Option<Amount>,
    /// Only these merchants, if any are named.
    #[serde(default)]
    pub allowed_merchants: Vec<String>,
    #[serde(default)]
    pub blocked_merchants: Vec<String>,
    /// Only these merchant categories, if any are named.
    #[serde(default)]
    pub allowed_categories: Vec<String>,
    #[serde(default)]
    pub blocked_categories: Vec<String>,
    /// The hours payments may go through, in the consumer's time.
    #[serde(default)]
    pub hours: Option<AllowedHours>,
    /// The consumer's offset from UTC in minutes: the day and the hours are the consumer's.
    #[serde(default)]
    pub utc_offset_minutes: i32,
}

/// A daily window: from `from` up to (not including) `to`, as `HH:MM`. A window whose end is
/// before its start spans midnight (22:00–06:00).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowedHours {
    pub from: String,
    pub to: String,
}

/// The most names a rule's list may hold.
const MAX_RULE_NAMES: usize = 100;

impl GatewayRules {
    /// Checks the rules are well formed: positive limits, bounded lists of names, valid hours
    /// and an offset within ±14 h.
    pub fn validate(&self) -> Result<(), String> {
        for (name, limit) in [
            ("max_per_payment", self.max_per_payment),
            ("max_per_day", self.max_per_day),
        ] {
            if limit.is_some_and(|l| !l.is_positive()) {
                return Err(format!("{name} must be greater than zero"));
            }
        }
        for (name, list) in [
            ("allowed_merchants", &self.allowed_merchants),
            ("blocked_merchants", &self.blocked_merchants),
            ("allowed_categories", &self.allowed_categories),
            ("blocked_categories", &self.blocked_categories),
        ] {
            if list.len() > MAX_RULE_NAMES {
                return Err(format!("{name} holds more than {MAX_RULE_NAMES} names"));
            }
            if let Some(bad) = list.iter().find(|n| {
                n.is_empty() || n.chars().count() > 128 || n.chars().any(char::is_control)
            }) {
                return Err(format!("{name}: {bad:?} is not a name"));
            }
        }
        if let Some(h) = &self.hours {
            let (from, to) = (minute_of_day(&h.from), minute_of_day(&h.to));
            match (from, to) {
                (Some(f), Some(t)) if f != t => {}
                (Some(_), Some(_)) => return Err("hours: from and to must differ".into()),
                _ => return Err("hours: from and to must be HH:MM, 00:00 to 23:59".into()),
            }
        }
        if self.utc_offset_minutes.abs() > 14 * 60 {
            return Err("utc_offset_minutes must be within -840..=840".into());
        }
        Ok(())
    }

    /// The consumer's local day of a moment.
    pub fn day_of(&self, at: Secs) -> i64 {
        self.local_secs(at).div_euclid(86_400)
    }

    fn local_secs(&self, at: Secs) -> i64 {
        i64::try_from(at)
            .unwrap_or(i64::MAX)
            .saturating_add(i64::from(self.utc_offset_minutes) * 60)
    }

    /// Whether a payment of `amount` to `merchant` (of `category`) may go through at `at`,
    /// with `spent_today` already spent today. The first rule that refuses is named.
    pub fn check(
        &self,
        merchant: &str,
        category: &str,
        amount: Amount,
        spent_today: Amount,
        at: Secs,
    ) -> Result<(), GatewayRefusal> {
        let refuse = |rule: &'static str, reason: String| Err(GatewayRefusal { rule, reason });
        if self.blocked_merchants.iter().any(|m| m == merchant)
            || (!self.allowed_merchants.is_empty()
                && !self.allowed_merchants.iter().any(|m| m == merchant))
        {
            return refuse(
                "merchant",
                format!("payments to {merchant} are not allowed"),
            );
        }
        if self.blocked_categories.iter().any(|c| c == category)
            || (!self.allowed_categories.is_empty()
                && !self.allowed_categories.iter().any(|c| c == category))
        {
            return refuse(
                "category",
                format!("payments for {category} are not allowed"),
            );
        }
        if let Some(max) = self.max_per_payment {
            if amount > max {
                return refuse(
                    "max_per_payment",
                    format!("{amount} is above the {max} allowed per payment"),
                );
            }
        }
        if let Some(max) = self.max_per_day {
            if !spent_today
                .checked_add(amount)
                .is_ok_and(|after| after <= max)
            {
                return refuse(
                    "max_per_day",
                    format!("{amount} with the {spent_today} paid today is above the {max} allowed per day"),
                );
            }
        }
        if let Some(h) = &self.hours {
            if let (Some(from), Some(to)) = (minute_of_day(&h.from), minute_of_day(&h.to)) {
                let minute =
                    u32::try_from(self.local_secs(at).rem_euclid(86_400) / 60).unwrap_or(0);
                let inside = if from < to {
                    (from..to).contains(&minute)
                } else {
                    minute >= from || minute < to
                };
                if !inside {
                    return refuse(
                        "hours",
                        format!("payments are allowed from {} to {} only", h.from, h.to),
                    );
                }
            }
        }
        Ok(())
    }
}

/// `HH:MM` as minutes after midnight.
fn minute_of_day(hhmm: &str) -> Option<u32> {
    let (h, m) = hhmm.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// Where money credited to a consumer comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CreditSource {
    /// A prepaid recharge card of an operator's batch (SPEC F8): the card's value was paid to
    /// the operator when the card was sold, so it comes from the batch's clearing account
    /// ([`recharge_clearing`]).
    RechargeCard { batch: String },
    /// An employer's balance at the node (SPEC F12): a salary.
    Employer { employer: String },
    /// The consumer's designated bank account: a deposit by bank transfer (SPEC F8).
    BankTransfer,
    /// Another of the consumer's linked bank accounts (SPEC F5), by stored name.
    LinkedBank { bank: String },
}

impl CreditSource {
    /// What kind of money it is, as statements and the spending analysis name it.
    pub fn kind(&self) -> &'static str {
        match self {
            CreditSource::RechargeCard { .. } => "recharge",
            CreditSource::Employer { .. } => "salary",
            CreditSource::BankTransfer | CreditSource::LinkedBank { .. } => "bank_transfer",
        }
    }

    /// Whether it is money the consumer earned or was given, rather than moved from one of
    /// the consumer's own bank accounts (which, like a top-up, is no income).
    pub fn is_income(&self) -> bool {
        matches!(
            self,
            CreditSource::RechargeCard { .. } | CreditSource::Employer { .. }
        )
    }
}

/// Where a credit goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CreditTarget {
    /// Into the wallet up to the cap; what would exceed it goes to the designated bank account.
    WalletOverflowToBank,
    /// Into the wallet, all of it, or refused if it would take the wallet above the cap.
    WalletOnly,
    /// To the designated bank account, none of it into the wallet.
    Bank,
}

/// What a credit or funding id was first used for: kept for idempotent repeats (I6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CreditRecord {
    Consumer {
        consumer: String,
        source: CreditSource,
        target: CreditTarget,
        amount: Amount,
        to_wallet: Amount,
        to_bank: Amount,
    },
    Merchant {
        merchant: String,
        amount: Amount,
    },
    Transfer {
        consumer: String,
        from: String,
        to: String,
        amount: Amount,
    },
}

impl CreditRecord {
    /// The id and record an event takes, if it is a credit or a funding.
    pub fn of(kind: &EventKind) -> Option<(&str, CreditRecord)> {
        match kind {
            EventKind::ConsumerCredited {
                credit,
                consumer,
                source,
                target,
                amount,
                to_wallet,
                to_bank,
                ..
            } => Some((
                credit,
                CreditRecord::Consumer {
                    consumer: consumer.clone(),
                    source: source.clone(),
                    target: *target,
                    amount: *amount,
                    to_wallet: *to_wallet,
                    to_bank: *to_bank,
                },
            )),
            EventKind::MerchantFunded {
                funding,
                merchant,
                amount,
                ..
            } => Some((
                funding,
                CreditRecord::Merchant {
                    merchant: merchant.clone(),
                    amount: *amount,
                },
            )),
            EventKind::BankTransferred {
                transfer,
                consumer,
                from,
                to,
                amount,
                ..
            } => Some((
                transfer,
                CreditRecord::Transfer {
                    consumer: consumer.clone(),
                    from: from.clone(),
                    to: to.clone(),
                    amount: *amount,
                },
            )),
            _ => None,
        }
    }
}

/// An event and the money it moves. The postings of one event sum to zero (I1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub postings: Vec<Posting>,
}

impl Event {
    pub fn new(kind: EventKind) -> Event {
        Event {
            kind,
            postings: Vec::new(),
        }
    }
    pub fn with_postings(kind: EventKind, postings: Vec<Posting>) -> Event {
        Event { kind, postings }
    }

    /// The consumer whose state this event changes, if any.
    pub fn consumer(&self) -> Option<&str> {
        use EventKind::*;
        match &self.kind {
            ConsumerOpened { consumer, .. }
            | OrderPlaced { consumer, .. }
            | OrderSettled { consumer, .. }
            | OrderAwaitingFunds { consumer, .. }
            | WalletToppedUp { consumer, .. }
            | TopUpRefused { consumer, .. }
            | CodeRejected { consumer, .. }
            | OrderDisputed { consumer, .. }
            | OrderCancelled { consumer, .. }
            | OrderExpired { consumer, .. }
            | Refunded { consumer, .. }
            | ConsumerCredited { consumer, .. }
            | CreditLimitChanged { consumer, .. }
            | GatewayRulesSet { consumer, .. }
            | GatewaySpent { consumer, .. }
            | BankLinked { consumer, .. }
            | BankDesignated { consumer, .. }
            | BankTransferred { consumer, .. } => Some(consumer),
            Configured(_)
            | MerchantOpened { .. }
            | ClockAdvanced
            | Auth(_)
            | PaymentAuthorised(_)
            | PayoutMade { .. }
            | PayoutRefused { .. }
            | MerchantFunded { .. } => None,
        }
    }

    /// The order this event is about, if any.
    pub fn order(&self) -> Option<&str> {
        use EventKind::*;
        match &self.kind {
            OrderPlaced { order, .. }
            | OrderSettled { order, .. }
            | OrderAwaitingFunds { order, .. }
            | CodeRejected { order, .. }
            | OrderDisputed { order, .. }
            | OrderCancelled { order, .. }
            | OrderExpired { order, .. }
            | Refunded { order, .. } => Some(order),
            _ => None,
        }
    }

    /// The bank operations this event records as done (at most two; no allocation: every
    /// journaled command asks).
    pub fn bank_ops(&self) -> impl Iterator<Item = &BankOpId> {
        use EventKind::*;
        let ops: [Option<&BankOpId>; 2] = match &self.kind {
            ConsumerOpened { bank_op, .. }
            | OrderSettled { bank_op, .. }
            | Refunded { bank_op, .. }
            | ConsumerCredited { bank_op, .. } => [bank_op.as_ref(), None],
            WalletToppedUp { bank_op, .. } | MerchantFunded { bank_op, .. } => {
                [Some(bank_op), None]
            }
            PayoutMade { payout, .. } => [Some(payout), None],
            BankTransferred {
                debit_op,
                credit_op,
                ..
            } => [Some(debit_op), Some(credit_op)],
            _ => [None, None],
        };
        ops.into_iter().flatten()
    }

    /// The bank operations this event records, each with what it moved at the bank: negative
    /// for a debit of the account, positive for a credit. From the postings on bank accounts'
    /// clearing accounts (not a recharge batch's, which is no bank account).
    pub fn bank_moves(&self) -> Vec<(&BankOpId, Amount)> {
        if let EventKind::BankTransferred {
            amount,
            debit_op,
            credit_op,
            ..
        } = &self.kind
        {
            return vec![(debit_op, amount.checked_neg()), (credit_op, *amount)];
        }
        let Some(op) = self.bank_ops().next() else {
            return vec![];
        };
        let moved = self
            .postings
            .iter()
            .filter(|p| matches!(p.account, AccountRef::BankClearing(_)))
            .filter(|p| !self.is_recharge_clearing(p))
            .try_fold(Amount::ZERO, |s, p| s.checked_add(p.amount))
            .unwrap_or(Amount::ZERO);
        vec![(op, moved)]
    }

    fn is_recharge_clearing(&self, p: &Posting) -> bool {
        matches!(
            (&p.account, &self.kind),
            (
                AccountRef::BankClearing(b),
                EventKind::ConsumerCredited {
                    source: CreditSource::RechargeCard { batch },
                    ..
                },
            ) if p.amount.is_negative() && *b == recharge_clearing(batch)
        )
    }

    /// Whether a posting of this event is on a clearing account outside the node that no
    /// consumer owns: every clearing posting of an event about no consumer (a merchant's bank
    /// account), and the recharge batch's of a recharge. A consumer's own clearing account
    /// moves with the consumer (in its record); these are kept apart
    /// ([`LedgerState::merchant_clearing`], the view's `g` keys).
    pub fn is_external_clearing(&self, p: &Posting) -> bool {
        if !matches!(p.account, AccountRef::BankClearing(_)) {
            return false;
        }
        self.consumer().is_none() || self.is_recharge_clearing(p)
    }

    /// Sum of the postings; zero for every well-formed event (I1).
    pub fn imbalance(&self) -> Result<Amount, AmountError> {
        self.postings
            .iter()
            .try_fold(Amount::ZERO, |acc, p| acc.checked_add(p.amount))
    }
}

/// The events of one command, written and acknowledged together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The engine's clock when the command ran.
    pub at: Secs,
    pub events: Vec<Event>,
}

impl Entry {
    pub fn new(at: Secs, events: Vec<Event>) -> Entry {
        Entry { at, events }
    }
    pub fn bank_ops(&self) -> impl Iterator<Item = &BankOpId> {
        self.events.iter().flat_map(Event::bank_ops)
    }
}

/// A state the journal should never contain: replay and `verify` report it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("unknown consumer {0:?}")]
    UnknownConsumer(String),
    #[error("unknown merchant {0:?}")]
    UnknownMerchant(String),
    #[error("unknown order {0:?}")]
    UnknownOrder(String),
    #[error("no bank account {0:?} of this consumer")]
    UnknownBank(String),
    #[error("{0:?} opened twice")]
    DuplicateAccount(String),
    #[error("I1 violated: postings of a {kind} event sum to {sum}, not zero")]
    Unbalanced { kind: &'static str, sum: Amount },
    #[error("I3 violated: wallet of {consumer} is {wallet}, outside 0..={cap}")]
    WalletOutOfRange {
        consumer: String,
        wallet: Amount,
        cap: Amount,
    },
    #[error("I4 violated: {consumer} reserved {reserved} above its credit limit {limit}")]
    CreditExceeded {
        consumer: String,
        reserved: Amount,
        limit: Amount,
    },
    #[error("I5 violated: order {order} settled twice")]
    SettledTwice { order: String },
    #[error(
        "I5 violated: refunds of order {order} add up to {refunded}, above its amount {amount}"
    )]
    OverRefunded {
        order: String,
        refunded: Amount,
        amount: Amount,
    },
    #[error("I6 violated: id {0:?} used twice")]
    DuplicateId(String),
    #[error("order {order} cannot go from {from} by {event}")]
    BadTransition {
        order: String,
        from: OrderState,
        event: &'static str,
    },
    #[error("negative reservation for {0}")]
    NegativeReservation(String),
    #[error(transparent)]
    Amount(#[from] AmountError),
}

/// An order in a consumer's virtual account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: String,
    pub merchant: String,
    pub amount: Amount,
    pub release: Release,
    pub placed_at: Secs,
    /// Position among this consumer's orders; ticks work in placement order.
    pub placement: u64,
    pub state: OrderState,
    /// Whether the amount is reserved against the credit limit (not for direct orders).
    pub reserved: bool,
    pub code_attempts: u32,
    pub refunded: Amount,
    /// The first outcome of placing it, which a repeat returns (I6).
    pub first_result: CommandResult,
}

impl Order {
    /// The due time of a time-released order.
    pub fn due_at(&self) -> Option<Secs> {
        match self.release {
            Release::Time { after_secs } => Some(self.placed_at.saturating_add(after_secs)),
            _ => None,
        }
    }
}

/// A recorded refund, kept for idempotent repeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRecord {
    pub order: String,
    pub amount: Amount,
}

/// Everything about one consumer: virtual account, wallet, link to the bank, and orders.
/// Owned by exactly one consumer actor at run time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerState {
    pub id: String,
    pub credit_limit: Amount,
    pub reserved: Amount,
    pub wallet: Amount,
    /// The designated bank account: with a data key its reference (`bk-…`), never the account
    /// itself (I10).
    pub bank: String,
    /// With a data key, the account sealed under it; set by `ConsumerOpened`.
    pub bank_sealed: Option<Vec<u8>>,
    /// The external clearing account mirroring money moved to and from `bank`.
    pub bank_clearing: Amount,
    /// Boxed: a consumer holds a few orders, and a small map's spare slots would each be the
    /// size of a whole order (160 bytes) instead of a pointer. A million consumers' replayed
    /// ledger (verify, the end-of-run checks) is about 300 MB smaller for it.
    pub orders: FastMap<String, Box<Order>>,
    pub next_placement: u64,
    pub refunds: FastMap<String, RefundRecord>,
    /// A top-up requested from the bank and not yet answered. Counts against the headroom
    /// (I3). Never persisted: a crash loses the request, and recovery reconciles with the bank.
    #[serde(skip)]
    pub topup_in_flight: Amount,
    /// The consumer's other bank accounts (SPEC F5), by stored name (the reference with a
    /// data key); the designated one is `bank`.
    pub linked: BTreeMap<String, LinkedBank>,
    /// The payment-gateway rules the consumer set (SPEC F9), if any.
    pub gateway: Option<Box<GatewayRules>>,
    /// What payments at readers spent on the consumer's last day with one (for the daily
    /// limit).
    pub gateway_spent: DaySpend,
}

/// A bank account linked to a consumer besides the designated one (SPEC F5).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkedBank {
    /// With a data key, the account sealed under it.
    pub sealed: Option<Vec<u8>>,
    /// The clearing account mirroring money moved to and from it.
    pub clearing: Amount,
}

/// What was spent on one day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaySpend {
    /// Days since 1970-01-01 in the consumer's time zone.
    pub day: i64,
    pub amount: Amount,
}

/// How a settlement of `amount` is funded: wallet first, then the bank directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Funding {
    pub wallet_part: Amount,
    pub bank_part: Amount,
}

/// What `confirm_receipt` or `enter_code` leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseDecision {
    /// The condition is met: settle the order.
    Settle,
    /// Record these events and answer with this result.
    Record(Vec<Event>, CommandResult),
}

impl ConsumerState {
    pub fn new(id: String, credit_limit: Amount, bank: String) -> ConsumerState {
        ConsumerState {
            id,
            credit_limit,
            reserved: Amount::ZERO,
            wallet: Amount::ZERO,
            bank,
            bank_sealed: None,
            bank_clearing: Amount::ZERO,
            orders: FastMap::default(),
            next_placement: 0,
            refunds: FastMap::default(),
            topup_in_flight: Amount::ZERO,
            linked: BTreeMap::new(),
            gateway: None,
            gateway_spent: DaySpend::default(),
        }
    }

    /// Whether `bank` (a stored name) is one of this consumer's accounts, designated or linked.
    pub fn has_bank(&self, bank: &str) -> bool {
        self.bank == bank || self.linked.contains_key(bank)
    }

    /// The sealed form of one of this consumer's accounts (with a data key).
    pub fn bank_sealed_of(&self, bank: &str) -> Option<&Vec<u8>> {
        if self.bank == bank {
            self.bank_sealed.as_ref()
        } else {
            self.linked.get(bank).and_then(|l| l.sealed.as_ref())
        }
    }

    /// What payments at readers spent on `day`.
    pub fn gateway_spent_on(&self, day: i64) -> Amount {
        if self.gateway_spent.day == day {
            self.gateway_spent.amount
        } else {
            Amount::ZERO
        }
    }

    /// Whether the consumer's gateway rules let a payment of `amount` to `merchant` (of
    /// `category`) through at `now`; and the event that counts it against the daily limit,
    /// if the consumer has one. No rules: everything goes through.
    pub fn decide_gateway(
        &self,
        order: &str,
        merchant: &str,
        category: &str,
        amount: Amount,
        now: Secs,
    ) -> Result<Option<Event>, Refusal> {
        let Some(rules) = &self.gateway else {
            return Ok(None);
        };
        let day = rules.day_of(now);
        rules
            .check(merchant, category, amount, self.gateway_spent_on(day), now)
            .map_err(|g| Refusal::gateway(format!("{}: {}", g.rule, g.reason)))?;
        Ok(rules.max_per_day.map(|_| {
            Event::new(EventKind::GatewaySpent {
                consumer: self.id.clone(),
                order: order.to_string(),
                day,
                amount,
            })
        }))
    }

    /// The orders open now (pending, awaiting funds, disputed), in placement order: what a
    /// consumer record holds and what the consumer sees.
    pub fn open_orders_by_placement(&self) -> Vec<&Order> {
        let mut open: Vec<&Order> = self
            .orders
            .values()
            .map(|o| &**o)
            .filter(|o| o.state.is_open())
            .collect();
        open.sort_by_key(|o| o.placement);
        open
    }

    pub fn available_credit(&self) -> Amount {
        self.credit_limit
            .checked_sub(self.reserved)
            .unwrap_or(Amount::ZERO)
    }

    fn order(&self, id: &str) -> Result<&Order, Refusal> {
        self.orders
            .get(id)
            .map(|o| &**o)
            .ok_or_else(|| Refusal::unknown(format!("no order {id:?}")))
    }

    // ----- decisions (pure) -----

    /// The first step of placing an order that is new to this consumer: is it direct, refused
    /// for credit, or accepted? Direct orders still need funding (see `funding`).
    pub fn decide_place(&self, amount: Amount, cfg: &RulesConfig) -> PlaceDecision {
        if cfg.direct_max.is_positive() && amount <= cfg.direct_max {
            return PlaceDecision::Direct;
        }
        if amount > self.available_credit() {
            return PlaceDecision::Refused(Refusal::credit(format!(
                "{amount} is beyond the available credit {} of {}; choose another means of payment",
                self.available_credit(),
                self.id
            )));
        }
        PlaceDecision::Accept
    }

    /// An `OrderPlaced` event for this consumer.
    #[allow(clippy::too_many_arguments)]
    pub fn placed_event(
        &self,
        order: &str,
        merchant: &str,
        amount: Amount,
        release: &Release,
        result: CommandResult,
        direct: bool,
    ) -> Event {
        Event::new(EventKind::OrderPlaced {
            order: order.to_string(),
            consumer: self.id.clone(),
            merchant: merchant.to_string(),
            amount,
            release: release.clone(),
            result,
            direct,
        })
    }

    /// The wallet pays what it holds, up to the amount; the bank pays the rest.
    pub fn funding(&self, amount: Amount) -> Funding {
        let wallet_part = self.wallet.min(amount);
        let bank_part = amount
            .checked_sub(wallet_part)
            .expect("amounts are bounded");
        Funding {
            wallet_part,
            bank_part,
        }
    }

    /// The balanced settlement event: wallet and bank pay, the merchant receives.
    pub fn settled_event(
        &self,
        order: &str,
        merchant: &str,
        funding: Funding,
        bank_op: Option<BankOpId>,
    ) -> Event {
        let total = funding
            .wallet_part
            .checked_add(funding.bank_part)
            .expect("bounded");
        let mut postings = vec![Posting::new(
            AccountRef::Merchant(merchant.to_string()),
            total,
        )];
        if funding.wallet_part.is_positive() {
            postings.push(Posting::new(
                AccountRef::Wallet(self.id.clone()),
                funding.wallet_part.checked_neg(),
            ));
        }
        if funding.bank_part.is_positive() {
            postings.push(Posting::new(
                AccountRef::BankClearing(self.bank.clone()),
                funding.bank_part.checked_neg(),
            ));
        }
        Event::with_postings(
            EventKind::OrderSettled {
                order: order.to_string(),
                consumer: self.id.clone(),
                merchant: merchant.to_string(),
                wallet_paid: funding.wallet_part,
                bank_paid: funding.bank_part,
                bank_op,
            },
            postings,
        )
    }

    /// How much to ask the bank for, if the wallet is below the threshold: exactly enough to
    /// reach the cap, counting top-ups already in flight.
    pub fn topup_needed(&self, cfg: &RulesConfig) -> Option<Amount> {
        if self.wallet >= cfg.topup_threshold {
            return None;
        }
        let headroom = cfg
            .wallet_cap
            .checked_sub(self.wallet)
            .and_then(|h| h.checked_sub(self.topup_in_flight))
            .ok()?;
        headroom.is_positive().then_some(headroom)
    }

    pub fn topped_up_event(&self, amount: Amount, bank_op: BankOpId) -> Event {
        Event::with_postings(
            EventKind::WalletToppedUp {
                consumer: self.id.clone(),
                amount,
                bank_op,
            },
            vec![
                Posting::new(
                    AccountRef::BankClearing(self.bank.clone()),
                    amount.checked_neg(),
                ),
                Posting::new(AccountRef::Wallet(self.id.clone()), amount),
            ],
        )
    }

    /// `confirm_receipt`: for receipt orders that are pending or disputed.
    pub fn decide_receipt(&self, order: &str, satisfied: bool) -> Result<ReleaseDecision, Refusal> {
        let o = self.order(order)?;
        if o.release != Release::Receipt {
            return Err(Refusal::state(format!(
                "order {order} is released by {}, not by receipt",
                o.release.kind()
            )));
        }
        match o.state {
            OrderState::Pending | OrderState::Disputed if satisfied => Ok(ReleaseDecision::Settle),
            OrderState::Pending => Ok(ReleaseDecision::Record(
                vec![self.simple_event(order, OrderState::Disputed)],
                Ok(Outcome::Disputed),
            )),
            OrderState::Disputed => Ok(ReleaseDecision::Record(vec![], Ok(Outcome::Disputed))),
            s => Err(Refusal::state(format!(
                "order {order} is {s}; receipt can no longer be confirmed"
            ))),
        }
    }

    /// `enter_code`: for code orders that are pending. The n-th wrong code disputes the order.
    pub fn decide_code(
        &self,
        order: &str,
        code: &str,
        cfg: &RulesConfig,
    ) -> Result<ReleaseDecision, Refusal> {
        let o = self.order(order)?;
        let Release::Code(expected) = &o.release else {
            return Err(Refusal::state(format!(
                "order {order} is released by {}, not by code",
                o.release.kind()
            )));
        };
        if o.state != OrderState::Pending {
            return Err(Refusal::state(format!(
                "order {order} is {}; codes are taken only while pending",
                o.state
            )));
        }
        if constant_time_eq(expected.as_bytes(), code.as_bytes()) {
            return Ok(ReleaseDecision::Settle);
        }
        let attempts = o.code_attempts + 1;
        let rejected = Event::new(EventKind::CodeRejected {
            order: order.to_string(),
            consumer: self.id.clone(),
            attempts,
        });
        if attempts >= cfg.code_attempts_max {
            Ok(ReleaseDecision::Record(
                vec![rejected, self.simple_event(order, OrderState::Disputed)],
                Ok(Outcome::Disputed),
            ))
        } else {
            Ok(ReleaseDecision::Record(
                vec![rejected],
                Err(Refusal::code(format!(
                    "wrong code for order {order} ({attempts} of {} attempts used)",
                    cfg.code_attempts_max
                ))),
            ))
        }
    }

    /// `cancel_order`: pending or disputed orders only.
    pub fn decide_cancel(&self, order: &str) -> Result<Event, Refusal> {
        let o = self.order(order)?;
        match o.state {
            OrderState::Pending | OrderState::Disputed => {
                Ok(self.simple_event(order, OrderState::Cancelled))
            }
            s => Err(Refusal::state(format!(
                "order {order} is {s} and cannot be cancelled"
            ))),
        }
    }

    /// Whether a refund of `amount` may be made on `order` (before asking the merchant).
    pub fn check_refund(&self, order: &str, amount: Amount) -> Result<&Order, Refusal> {
        let o = self.order(order)?;
        if o.state != OrderState::Settled {
            return Err(Refusal::state(format!(
                "order {order} is {}; only settled orders are refunded",
                o.state
            )));
        }
        let after = o
            .refunded
            .checked_add(amount)
            .map_err(|e| Refusal::amount(e.to_string()))?;
        if after > o.amount {
            return Err(Refusal::state(format!(
                "refunds of order {order} would reach {after}, above its amount {}",
                o.amount
            )));
        }
        Ok(o)
    }

    /// The refund's split: into the wallet up to the cap, the overflow to the bank account.
    pub fn refund_split(&self, amount: Amount, cfg: &RulesConfig) -> (Amount, Amount) {
        let headroom = cfg
            .wallet_cap
            .checked_sub(self.wallet)
            .and_then(|h| h.checked_sub(self.topup_in_flight))
            .unwrap_or(Amount::ZERO);
        let headroom = if headroom.is_negative() {
            Amount::ZERO
        } else {
            headroom
        };
        let to_wallet = amount.min(headroom);
        (to_wallet, amount.checked_sub(to_wallet).expect("bounded"))
    }

    /// How a credit of `amount` splits between the wallet and the designated bank account
    /// (wallet part, bank part), or why it is refused. A bank transfer goes into the wallet
    /// only: what the cap has no room for is refused, as sending it back would be no transfer.
    pub fn credit_split(
        &self,
        source: &CreditSource,
        target: CreditTarget,
        amount: Amount,
        cfg: &RulesConfig,
    ) -> Result<(Amount, Amount), Refusal> {
        match (source, target) {
            (CreditSource::BankTransfer | CreditSource::LinkedBank { .. }, CreditTarget::Bank) => {
                Err(Refusal::invalid(
                    "a bank transfer goes into the wallet; between bank accounts it is a transfer",
                ))
            }
            (CreditSource::LinkedBank { bank }, _) if !self.linked.contains_key(bank) => {
                Err(Refusal::unknown(format!(
                    "{bank} is not a linked bank account of {}",
                    self.id
                )))
            }
            (_, CreditTarget::Bank) => Ok((Amount::ZERO, amount)),
            (CreditSource::BankTransfer | CreditSource::LinkedBank { .. }, _)
            | (_, CreditTarget::WalletOnly) => {
                let (room, over) = self.refund_split(amount, cfg);
                if over.is_positive() {
                    Err(Refusal::amount(format!(
                        "{amount} would take the wallet of {} above its cap {}: it has room for {room}",
                        self.id, cfg.wallet_cap
                    )))
                } else {
                    Ok((amount, Amount::ZERO))
                }
            }
            (_, CreditTarget::WalletOverflowToBank) => Ok(self.refund_split(amount, cfg)),
        }
    }

    /// The balanced credit event: the source pays, the wallet and the bank account receive.
    #[allow(clippy::too_many_arguments)]
    pub fn credited_event(
        &self,
        credit: &str,
        source: &CreditSource,
        target: CreditTarget,
        amount: Amount,
        to_wallet: Amount,
        to_bank: Amount,
        bank_op: Option<BankOpId>,
    ) -> Event {
        let from = match source {
            CreditSource::RechargeCard { batch } => {
                AccountRef::BankClearing(recharge_clearing(batch))
            }
            CreditSource::Employer { employer } => AccountRef::Merchant(employer.clone()),
            CreditSource::BankTransfer => AccountRef::BankClearing(self.bank.clone()),
            CreditSource::LinkedBank { bank } => AccountRef::BankClearing(bank.clone()),
        };
        let mut postings = vec![Posting::new(from, amount.checked_neg())];
        if to_wallet.is_positive() {
            postings.push(Posting::new(AccountRef::Wallet(self.id.clone()), to_wallet));
        }
        if to_bank.is_positive() {
            postings.push(Posting::new(
                AccountRef::BankClearing(self.bank.clone()),
                to_bank,
            ));
        }
        Event::with_postings(
            EventKind::ConsumerCredited {
                credit: credit.to_string(),
                consumer: self.id.clone(),
                source: source.clone(),
                target,
                amount,
                to_wallet,
                to_bank,
                bank_op,
            },
            postings,
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub fn refunded_event(
        &self,
        refund: &str,
        order: &Order,
        amount: Amount,
        to_wallet: Amount,
        to_bank: Amount,
        bank_op: Option<BankOpId>,
    ) -> Event {
        let mut postings = vec![Posting::new(
            AccountRef::Merchant(order.merchant.clone()),
            amount.checked_neg(),
        )];
        if to_wallet.is_positive() {
            postings.push(Posting::new(AccountRef::Wallet(self.id.clone()), to_wallet));
        }
        if to_bank.is_positive() {
            postings.push(Posting::new(
                AccountRef::BankClearing(self.bank.clone()),
                to_bank,
            ));
        }
        Event::with_postings(
            EventKind::Refunded {
                refund: refund.to_string(),
                order: order.id.clone(),
                consumer: self.id.clone(),
                merchant: order.merchant.clone(),
                amount,
                to_wallet,
                to_bank,
                bank_op,
            },
            postings,
        )
    }

    /// Orders waiting for funds, in placement order.
    pub fn awaiting_funds(&self) -> Vec<String> {
        self.orders_where(
            |o| o.state == OrderState::AwaitingFunds,
            |o| (0, o.placement),
        )
    }

    /// Pending time orders due at `now`, by due time then placement.
    pub fn time_due(&self, now: Secs) -> Vec<String> {
        self.orders_where(
            |o| o.state == OrderState::Pending && o.due_at().is_some_and(|d| d <= now),
            |o| (o.due_at().unwrap_or(0), o.placement),
        )
    }

    /// Pending receipt and code orders whose expiry has come at `now`, in placement order.
    pub fn expiring(&self, now: Secs, cfg: &RulesConfig) -> Vec<String> {
        self.orders_where(
            |o| {
                o.state == OrderState::Pending
                    && o.due_at().is_none()
                    && o.placed_at.saturating_add(cfg.order_expiry_secs) <= now
            },
            |o| (0, o.placement),
        )
    }

    /// Whether a tick at `now` could change anything for this consumer.
    pub fn has_time_work(&self, now: Secs, cfg: &RulesConfig) -> bool {
        self.next_time_work(cfg).is_some_and(|t| t <= now)
    }

    /// The earliest time a tick could change anything for this consumer: `Some(0)` while an
    /// order awaits funds (every tick retries it), the due time of a time order, the expiry of
    /// a pending receipt or code order; `None` if no tick ever could.
    pub fn next_time_work(&self, cfg: &RulesConfig) -> Option<Secs> {
        next_time_work(self.orders.values().map(|o| &**o), cfg)
    }

    fn orders_where(
        &self,
        keep: impl Fn(&Order) -> bool,
        key: impl Fn(&Order) -> (Secs, u64),
    ) -> Vec<String> {
        let mut v: Vec<&Order> = self
            .orders
            .values()
            .map(|o| &**o)
            .filter(|o| keep(o))
            .collect();
        v.sort_by_key(|o| key(o));
        v.into_iter().map(|o| o.id.clone()).collect()
    }

    /// An event that only changes an order's state.
    pub fn simple_event(&self, order: &str, to: OrderState) -> Event {
        let (order, consumer) = (order.to_string(), self.id.clone());
        Event::new(match to {
            OrderState::Disputed => EventKind::OrderDisputed { order, consumer },
            OrderState::Cancelled => EventKind::OrderCancelled { order, consumer },
            OrderState::Expired => EventKind::OrderExpired { order, consumer },
            OrderState::AwaitingFunds => EventKind::OrderAwaitingFunds {
                order,
                consumer,
                reason: String::new(),
            },
            other => unreachable!("no simple event leads to {other}"),
        })
    }

    // ----- applying events -----

    /// Applies an event about this consumer. Money comes only from the postings, so the same
    /// code serves live actors, replay and verification.
    pub fn apply(&mut self, ev: &Event, at: Secs) -> Result<(), LedgerError> {
        for p in ev.postings.iter().filter(|p| !ev.is_external_clearing(p)) {
            match &p.account {
                AccountRef::Wallet(c) if *c == self.id => {
                    self.wallet = self.wallet.checked_add(p.amount)?;
                }
                AccountRef::BankClearing(b) if *b == self.bank => {
                    self.bank_clearing = self.bank_clearing.checked_add(p.amount)?;
                }
                AccountRef::BankClearing(b) if self.linked.contains_key(b) => {
                    if let Some(l) = self.linked.get_mut(b) {
                        l.clearing = l.clearing.checked_add(p.amount)?;
                    }
                }
                _ => {}
            }
        }
        use EventKind::*;
        match &ev.kind {
            OrderPlaced {
                order,
                merchant,
                amount,
                release,
                result,
                direct,
                ..
            } => {
                if self.orders.contains_key(order) {
                    return Err(LedgerError::DuplicateId(order.clone()));
                }
                let (state, reserved) = match result {
                    Ok(Outcome::Accepted) => (OrderState::Pending, true),
                    // Direct orders are followed by OrderSettled in the same entry.
                    Ok(_) if *direct => (OrderState::Pending, false),
                    _ => (OrderState::Refused, false),
                };
                if reserved {
                    let after = self.reserved.checked_add(*amount)?;
                    if after > self.credit_limit {
                        return Err(LedgerError::CreditExceeded {
                            consumer: self.id.clone(),
                            reserved: after,
                            limit: self.credit_limit,
                        });
                    }
                    self.reserved = after;
                }
                self.orders.insert(
                    order.clone(),
                    Box::new(Order {
                        id: order.clone(),
                        merchant: merchant.clone(),
                        amount: *amount,
                        release: release.clone(),
                        placed_at: at,
                        placement: self.next_placement,
                        state,
                        reserved,
                        code_attempts: 0,
                        refunded: Amount::ZERO,
                        first_result: result.clone(),
                    }),
                );
                self.next_placement += 1;
            }
            OrderSettled { order, .. } => {
                let o = self.order_mut(order)?;
                if o.state == OrderState::Settled {
                    return Err(LedgerError::SettledTwice {
                        order: order.clone(),
                    });
                }
                expect_state(
                    o,
                    &[
                        OrderState::Pending,
                        OrderState::Disputed,
                        OrderState::AwaitingFunds,
                    ],
                    "settlement",
                )?;
                o.state = OrderState::Settled;
                let release = if o.reserved { o.amount } else { Amount::ZERO };
                o.reserved = false;
                self.unreserve(release)?;
            }
            OrderAwaitingFunds { order, .. } => {
                let o = self.order_mut(order)?;
                expect_state(
                    o,
                    &[OrderState::Pending, OrderState::Disputed],
                    "awaiting funds",
                )?;
                o.state = OrderState::AwaitingFunds;
            }
            CodeRejected {
                order, attempts, ..
            } => {
                let o = self.order_mut(order)?;
                expect_state(o, &[OrderState::Pending], "a rejected code")?;
                o.code_attempts = *attempts;
            }
            OrderDisputed { order, .. } => {
                let o = self.order_mut(order)?;
                expect_state(o, &[OrderState::Pending], "dispute")?;
                o.state = OrderState::Disputed;
            }
            OrderCancelled { order, .. } | OrderExpired { order, .. } => {
                let to = if matches!(ev.kind, OrderCancelled { .. }) {
                    OrderState::Cancelled
                } else {
                    OrderState::Expired
                };
                let o = self.order_mut(order)?;
                expect_state(
                    o,
                    &[OrderState::Pending, OrderState::Disputed],
                    "cancellation or expiry",
                )?;
                o.state = to;
                let release = if o.reserved { o.amount } else { Amount::ZERO };
                o.reserved = false;
                self.unreserve(release)?;
            }
            Refunded {
                refund,
                order,
                amount,
                ..
            } => {
                if self.refunds.contains_key(refund) {
                    return Err(LedgerError::DuplicateId(refund.clone()));
                }
                let o = self.order_mut(order)?;
                expect_state(o, &[OrderState::Settled], "refund")?;
                let refunded = o.refunded.checked_add(*amount)?;
                if refunded > o.amount {
                    return Err(LedgerError::OverRefunded {
                        order: order.clone(),
                        refunded,
                        amount: o.amount,
                    });
                }
                o.refunded = refunded;
                self.refunds.insert(
                    refund.clone(),
                    RefundRecord {
                        order: order.clone(),
                        amount: *amount,
                    },
                );
            }
            ConsumerOpened { bank_sealed, .. } => self.bank_sealed = bank_sealed.clone(),
            CreditLimitChanged { limit, .. } => {
                if limit.is_negative() {
                    return Err(LedgerError::Amount(AmountError::NotPositive(*limit)));
                }
                self.credit_limit = *limit;
            }
            GatewayRulesSet { rules, .. } => self.gateway = rules.clone().map(Box::new),
            GatewaySpent { day, amount, .. } => {
                let before = self.gateway_spent_on(*day);
                self.gateway_spent = DaySpend {
                    day: *day,
                    amount: before.checked_add(*amount)?,
                };
            }
            BankLinked {
                bank, bank_sealed, ..
            } => {
                if self.has_bank(bank) {
                    return Err(LedgerError::DuplicateAccount(bank.clone()));
                }
                self.linked.insert(
                    bank.clone(),
                    LinkedBank {
                        sealed: bank_sealed.clone(),
                        clearing: Amount::ZERO,
                    },
                );
            }
            BankDesignated { bank, .. } => {
                let Some(new) = self.linked.remove(bank) else {
                    return Err(LedgerError::UnknownBank(bank.clone()));
                };
                let old = LinkedBank {
                    sealed: self.bank_sealed.take(),
                    clearing: self.bank_clearing,
                };
                self.linked.insert(std::mem::take(&mut self.bank), old);
                self.bank = bank.clone();
                self.bank_sealed = new.sealed;
                self.bank_clearing = new.clearing;
            }
            BankTransferred { from, to, .. } => {
                if !self.has_bank(from) || !self.has_bank(to) {
                    return Err(LedgerError::UnknownBank(format!("{from} or {to}")));
                }
            }
            WalletToppedUp { .. } | TopUpRefused { .. } | ConsumerCredited { .. } => {}
            Configured(_)
            | MerchantOpened { .. }
            | ClockAdvanced
            | Auth(_)
            | PaymentAuthorised(_)
            | PayoutMade { .. }
            | PayoutRefused { .. }
            | MerchantFunded { .. } => {}
        }
        Ok(())
    }

    fn order_mut(&mut self, id: &str) -> Result<&mut Order, LedgerError> {
        self.orders
            .get_mut(id)
            .map(|o| &mut **o)
            .ok_or_else(|| LedgerError::UnknownOrder(id.to_string()))
    }

    fn unreserve(&mut self, amount: Amount) -> Result<(), LedgerError> {
        self.reserved = self.reserved.checked_sub(amount)?;
        if self.reserved.is_negative() {
            return Err(LedgerError::NegativeReservation(self.id.clone()));
        }
        Ok(())
    }

    /// I3 for this wallet.
    pub fn check_wallet(&self, cfg: &RulesConfig) -> Result<(), LedgerError> {
        let with_flight = self.wallet.checked_add(self.topup_in_flight)?;
        if self.wallet.is_negative() || with_flight > cfg.wallet_cap {
            return Err(LedgerError::WalletOutOfRange {
                consumer: self.id.clone(),
                wallet: self.wallet,
                cap: cfg.wallet_cap,
            });
        }
        Ok(())
    }
}

fn expect_state(o: &Order, allowed: &[OrderState], event: &'static str) -> Result<(), LedgerError> {
    if allowed.contains(&o.state) {
        Ok(())
    } else {
        Err(LedgerError::BadTransition {
            order: o.id.clone(),
            from: o.state,
            event,
        })
    }
}

/// Compares secrets without an early exit, so timing does not reveal a matching prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The first decision of a placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlaceDecision {
    Accept,
    Direct,
    Refused(Refusal),
}

/// A merchant's account at the settlement center. Owned by one merchant actor at run time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerchantState {
    pub id: String,
    /// The merchant's bank account (its reference with a data key).
    pub bank: Option<String>,
    /// With a data key, the account sealed under it.
    pub bank_sealed: Option<Vec<u8>>,
    pub balance: Amount,
}

impl MerchantState {
    pub fn apply_postings(&mut self, postings: &[Posting]) -> Result<(), LedgerError> {
        for p in postings {
            if matches!(&p.account, AccountRef::Merchant(m) if *m == self.id) {
                self.balance = self.balance.checked_add(p.amount)?;
            }
        }
        Ok(())
    }
}

/// [`ConsumerState::next_time_work`] over some orders (those of one consumer).
pub fn next_time_work<'a>(
    orders: impl Iterator<Item = &'a Order>,
    cfg: &RulesConfig,
) -> Option<Secs> {
    orders
        .filter_map(|o| match o.state {
            OrderState::AwaitingFunds => Some(0),
            OrderState::Pending => Some(
                o.due_at()
                    .unwrap_or_else(|| o.placed_at.saturating_add(cfg.order_expiry_secs)),
            ),
            _ => None,
        })
        .min()
}

/// The whole ledger in one value: what replay, the view's whole-ledger read and `verify` work
/// on. At run time the same state is split across the actors and the view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LedgerState {
    pub config: RulesConfig,
    pub clock: Secs,
    /// Boxed: a B-tree node holds eleven entries and is seldom full, and each spare slot
    /// would be a whole 312-byte account; a million consumers' replay is about 100 MB smaller.
    pub consumers: BTreeMap<String, Box<ConsumerState>>,
    pub merchants: BTreeMap<String, MerchantState>,
    /// The order ids placed so far (order ids are one name space), for I6's check.
    pub order_ids: IdSet,
    /// The refund ids used so far (refund ids are another name space).
    pub refund_ids: IdSet,
    /// bank account → consumer it is designated for.
    pub bank_owner: FastMap<String, String>,
    pub entries: u64,
    /// Cards and readers (the authentication center's durable state).
    pub auth: crate::cards::AuthState,
    /// Payments authorised at readers, by order id.
    pub authorisations: BTreeMap<String, crate::cards::Authorisation>,
    /// The clearing accounts outside the node that no consumer owns, by name: merchants' bank
    /// accounts ([`merchant_clearing`], payouts and fundings) and recharge batches
    /// ([`recharge_clearing`]). The view keeps them under its `g` keys.
    pub merchant_clearing: BTreeMap<String, Amount>,
    /// Credit and funding ids with what they were first used for (I6): the view's `w` keys.
    pub credits: BTreeMap<String, CreditRecord>,
}

/// The ids of one name space that a ledger has seen (orders, or refunds), for I6's check that
/// an id is used once: their 64-bit hashes, about ten bytes an id instead of the id and its
/// owner's name (a replay of two million orders is some 150 MB smaller for it). A hash seen
/// before only says "maybe": the caller confirms it against the consumers themselves, so a
/// collision costs a scan, never a false refusal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdSet(FastSet<u64>);

impl IdSet {
    fn hash(id: &str) -> u64 {
        use std::hash::{Hash, Hasher};
        // std's SipHash with fixed keys: deterministic within a build, so two ledgers built
        // from the same entries compare equal. The set is never stored, only rebuilt.
        let mut h = std::hash::DefaultHasher::new();
        id.hash(&mut h);
        h.finish()
    }

    /// Adds `id`; `false` when its hash was there already (the id may have been seen).
    pub fn insert(&mut self, id: &str) -> bool {
        self.0.insert(IdSet::hash(id))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One item of a whole ledger, for a reader that goes through it instead of holding it (the
/// simulator's digest of a million consumers' state): a consumer's own figures, each order
/// and refund with the consumer that holds it, each merchant, each credit record.
/// [`LedgerState::visit`] visits a replay's, `StateView::visit_ledger` the account-state
/// view's, the same items either way.
#[derive(Debug, Clone, Copy)]
pub enum LedgerItem<'a> {
    /// A consumer's figures; its orders and refunds come as items of their own.
    Consumer(&'a ConsumerState),
    Order {
        consumer: &'a str,
        order: &'a Order,
    },
    Refund {
        consumer: &'a str,
        id: &'a str,
        refund: &'a RefundRecord,
    },
    Merchant {
        id: &'a str,
        merchant: &'a MerchantState,
    },
    Credit {
        id: &'a str,
        record: &'a CreditRecord,
    },
}

impl LedgerState {
    /// Every consumer (each followed by its orders and refunds), every merchant and every
    /// credit record, as [`LedgerItem`]s.
    pub fn visit(&self, mut f: impl FnMut(LedgerItem<'_>)) {
        for c in self.consumers.values() {
            f(LedgerItem::Consumer(c));
            for order in c.orders.values() {
                f(LedgerItem::Order {
                    consumer: &c.id,
                    order,
                });
            }
            for (id, refund) in &c.refunds {
                f(LedgerItem::Refund {
                    consumer: &c.id,
                    id,
                    refund,
                });
            }
        }
        for (id, merchant) in &self.merchants {
            f(LedgerItem::Merchant { id, merchant });
        }
        for (id, record) in &self.credits {
            f(LedgerItem::Credit { id, record });
        }
    }

    /// The consumer holding order `id`, if any (a scan of every consumer: for tests and tools,
    /// not the hot path).
    pub fn owner_of_order(&self, id: &str) -> Option<&str> {
        self.consumers
            .values()
            .find(|c| c.orders.contains_key(id))
            .map(|c| c.id.as_str())
    }

    pub fn new(config: RulesConfig) -> LedgerState {
        LedgerState {
            auth: crate::cards::AuthState::new(config.auth.clone()),
            config,
            ..Default::default()
        }
    }

    /// Applies one entry, checking I1 and the per-account invariants as it goes.
    pub fn apply_entry(&mut self, entry: &Entry) -> Result<(), LedgerError> {
        self.clock = self.clock.max(entry.at);
        for ev in &entry.events {
            self.apply_event(ev, entry.at)?;
        }
        self.entries += 1;
        Ok(())
    }

    fn apply_event(&mut self, ev: &Event, at: Secs) -> Result<(), LedgerError> {
        let sum = ev.imbalance()?;
        if !sum.is_zero() {
            return Err(LedgerError::Unbalanced {
                kind: event_name(&ev.kind),
                sum,
            });
        }
        match &ev.kind {
            EventKind::Configured(cfg) => {
                self.config = cfg.clone();
                self.auth.config = cfg.auth.clone();
            }
            EventKind::Auth(change) => self.auth.apply(change),
            EventKind::PaymentAuthorised(a) => {
                self.authorisations.insert(a.order_id.clone(), a.clone());
            }
            EventKind::ConsumerOpened {
                consumer,
                credit_limit,
                bank,
                ..
            } => {
                if self.consumers.contains_key(consumer) || self.bank_owner.contains_key(bank) {
                    return Err(LedgerError::DuplicateAccount(consumer.clone()));
                }
                self.consumers.insert(
                    consumer.clone(),
                    Box::new(ConsumerState::new(
                        consumer.clone(),
                        *credit_limit,
                        bank.clone(),
                    )),
                );
                self.bank_owner.insert(bank.clone(), consumer.clone());
            }
            EventKind::MerchantOpened {
                merchant,
                bank,
                bank_sealed,
            } => {
                if self.merchants.contains_key(merchant) {
                    return Err(LedgerError::DuplicateAccount(merchant.clone()));
                }
                self.merchants.insert(
                    merchant.clone(),
                    MerchantState {
                        id: merchant.clone(),
                        bank: bank.clone(),
                        bank_sealed: bank_sealed.clone(),
                        balance: Amount::ZERO,
                    },
                );
            }
            _ => {}
        }
        if let Some(c) = ev.consumer() {
            // I6: an id is used once, whoever used it. The sets hold hashes: a hash seen
            // before is confirmed against the consumers' own orders and refunds.
            let reused = match &ev.kind {
                EventKind::OrderPlaced { order, .. } => (!self.order_ids.insert(order)
                    && self
                        .consumers
                        .values()
                        .any(|c| c.orders.contains_key(order)))
                .then(|| order.clone()),
                EventKind::Refunded { refund, .. } => (!self.refund_ids.insert(refund)
                    && self
                        .consumers
                        .values()
                        .any(|c| c.refunds.contains_key(refund)))
                .then(|| refund.clone()),
                _ => None,
            };
            if let Some(id) = reused {
                return Err(LedgerError::DuplicateId(id));
            }
            let consumer = self
                .consumers
                .get_mut(c)
                .ok_or_else(|| LedgerError::UnknownConsumer(c.to_string()))?;
            consumer.apply(ev, at)?;
            consumer.check_wallet(&self.config)?;
            if let EventKind::BankLinked { bank, .. } = &ev.kind {
                if self
                    .bank_owner
                    .insert(bank.clone(), c.to_string())
                    .is_some()
                {
                    return Err(LedgerError::DuplicateAccount(bank.clone()));
                }
            }
        }
        if let Some((id, record)) = CreditRecord::of(&ev.kind) {
            if let CreditRecord::Merchant { merchant, .. } = &record {
                if !self.merchants.contains_key(merchant) {
                    return Err(LedgerError::UnknownMerchant(merchant.clone()));
                }
            }
            if self.credits.insert(id.to_string(), record).is_some() {
                return Err(LedgerError::DuplicateId(id.to_string()));
            }
        }
        for p in &ev.postings {
            match &p.account {
                AccountRef::Merchant(m) => {
                    let merchant = self
                        .merchants
                        .get_mut(m)
                        .ok_or_else(|| LedgerError::UnknownMerchant(m.clone()))?;
                    merchant.balance = merchant.balance.checked_add(p.amount)?;
                }
                AccountRef::Wallet(w) if !self.consumers.contains_key(w) => {
                    return Err(LedgerError::UnknownConsumer(w.clone()));
                }
                // A consumer's clearing account moves with the consumer (above); any other is
                // a merchant's bank account's, or a recharge batch's.
                AccountRef::BankClearing(b) if ev.is_external_clearing(p) => {
                    let c = self
                        .merchant_clearing
                        .entry(b.clone())
                        .or_insert(Amount::ZERO);
                    *c = c.checked_add(p.amount)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Sum of every balance, clearing accounts included: zero by I2.
    pub fn total(&self) -> Result<Amount, AmountError> {
        let mut sum = Amount::ZERO;
        for c in self.consumers.values() {
            sum = sum.checked_add(c.wallet)?.checked_add(c.bank_clearing)?;
            for l in c.linked.values() {
                sum = sum.checked_add(l.clearing)?;
            }
        }
        for m in self.merchants.values() {
            sum = sum.checked_add(m.balance)?;
        }
        for c in self.merchant_clearing.values() {
            sum = sum.checked_add(*c)?;
        }
        Ok(sum)
    }
}

/// A short name of an event kind, for messages.
pub fn event_name(kind: &EventKind) -> &'static str {
    use EventKind::*;
    match kind {
        Configured(_) => "Configured",
        ConsumerOpened { .. } => "ConsumerOpened",
        MerchantOpened { .. } => "MerchantOpened",
        OrderPlaced { .. } => "OrderPlaced",
        OrderSettled { .. } => "OrderSettled",
        OrderAwaitingFunds { .. } => "OrderAwaitingFunds",
        WalletToppedUp { .. } => "WalletToppedUp",
        TopUpRefused { .. } => "TopUpRefused",
        CodeRejected { .. } => "CodeRejected",
        OrderDisputed { .. } => "OrderDisputed",
        OrderCancelled { .. } => "OrderCancelled",
        OrderExpired { .. } => "OrderExpired",
        Refunded { .. } => "Refunded",
        ClockAdvanced => "ClockAdvanced",
        Auth(_) => "Auth",
        PaymentAuthorised(_) => "PaymentAuthorised",
        PayoutMade { .. } => "PayoutMade",
        PayoutRefused { .. } => "PayoutRefused",
        ConsumerCredited { .. } => "ConsumerCredited",
        MerchantFunded { .. } => "MerchantFunded",
        CreditLimitChanged { .. } => "CreditLimitChanged",
        GatewayRulesSet { .. } => "GatewayRulesSet",
        GatewaySpent { .. } => "GatewaySpent",
        BankLinked { .. } => "BankLinked",
        BankDesignated { .. } => "BankDesignated",
        BankTransferred { .. } => "BankTransferred",
    }
}

/// A payout of `amount` from `merchant` to its bank account `bank` (its reference with a data
/// key), done by the bank as operation `payout`.
pub fn payout_made_event(payout: &str, merchant: &str, bank: &str, amount: Amount) -> Event {
    Event {
        kind: EventKind::PayoutMade {
            payout: payout.to_string(),
            merchant: merchant.to_string(),
            bank: bank.to_string(),
            amount,
        },
        postings: vec![
            Posting::new(
                AccountRef::Merchant(merchant.to_string()),
                amount.checked_neg(),
            ),
            Posting::new(AccountRef::BankClearing(merchant_clearing(bank)), amount),
        ],
    }
}

/// The clearing account of a merchant's bank account: named apart from consumers' clearing
/// accounts, so that a bank account that is both a consumer's and a merchant's has one
/// clearing account for each.
pub fn merchant_clearing(bank: &str) -> String {
    [MERCHANT_CLEARING_PREFIX, bank].concat()
}

/// The bank account (its stored name) of a merchant's clearing account; `None` for a clearing
/// account that is no bank account's (a recharge batch's).
pub fn merchant_clearing_bank(clearing: &str) -> Option<&str> {
    clearing.strip_prefix(MERCHANT_CLEARING_PREFIX)
}

const MERCHANT_CLEARING_PREFIX: &str = "merchant:";

/// The clearing account of a batch of prepaid recharge cards: what the operator was paid for
/// the batch's cards, owed to whoever redeems them.
pub fn recharge_clearing(batch: &str) -> String {
    format!("recharge:{batch}")
}

/// A funding of `merchant`'s balance from its bank account `bank` (its reference with a data
/// key), done by the bank as operation `bank_op`.
pub fn merchant_funded_event(
    funding: &str,
    merchant: &str,
    bank: &str,
    amount: Amount,
    bank_op: &str,
) -> Event {
    Event::with_postings(
        EventKind::MerchantFunded {
            funding: funding.to_string(),
            merchant: merchant.to_string(),
            bank: bank.to_string(),
            amount,
            bank_op: bank_op.to_string(),
        },
        vec![
            Posting::new(
                AccountRef::BankClearing(merchant_clearing(bank)),
                amount.checked_neg(),
            ),
            Posting::new(AccountRef::Merchant(merchant.to_string()), amount),
        ],
    )
}

/// Opening a consumer: the wallet is filled from the designated bank account.
pub fn consumer_opened_event(
    consumer: &str,
    credit_limit: Amount,
    bank: &str,
    wallet: Amount,
    bank_op: Option<BankOpId>,
) -> Event {
    sealed_consumer_opened_event(consumer, credit_limit, bank, wallet, bank_op, None)
}

/// [`consumer_opened_event`] with the designated account sealed (`bank` is then its
/// reference).
pub fn sealed_consumer_opened_event(
    consumer: &str,
    credit_limit: Amount,
    bank: &str,
    wallet: Amount,
    bank_op: Option<BankOpId>,
    bank_sealed: Option<Vec<u8>>,
) -> Event {
    let postings = if wallet.is_positive() {
        vec![
            Posting::new(
                AccountRef::BankClearing(bank.to_string()),
                wallet.checked_neg(),
            ),
            Posting::new(AccountRef::Wallet(consumer.to_string()), wallet),
        ]
    } else {
        vec![]
    };
    Event::with_postings(
        EventKind::ConsumerOpened {
            consumer: consumer.to_string(),
            credit_limit,
            bank: bank.to_string(),
            bank_op,
            bank_sealed,
        },
        postings,
    )
}

#[cfg(test)]
mod tests;
