//! The engine's typed feed: what happened to orders, wallets and payouts, in journal order, for
//! followers outside the engine (the node's outbox). A follower keeps its own cursor (a record
//! sequence number) and asks for what came after it ([`crate::Engine::feed_after`]); it never
//! sees the ledger's events, so the ledger can change its encoding without its followers
//! changing with it.
//!
//! Every event keeps its position in its journal entry ([`FeedEvent::index`]) and every entry
//! its position in its record, so a follower can derive ids that are the same each time it
//! reads the same record (after a crash, say).

use crate::cards::Authorisation;
use crate::ledger::{CreditSource, Entry, EventKind};
use crate::model::{CommandResult, Secs};
use crate::money::Amount;

/// What a follower reads in one call: the records with entries, and how far it read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Feed {
    /// The records read that hold entries, in order.
    pub records: Vec<FeedRecord>,
    /// The last record read (with or without entries): the follower's next cursor. Records
    /// without entries (the upper layer's own records, the simulated bank's) are read past but
    /// not handed out.
    pub through: u64,
}

/// One journal record's worth of the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedRecord {
    /// The record's sequence number: the follower's next cursor.
    pub seq: u64,
    /// The record's entries, in order; an entry with nothing for the feed has no events.
    pub entries: Vec<FeedEntry>,
}

/// One command's worth of the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEntry {
    /// When it happened (the engine's clock, unix seconds).
    pub at: Secs,
    pub events: Vec<FeedEvent>,
}

/// Something that happened, with its position in its entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEvent {
    pub index: usize,
    pub kind: FeedKind,
}

/// What a change of an order's state that moves no money was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderChange {
    /// Settlement waits for funds (the reason in words).
    AwaitingFunds {
        reason: String,
    },
    Disputed,
    Cancelled,
    Expired,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedKind {
    /// A payment authorised at a reader; its order is placed next (by the node).
    PaymentAuthorised(Authorisation),
    /// An order id taken, with its first outcome (accepted, settled at once, or refused).
    OrderPlaced {
        order: String,
        consumer: String,
        merchant: String,
        amount: Amount,
        result: CommandResult,
    },
    OrderSettled {
        order: String,
        consumer: String,
        merchant: String,
        wallet_paid: Amount,
        bank_paid: Amount,
    },
    OrderChanged {
        order: String,
        consumer: String,
        change: OrderChange,
    },
    Refunded {
        refund: String,
        order: String,
        consumer: String,
        merchant: String,
        amount: Amount,
    },
    WalletToppedUp {
        consumer: String,
        amount: Amount,
    },
    TopUpRefused {
        consumer: String,
        amount: Amount,
        reason: String,
    },
    /// Money credited to a consumer: a recharge card, a salary, a bank transfer.
    Credited {
        credit: String,
        consumer: String,
        source: CreditSource,
        amount: Amount,
        to_wallet: Amount,
        to_bank: Amount,
    },
    /// A merchant's (an employer's) balance funded from its bank account.
    MerchantFunded {
        funding: String,
        merchant: String,
        amount: Amount,
    },
    /// Money moved between two of a consumer's bank accounts through the node.
    BankTransferred {
        transfer: String,
        consumer: String,
        amount: Amount,
    },
    /// A consumer's credit limit set anew, and why.
    CreditLimitChanged {
        consumer: String,
        limit: Amount,
        reason: String,
    },
    /// A merchant's balance paid out to its bank account (the bank booked it). `payout` is the
    /// bank operation's id; the account is not named (I10).
    PayoutMade {
        payout: String,
        merchant: String,
        amount: Amount,
    },
    /// A payout the bank rejected, with its reason: nothing moved.
    PayoutRefused {
        payout: String,
        merchant: String,
        amount: Amount,
        reason: String,
    },
}

impl FeedEntry {
    /// The feed's part of a journal entry.
    pub(crate) fn of(entry: Entry) -> FeedEntry {
        FeedEntry {
            at: entry.at,
            events: entry
                .events
                .into_iter()
                .enumerate()
                .filter_map(|(index, ev)| feed_kind(ev.kind).map(|kind| FeedEvent { index, kind }))
                .collect(),
        }
    }
}

fn feed_kind(kind: EventKind) -> Option<FeedKind> {
    let changed = |order, consumer, change| FeedKind::OrderChanged {
        order,
        consumer,
        change,
    };
    Some(match kind {
        EventKind::PaymentAuthorised(a) => FeedKind::PaymentAuthorised(a),
        EventKind::OrderPlaced {
            order,
            consumer,
            merchant,
            amount,
            result,
            ..
        } => FeedKind::OrderPlaced {
            order,
            consumer,
            merchant,
            amount,
            result,
        },
        EventKind::OrderSettled {
            order,
            consumer,
            merchant,
            wallet_paid,
            bank_paid,
            ..
        } => FeedKind::OrderSettled {
            order,
            consumer,
            merchant,
            wallet_paid,
            bank_paid,
        },
        EventKind::OrderAwaitingFunds {
            order,
            consumer,
            reason,
        } => changed(order, consumer, OrderChange::AwaitingFunds { reason }),
        EventKind::OrderDisputed { order, consumer } => {
            changed(order, consumer, OrderChange::Disputed)
        }
        EventKind::OrderCancelled { order, consumer } => {
            changed(order, consumer, OrderChange::Cancelled)
        }
        EventKind::OrderExpired { order, consumer } => {
            changed(order, consumer, OrderChange::Expired)
        }
        EventKind::Refunded {
            refund,
            order,
            consumer,
            merchant,
            amount,
            ..
        } => FeedKind::Refunded {
            refund,
            order,
            consumer,
            merchant,
            amount,
        },
        EventKind::WalletToppedUp {
            consumer, amount, ..
        } => FeedKind::WalletToppedUp { consumer, amount },
        EventKind::TopUpRefused {
            consumer,
            amount,
            reason,
        } => FeedKind::TopUpRefused {
            consumer,
            amount,
            reason,
        },
        EventKind::ConsumerCredited {
            credit,
            consumer,
            source,
            amount,
            to_wallet,
            to_bank,
            ..
        } => FeedKind::Credited {
            credit,
            consumer,
            source,
            amount,
            to_wallet,
            to_bank,
        },
        EventKind::MerchantFunded {
            funding,
            merchant,
            amount,
            ..
        } => FeedKind::MerchantFunded {
            funding,
            merchant,
            amount,
        },
        EventKind::CreditLimitChanged {
            consumer,
            limit,
            reason,
        } => FeedKind::CreditLimitChanged {
            consumer,
            limit,
            reason,
        },
        EventKind::BankTransferred {
            transfer,
            consumer,
            amount,
            ..
        } => FeedKind::BankTransferred {
            transfer,
            consumer,
            amount,
        },
        EventKind::PayoutMade {
            payout,
            merchant,
            amount,
            ..
        } => FeedKind::PayoutMade {
            payout,
            merchant,
            amount,
        },
        EventKind::PayoutRefused {
            payout,
            merchant,
            amount,
            reason,
        } => FeedKind::PayoutRefused {
            payout,
            merchant,
            amount,
            reason,
        },
        EventKind::Configured(_)
        | EventKind::BankLinked { .. }
        | EventKind::BankDesignated { .. }
        | EventKind::GatewayRulesSet { .. }
        | EventKind::GatewaySpent { .. }
        | EventKind::ConsumerOpened { .. }
        | EventKind::MerchantOpened { .. }
        | EventKind::CodeRejected { .. }
        | EventKind::ClockAdvanced
        | EventKind::Auth(_) => return None,
    })
}
