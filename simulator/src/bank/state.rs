//! The bank's books: accounts, the messages it answered, the notifications it made, and the
//! journal records that change them.
//!
//! Every change goes through two steps: [`State::prepare`] checks a [`Record`] against the
//! books and returns a [`Change`] without touching them, [`State::commit`] applies it and cannot
//! fail. The server writes the record to the journal between the two, so that the books never
//! hold what the journal does not; a restart replays the same records through the same code.

use std::collections::{BTreeMap, HashMap};

use onecard_adapters::iso20022::{
    BookedEntry, Date, DateTime, Direction, Initiation, Notification, Reason, Side, Statement,
    StatusReport, TxReport, TxStatus,
};
use onecard_engine::money::Amount;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The outcome code of a booked transaction in the journal.
pub const ACCEPTED: &str = "ACSC";

/// One line of the journal: one change of the books.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case", deny_unknown_fields)]
pub enum Record {
    /// An admin opening: the only way money enters the bank.
    AccountOpened {
        account: String,
        balance: Amount,
        at_ms: i64,
    },
    AccountClosed {
        account: String,
        at_ms: i64,
    },
    /// An initiation and the outcome of each of its transactions (rejected ones too), with the
    /// pain.002 it was answered with, so that a repeat gets the very same bytes.
    MessageBooked(Booking),
}

/// pain.008 or pain.001, as the journal spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Pain008,
    Pain001,
}

