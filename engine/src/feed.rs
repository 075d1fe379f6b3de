//! The engine's typed feed: what happened to orders, wallets and payouts, in journal order, for
//! followers outside the engine (the node's outbox). A follower keeps its own cursor (a record
//! sequence number) and asks for what came after it ([`crate::Engine::feed_after`]); it never
//! sees the ledger's events, so the ledger can change its encoding without its followers
//! changing with it.
//!
//! Every event keeps its position in its journal entry ([`FeedEvent::index`]) and every entry
//! its position in its record, so a follower can derive ids that are the same each time it
//! reads the same record (after a crash, say).

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::cards::Authorisation;
use crate::ledger::{CreditSource, Entry, EventKind};
use crate::model::{CommandResult, Secs};
use crate::money::Amount;

/// What a follower reads in one call: the records with entries, and how far it read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Feed {
    /// The records read that hold entries, in order. Shared with the engine's window of
    /// recent records ([`FeedWindow`]) and with other followers that read them.
    pub records: Vec<Arc<FeedRecord>>,
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

/// The records most recently read for the feed, decoded, so that followers close behind one
/// another (the node's outbox, then its history index and its credit follower, each woken by
/// the one before) read and decode each record once instead of once each: reading a record
/// again is a positioned read, a checksum, the chain's hash and the decoding, which was about
/// 6 % of the node's CPU in a payment with three followers (BENCHMARKS.md).
///
/// The window is records `(after, after + len]`, every record in it (one without entries as
/// `None`), at most [`FeedWindow::CAPACITY`], the oldest dropped first. It follows the head:
/// a read right after its end extends it, a read beyond it starts it anew, and a follower
/// catching up from further back reads the journal and leaves the window as it is.
#[derive(Default)]
pub(crate) struct FeedWindow {
    inner: Mutex<Window>,
}

#[derive(Default)]
struct Window {
    /// The record before the first one held.
    after: u64,
    records: VecDeque<Option<Arc<FeedRecord>>>,
}

impl Window {
    fn end(&self) -> u64 {
        self.after + self.records.len() as u64
    }
}

impl FeedWindow {
    /// Records held at most: three followers' batches of 512.
    pub(crate) const CAPACITY: usize = 1536;

    /// What a follower at `after` reads next (at most `max` records), from the window if it
    /// holds the record after `after`; `None` if it does not.
    pub(crate) fn read(&self, after: u64, max: usize) -> Option<Feed> {
        let w = self.inner.lock();
        if after < w.after || after >= w.end() || max == 0 {
            return None;
        }
        let from = (after - w.after) as usize;
        let upto = from.saturating_add(max).min(w.records.len());
        Some(Feed {
            records: w.records.range(from..upto).flatten().cloned().collect(),
            through: w.after + upto as u64,
        })
    }

    /// Records `(after, after + records.len()]`, just read from the journal, all of them (one
    /// without entries as `None`): kept if they extend the window or lie beyond it.
    pub(crate) fn keep(&self, after: u64, records: &[Option<Arc<FeedRecord>>]) {
        if records.is_empty() {
            return;
        }
        let mut w = self.inner.lock();
        if after > w.end() || w.records.is_empty() {
            w.after = after;
            w.records.clear();
        } else if after < w.end() {
            // Behind the window's end: a follower catching up, or another follower read the
            // same records first.
            return;
        }
        w.records.extend(records.iter().cloned());
        let over = w.records.len().saturating_sub(Self::CAPACITY);
        w.records.drain(..over);
        w.after += over as u64;
    }
}

#[cfg(test)]
mod window_tests {
    use super::*;

    fn records(from: u64, n: u64) -> Vec<Option<Arc<FeedRecord>>> {
        (from..from + n)
            .map(|seq| {
                // Every third record has no entries (the upper layer's own records).
                (seq % 3 != 0).then(|| {
                    Arc::new(FeedRecord {
                        seq,
                        entries: Vec::new(),
                    })
                })
            })
            .collect()
    }

    fn seqs(feed: &Feed) -> Vec<u64> {
        feed.records.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn a_follower_behind_reads_what_the_first_one_read() {
        let w = FeedWindow::default();
        assert!(w.read(0, 10).is_none());
        w.keep(0, &records(1, 10));
        let feed = w.read(0, 4).expect("held");
        assert_eq!(seqs(&feed), vec![1, 2, 4]);
        assert_eq!(feed.through, 4);
        let rest = w.read(4, 100).expect("held");
        assert_eq!(seqs(&rest), vec![5, 7, 8, 10]);
        assert_eq!(rest.through, 10);
        // At the end: nothing held after it, the journal is read.
        assert!(w.read(10, 5).is_none());
        // Records right after the end extend it; a follower behind keeps reading them.
        w.keep(10, &records(11, 5));
        assert_eq!(w.read(8, 100).expect("held").through, 15);
    }

    #[test]
    fn the_window_follows_the_head_and_holds_no_more_than_its_capacity() {
        let w = FeedWindow::default();
        w.keep(100, &records(101, 10));
        // A follower catching up from further back leaves it as it is.
        w.keep(10, &records(11, 10));
        assert!(w.read(10, 5).is_none());
        assert_eq!(w.read(100, 1).expect("held").through, 101);
        // The same records read again by a second follower change nothing.
        w.keep(105, &records(106, 5));
        assert_eq!(w.read(100, 100).expect("held").through, 110);
        // A read beyond the end starts it anew.
        w.keep(500, &records(501, 3));
        assert!(w.read(100, 1).is_none());
        assert_eq!(w.read(500, 100).expect("held").through, 503);
        // The oldest go first.
        let cap = FeedWindow::CAPACITY as u64;
        w.keep(503, &records(504, cap));
        assert!(w.read(500, 1).is_none());
        assert!(w.read(502, 1).is_none());
        let all = w.read(503, usize::MAX).expect("held");
        assert_eq!(all.through, 503 + cap);
        // 504 has no entries: 505 is the first handed out.
        assert_eq!(seqs(&all).first(), Some(&505));
    }
}