impl Kind {
    pub fn of(direction: Direction) -> Kind {
        match direction {
            Direction::Debit => Kind::Pain008,
            Direction::Credit => Kind::Pain001,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Booking {
    pub msg_id: String,
    /// [`content_sha256`] of the initiation: a known id with another hash is a conflict.
    pub content_sha256: String,
    pub kind: Kind,
    pub own_account: String,
    pub currency: String,
    /// When it was booked (Unix milliseconds, UTC): the entries' booking date and the
    /// notification's creation time.
    pub at_ms: i64,
    pub transactions: Vec<TxRecord>,
    /// The sequence number of the notification it made (none when nothing was accepted).
    pub notification: Option<u64>,
    /// The pain.002 it was answered with.
    pub report_xml: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxRecord {
    pub end_to_end_id: String,
    pub account: String,
    pub amount: Amount,
    /// [`ACCEPTED`] or the reason code of the rejection.
    pub outcome: String,
}

/// Why a record does not fit the books (a damaged or foreign journal), or why a booking could
/// not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("account {0:?} is opened twice")]
    AlreadyOpen(String),
    #[error("account {0:?} is opened with a negative balance")]
    NegativeOpening(String),
    #[error("account {0:?} is not open")]
    UnknownAccount(String),
    #[error("account {0:?} is already closed")]
    AlreadyClosed(String),
    #[error("message {0:?} is booked twice")]
    DuplicateMessage(String),
    #[error("transaction {end_to_end_id:?} is booked but the books refuse it ({reason})")]
    Refused {
        end_to_end_id: String,
        reason: &'static str,
    },
    #[error("unknown outcome code {0:?}")]
    UnknownOutcome(String),
    #[error("notification number {found:?} where {expected:?} was due")]
    Sequence {
        found: Option<u64>,
        expected: Option<u64>,
    },
    #[error("time {0} ms is out of range")]
    Time(i64),
    #[error("the sum of all balances would overflow")]
    Overflow,
    #[error("cannot write the pain.002: {0}")]
    Report(String),
}

/// An account at the bank.
#[derive(Debug, Clone)]
pub struct Account {
    /// The balance it was opened with (0.00 for the node's own account when a message first
    /// names it): its balance before every entry.
    pub opening: Amount,
    pub balance: Amount,
    pub closed: bool,
    /// Every entry booked on it, in order.
    pub entries: Vec<BookedEntry>,
}

/// A message the bank has answered.
#[derive(Debug, Clone)]
pub struct Message {
    pub content_sha256: String,
    pub report_xml: String,
}

/// The books.
#[derive(Debug)]
pub struct State {
    /// The one currency of every account.
    currency: String,
    accounts: BTreeMap<String, Account>,
    messages: HashMap<String, Message>,
    /// Notification `n` is at index `n - 1`.
    notifications: Vec<Notification>,
    /// Accepted transactions.
    bookings: u64,
    /// The sum of every opening: what the bank holds in all, since bookings only move money
    /// between accounts. Kept so that an opening's overflow check does not sum every balance.
    opened: Amount,
}

/// A checked record, ready to apply.
#[derive(Debug)]
pub enum Change {
    Open { account: String, balance: Amount },
    Close { account: String },
    Book(Box<BookChange>),
}

/// A checked booking: the message, the balances after it, its entries and notification.
#[derive(Debug)]
pub struct BookChange {
    msg_id: String,
    message: Message,
    /// The own account, when this message is the first to name it.
    create: Option<String>,
    balances: Vec<(String, Amount)>,
    entries: Vec<(String, BookedEntry)>,
    notification: Option<Notification>,
    accepted: u64,
}

/// The sha256 (hex) of an initiation's parsed content, its creation time left out: a retry
/// that rebuilt the same message a second later is the same message, while any other
/// operation, account or amount under the same id is a conflict. Parsed, not raw, so that
/// spelling differences (`10.0` and `10.00`, whitespace, prefixes) do not count.
pub fn content_sha256(init: &Initiation) -> String {
    let transfers: Vec<serde_json::Value> = init
        .transfers
        .iter()
        .map(|t| serde_json::json!([t.end_to_end_id, t.account, t.amount.to_string()]))
        .collect();
    let canonical = serde_json::json!([
        Kind::of(init.direction),
        init.msg_id,
        init.initiator_name,
        init.creditor_id,
        init.own_account,
        init.currency,
        init.requested.to_string(),
        transfers,
    ]);
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

/// Unix milliseconds to a UTC moment.
pub fn moment(at_ms: i64) -> Result<DateTime, StateError> {
    DateTime::from_unix_timestamp_nanos(i128::from(at_ms) * 1_000_000)
        .map_err(|_| StateError::Time(at_ms))
}

/// Now, to the millisecond (what the journal keeps, so that a replay gives the same times).
pub fn now_ms() -> i64 {
    let nanos = DateTime::now_utc().unix_timestamp_nanos();
    i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX)
}

/// Balances of one message while it is planned or checked, over the books.
struct Overlay<'a> {
    state: &'a State,
    own: &'a str,
    balances: HashMap<String, Amount>,
}

impl Overlay<'_> {
    /// The account's balance and closed flag; the own account exists at 0.00 until opened.
    fn account(&self, id: &str) -> Option<(Amount, bool)> {
        match self.state.accounts.get(id) {
            Some(a) => Some((
                self.balances.get(id).copied().unwrap_or(a.balance),
                a.closed,
            )),
            None if id == self.own => Some((
                self.balances.get(id).copied().unwrap_or(Amount::ZERO),
                false,
            )),
            None => None,
        }
    }

    /// Moves `amount` from `from` to `to`, or says why the bank refuses.
    fn transfer(&mut self, from: &str, to: &str, amount: Amount) -> Result<(), Reason> {
        if !amount.is_positive() {
            return Err(Reason::NotSpecified);
        }
        let (from_balance, from_closed) = self.account(from).ok_or(Reason::IncorrectAccount)?;
        let (_, to_closed) = self.account(to).ok_or(Reason::IncorrectAccount)?;
        if from_closed || to_closed {
            return Err(Reason::ClosedAccount);
        }
        if from_balance < amount {
            return Err(Reason::InsufficientFunds);
        }
        let from_after = from_balance
            .checked_sub(amount)
            .map_err(|_| Reason::NotSpecified)?;
        self.balances.insert(from.to_string(), from_after);
        // Read `to` after writing `from`: they may be the same account.
        let (to_balance, _) = self.account(to).ok_or(Reason::IncorrectAccount)?;
        let to_after = to_balance
            .checked_add(amount)
            .map_err(|_| Reason::NotSpecified)?;
        self.balances.insert(to.to_string(), to_after);
        Ok(())
    }
}

/// Debited and credited accounts of a transaction: (from, to).
fn legs<'a>(kind: Kind, own: &'a str, counterparty: &'a str) -> (&'a str, &'a str) {
    match kind {
        Kind::Pain008 => (counterparty, own),
        Kind::Pain001 => (own, counterparty),
    }
}

impl State {
    pub fn new(currency: String) -> State {
        State {
            currency,
            accounts: BTreeMap::new(),
            messages: HashMap::new(),
            notifications: Vec::new(),
            bookings: 0,
            opened: Amount::ZERO,
        }
    }

    pub fn account(&self, id: &str) -> Option<&Account> {
        self.accounts.get(id)
    }

    pub fn message(&self, msg_id: &str) -> Option<&Message> {
        self.messages.get(msg_id)
    }

    /// Every account, in id order.
    pub fn accounts(&self) -> impl Iterator<Item = (&String, &Account)> {
        self.accounts.iter()
    }

    /// The sum of every opening balance (what the bank holds in all).
    pub fn opened(&self) -> Amount {
        self.opened
    }

    pub fn notifications(&self) -> &[Notification] {
        &self.notifications
    }

    /// (accounts, sum of every balance, messages, accepted transactions).
    pub fn totals(&self) -> Result<(usize, Amount, usize, u64), StateError> {
        let total = self
            .accounts
            .values()
            .try_fold(Amount::ZERO, |sum, a| sum.checked_add(a.balance))
            .map_err(|_| StateError::Overflow)?;
        Ok((
            self.accounts.len(),
            total,
            self.messages.len(),
            self.bookings,
        ))
    }

    /// Decides every transaction of a new initiation and writes its pain.002: the record to
    /// journal. `reject_next` is the fault's budget (count, code); returns how much of it was
    /// used, to take off once the record is durable.
    pub fn plan(
        &self,
        init: &Initiation,
        content_sha256: String,
        at_ms: i64,
        reject_next: (u64, Reason),
    ) -> Result<(Booking, u64), StateError> {
        let kind = Kind::of(init.direction);
        let mut overlay = Overlay {
            state: self,
            own: &init.own_account,
            balances: HashMap::new(),
        };
        let (mut budget, forced) = reject_next;
        let mut transactions = Vec::with_capacity(init.transfers.len());
        let mut reports = Vec::with_capacity(init.transfers.len());
        let mut accepted = false;
        for t in &init.transfers {
            let (from, to) = legs(kind, &init.own_account, &t.account);
            let outcome = if budget > 0 {
                budget -= 1;
                Err(forced)
            } else if init.currency != self.currency {
                // Every account is in the bank's currency: AG01, not for this account.
                Err(Reason::Forbidden)
            } else {
                overlay.transfer(from, to, t.amount)
            };
            accepted |= outcome.is_ok();
            transactions.push(TxRecord {
                end_to_end_id: t.end_to_end_id.clone(),
                account: t.account.clone(),
                amount: t.amount,
                outcome: match outcome {
                    Ok(()) => ACCEPTED.to_string(),
                    Err(r) => r.code().to_string(),
                },
            });
            reports.push(TxReport {
                original_end_to_end_id: t.end_to_end_id.clone(),
                status: match outcome {
                    Ok(()) => TxStatus::Accepted,
                    Err(r) => TxStatus::Rejected(r),
                },
            });
        }
        let report = StatusReport {
            // Max35Text: the message's number at the bank, not the original id (up to 35 itself).
            msg_id: format!("PAIN002-{}", self.messages.len() + 1),
            created: moment(at_ms)?,
            original_msg_id: init.msg_id.clone(),
            original_direction: init.direction,
            transactions: reports,
        };
        let report_xml = report
            .to_xml()
            .map_err(|e| StateError::Report(e.to_string()))?;
        let booking = Booking {
            msg_id: init.msg_id.clone(),
            content_sha256,
            kind,
            own_account: init.own_account.clone(),
            currency: init.currency.clone(),
            at_ms,
            transactions,
            notification: accepted.then(|| self.notifications.len() as u64 + 1),
            report_xml,
        };
        Ok((booking, reject_next.0 - budget))
    }

    /// Checks a record against the books: what [`State::commit`] will do.
    pub fn prepare(&self, record: &Record) -> Result<Change, StateError> {
        match record {
            Record::AccountOpened {
                account, balance, ..
            } => {
                if self.accounts.contains_key(account) {
                    return Err(StateError::AlreadyOpen(account.clone()));
                }
                if balance.is_negative() {
                    return Err(StateError::NegativeOpening(account.clone()));
                }
                // Every later balance is at most the total, so no booking can overflow.
                self.opened
                    .checked_add(*balance)
                    .map_err(|_| StateError::Overflow)?;
                Ok(Change::Open {
                    account: account.clone(),
                    balance: *balance,
                })
            }
            Record::AccountClosed { account, .. } => match self.accounts.get(account) {
                None => Err(StateError::UnknownAccount(account.clone())),
                Some(a) if a.closed => Err(StateError::AlreadyClosed(account.clone())),
                Some(_) => Ok(Change::Close {
                    account: account.clone(),
                }),
            },
            Record::MessageBooked(b) => self.prepare_booking(b),
        }
    }

    fn prepare_booking(&self, b: &Booking) -> Result<Change, StateError> {
        if self.messages.contains_key(&b.msg_id) {
            return Err(StateError::DuplicateMessage(b.msg_id.clone()));
        }
        let at = moment(b.at_ms)?;
        let booked: Date = at.date();
        let mut overlay = Overlay {
            state: self,
            own: &b.own_account,
            balances: HashMap::new(),
        };
        let mut entries = Vec::new();
        let mut own_entries = Vec::new();
        let mut accepted = 0u64;
        for t in &b.transactions {
            if t.outcome != ACCEPTED {
                if Reason::from_code(&t.outcome).is_none() {
                    return Err(StateError::UnknownOutcome(t.outcome.clone()));
                }
                continue;
            }
            if b.currency != self.currency {
                return Err(StateError::Refused {
                    end_to_end_id: t.end_to_end_id.clone(),
                    reason: Reason::Forbidden.describe(),
                });
            }
            let (from, to) = legs(b.kind, &b.own_account, &t.account);
            overlay
                .transfer(from, to, t.amount)
                .map_err(|r| StateError::Refused {
                    end_to_end_id: t.end_to_end_id.clone(),
                    reason: r.describe(),
                })?;
            accepted += 1;
            let entry = |side| BookedEntry {
                end_to_end_id: t.end_to_end_id.clone(),
                amount: t.amount,
                side,
                booked,
            };
            entries.push((from.to_string(), entry(Side::Debit)));
            entries.push((to.to_string(), entry(Side::Credit)));
            own_entries.push(entry(match b.kind {
                Kind::Pain008 => Side::Credit,
                Kind::Pain001 => Side::Debit,
            }));
        }
        let expected = (accepted > 0).then(|| self.notifications.len() as u64 + 1);
        if b.notification != expected {
            return Err(StateError::Sequence {
                found: b.notification,
                expected,
            });
        }
        let notification = expected.map(|sequence| Notification {
            msg_id: format!("CAMT054-{sequence}"),
            created: at,
            notification_id: format!("NTF-{sequence}"),
            sequence,
            account: b.own_account.clone(),
            currency: b.currency.clone(),
            entries: own_entries,
        });
        let create = (!self.accounts.contains_key(&b.own_account)).then(|| b.own_account.clone());
        Ok(Change::Book(Box::new(BookChange {
            msg_id: b.msg_id.clone(),
            message: Message {
                content_sha256: b.content_sha256.clone(),
                report_xml: b.report_xml.clone(),
            },
            create,
            balances: overlay.balances.into_iter().collect(),
            entries,
            notification,
            accepted,
        })))
    }

    /// Applies a prepared change.
    pub fn commit(&mut self, change: Change) {
        match change {
            Change::Open { account, balance } => {
                // Checked by `prepare`.
                self.opened = self.opened.checked_add(balance).unwrap_or(self.opened);
                self.accounts.insert(
                    account,
                    Account {
                        opening: balance,
                        balance,
                        closed: false,
                        entries: Vec::new(),
                    },
                );
            }
            Change::Close { account } => {
                if let Some(a) = self.accounts.get_mut(&account) {
                    a.closed = true;
                }
            }
            Change::Book(book) => {
                let BookChange {
                    msg_id,
                    message,
                    create,
                    balances,
                    entries,
                    notification,
                    accepted,
                } = *book;
                if let Some(own) = create {
                    self.accounts.insert(
                        own,
                        Account {
                            opening: Amount::ZERO,
                            balance: Amount::ZERO,
                            closed: false,
                            entries: Vec::new(),
                        },
                    );
                }
                for (id, balance) in balances {
                    if let Some(a) = self.accounts.get_mut(&id) {
                        a.balance = balance;
                    }
                }
                for (id, entry) in entries {
                    if let Some(a) = self.accounts.get_mut(&id) {
                        a.entries.push(entry);
                    }
                }
                self.notifications.extend(notification);
                self.bookings += accepted;
                self.messages.insert(msg_id, message);
            }
        }
    }

    /// The camt.053 of an account and a day: `None` for an unknown account. With `omit_first`
    /// (the `omit_statement_line` fault) the day's first entry is left out, not its amount.
    pub fn statement(
        &self,
        id: &str,
        date: Date,
        omit_first: bool,
        created: DateTime,
    ) -> Option<Result<Statement, StateError>> {
        let account = self.accounts.get(id)?;
        let signed = |sum: Amount, e: &BookedEntry| match e.side {
            Side::Credit => sum.checked_add(e.amount),
            Side::Debit => sum.checked_sub(e.amount),
        };
        let result = (|| {
            let opening = account
                .entries
                .iter()
                .filter(|e| e.booked < date)
                .try_fold(account.opening, signed)
                .map_err(|_| StateError::Overflow)?;
            let mut entries: Vec<BookedEntry> = account
                .entries
                .iter()
                .filter(|e| e.booked == date)
                .cloned()
                .collect();
            let closing = entries
                .iter()
                .try_fold(opening, signed)
                .map_err(|_| StateError::Overflow)?;
            if omit_first && !entries.is_empty() {
                entries.remove(0);
            }
            // Max35Text ids whatever the account's length: the day and a digest of the account.
            let tag = &hex::encode(Sha256::digest(id.as_bytes()))[..8];
            let day = format!(
                "{:04}{:02}{:02}",
                date.year(),
                u8::from(date.month()),
                date.day()
            );
            Ok(Statement {
                msg_id: format!("CAMT053-{day}-{tag}"),
                created,
                statement_id: format!("STMT-{day}-{tag}"),
                account: id.to_string(),
                currency: self.currency.clone(),
                date,
                opening,
                closing,
                entries,
            })
        })();
        Some(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use onecard_adapters::iso20022::Transfer;

    fn amount(s: &str) -> Amount {
        Amount::parse(s).unwrap()
    }

    fn open(state: &mut State, id: &str, balance: &str) {
        let rec = Record::AccountOpened {
            account: id.into(),
            balance: amount(balance),
            at_ms: 0,
        };
        let change = state.prepare(&rec).unwrap();
        state.commit(change);
    }

    fn initiation(direction: Direction, transfers: &[(&str, &str)]) -> Initiation {
        Initiation {
            direction,
            msg_id: "M1".into(),
            created: DateTime::UNIX_EPOCH,
            initiator_name: "OneCard".into(),
            creditor_id: "CRED".into(),
            own_account: "OWN".into(),
            currency: "EUR".into(),
            requested: DateTime::UNIX_EPOCH.date(),
            transfers: transfers
                .iter()
                .enumerate()
                .map(|(i, (acc, amt))| Transfer {
                    end_to_end_id: format!("E{i}"),
                    account: acc.to_string(),
                    amount: amount(amt),
                })
                .collect(),
        }
    }

    fn outcomes(b: &Booking) -> Vec<&str> {
        b.transactions.iter().map(|t| t.outcome.as_str()).collect()
    }

    #[test]
    fn a_debit_moves_money_into_the_own_account_or_says_why_not() {
        let mut state = State::new("EUR".into());
        open(&mut state, "A", "10.00");
        let init = initiation(
            Direction::Debit,
            &[("A", "4.00"), ("B", "1.00"), ("A", "7.00"), ("A", "6.00")],
        );
        let (b, used) = state
            .plan(&init, "h".into(), 1_000, (0, Reason::InsufficientFunds))
            .unwrap();
        assert_eq!(used, 0);
        assert_eq!(outcomes(&b), ["ACSC", "AC01", "AM04", "ACSC"]);
        let change = state.prepare(&Record::MessageBooked(b.clone())).unwrap();
        state.commit(change);
        assert_eq!(state.account("A").unwrap().balance, Amount::ZERO);
        assert_eq!(state.account("OWN").unwrap().balance, amount("10.00"));
        assert_eq!(state.totals().unwrap().1, amount("10.00"));
        assert_eq!(state.notifications().len(), 1);
        assert_eq!(state.notifications()[0].entries.len(), 2);
        // The same record again does not fit.
        assert!(state.prepare(&Record::MessageBooked(b)).is_err());
    }

    #[test]
    fn a_credit_cannot_overdraw_the_own_account_and_reject_next_forces_its_code() {
        let mut state = State::new("EUR".into());
        open(&mut state, "A", "0.00");
        let init = initiation(Direction::Credit, &[("A", "1.00"), ("A", "1.00")]);
        let (b, used) = state
            .plan(&init, "h".into(), 0, (1, Reason::ClosedAccount))
            .unwrap();
        assert_eq!(used, 1);
        assert_eq!(outcomes(&b), ["AC04", "AM04"]);
        assert_eq!(b.notification, None);
    }

    #[test]
    fn a_record_the_books_refuse_is_an_error() {
        let state = State::new("EUR".into());
        let rec = Record::MessageBooked(Booking {
            msg_id: "M".into(),
            content_sha256: "h".into(),
            kind: Kind::Pain008,
            own_account: "OWN".into(),
            currency: "EUR".into(),
            at_ms: 0,
            transactions: vec![TxRecord {
                end_to_end_id: "E".into(),
                account: "NOPE".into(),
                amount: amount("1.00"),
                outcome: ACCEPTED.into(),
            }],
            notification: Some(1),
            report_xml: String::new(),
        });
        assert!(matches!(
            state.prepare(&rec),
            Err(StateError::Refused { .. })
        ));
    }
}
