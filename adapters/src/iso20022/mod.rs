//! ISO 20022 messages between the node and a bank, as plain Rust values.
//!
//! | message | version | direction | what for |
//! | --- | --- | --- | --- |
//! | pain.008 | `pain.008.001.08` | node → bank | direct debits: top-ups, bank-funded settlements |
//! | pain.001 | `pain.001.001.09` | node → bank | credit transfers: payouts, overflow sweeps |
//! | pain.002 | `pain.002.001.12` | bank → node | the status of each operation of a pain.001 or pain.008 |
//! | camt.054 | `camt.054.001.08` | bank → node | debit and credit notifications |
//! | camt.053 | `camt.053.001.08` | bank → node | the end-of-day statement, for reconciliation |
//!
//! Each type has `to_xml` (through quick-xml's serde serializer, never string formatting) and
//! `from_xml` (strict: see [`xml`]). Amounts are [`Amount`]s: exact, two decimals. Ids are
//! ISO's `Max35Text`: 1 to 35 characters.

pub mod actor;
pub mod bank;
pub mod reconcile;
pub mod xml;

use onecard_engine::money::Amount;

pub use xml::XmlError;

/// The namespaces of the versions this module speaks.
pub const PAIN_001: &str = "urn:iso:std:iso:20022:tech:xsd:pain.001.001.09";
pub const PAIN_008: &str = "urn:iso:std:iso:20022:tech:xsd:pain.008.001.08";
pub const PAIN_002: &str = "urn:iso:std:iso:20022:tech:xsd:pain.002.001.12";
pub const CAMT_054: &str = "urn:iso:std:iso:20022:tech:xsd:camt.054.001.08";
pub const CAMT_053: &str = "urn:iso:std:iso:20022:tech:xsd:camt.053.001.08";

/// A calendar date (ISODate), `YYYY-MM-DD`.
pub type Date = time::Date;
/// A moment (ISODateTime), always written in UTC with a `Z`.
pub type DateTime = time::OffsetDateTime;

/// Which way an initiation moves money, seen from the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// pain.008: the node collects from each account (top-ups, funding).
    Debit,
    /// pain.001: the node pays each account (payouts, overflow sweeps).
    Credit,
}

/// One operation of an initiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// The end-to-end id: the engine's operation id, unchanged through retries.
    pub end_to_end_id: String,
    /// The consumer's or merchant's account at the bank (an IBAN or the bank's own id).
    pub account: String,
    /// Positive.
    pub amount: Amount,
}

/// A pain.001 (credit transfers) or pain.008 (direct debits) carrying many operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Initiation {
    pub direction: Direction,
    /// Unique per message; a retry sends the same id.
    pub msg_id: String,
    pub created: DateTime,
    /// The settlement center: its name and its creditor identifier (for direct debits).
    pub initiator_name: String,
    pub creditor_id: String,
    /// The settlement center's own account at the bank: the creditor's account of a pain.008,
    /// the debtor's account of a pain.001.
    pub own_account: String,
    /// ISO 4217, such as `EUR`.
    pub currency: String,
    /// The requested collection (pain.008) or execution (pain.001) date.
    pub requested: Date,
    /// At least one.
    pub transfers: Vec<Transfer>,
}

/// What the bank says of one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxStatus {
    /// Booked: `ACSC` or `ACCC`.
    Accepted,
    /// Not yet decided: `RCVD`, `PDNG`, `ACTC`, `ACCP`, `ACSP`, `ACWC`.
    Pending,
    /// `RJCT`, with the reason.
    Rejected(Reason),
}

/// ISO external status reason codes the node understands. Any other code in a message is an
/// error of that message ([`XmlError::UnknownCode`]), so that nothing unknown is booked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// `AC01` incorrect account number.
    IncorrectAccount,
    /// `AC04` closed account number.
    ClosedAccount,
    /// `AC06` blocked account.
    BlockedAccount,
    /// `AG01` transaction forbidden on this kind of account.
    Forbidden,
    /// `AM04` insufficient funds.
    InsufficientFunds,
    /// `AM05` duplication.
    Duplicate,
    /// `MS03` reason not specified (agent generated).
    NotSpecified,
}

impl Reason {
    /// The ISO code, such as `AM04`.
    pub fn code(self) -> &'static str {
        match self {
            Reason::IncorrectAccount => "AC01",
            Reason::ClosedAccount => "AC04",
            Reason::BlockedAccount => "AC06",
            Reason::Forbidden => "AG01",
            Reason::InsufficientFunds => "AM04",
            Reason::Duplicate => "AM05",
            Reason::NotSpecified => "MS03",
        }
    }

    pub fn from_code(code: &str) -> Option<Reason> {
        Some(match code {
            "AC01" => Reason::IncorrectAccount,
            "AC04" => Reason::ClosedAccount,
            "AC06" => Reason::BlockedAccount,
            "AG01" => Reason::Forbidden,
            "AM04" => Reason::InsufficientFunds,
            "AM05" => Reason::Duplicate,
            "MS03" => Reason::NotSpecified,
            _ => return None,
        })
    }

    /// For people: "AM04 insufficient funds".
    pub fn describe(self) -> &'static str {
        match self {
            Reason::IncorrectAccount => "AC01 incorrect account number",
            Reason::ClosedAccount => "AC04 closed account number",
            Reason::BlockedAccount => "AC06 blocked account",
            Reason::Forbidden => "AG01 transaction forbidden",
            Reason::InsufficientFunds => "AM04 insufficient funds",
            Reason::Duplicate => "AM05 duplication",
            Reason::NotSpecified => "MS03 reason not specified",
        }
    }
}

/// The status of one operation in a pain.002.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxReport {
    pub original_end_to_end_id: String,
    pub status: TxStatus,
}

/// A pain.002: the bank's answer to one initiation, for every operation of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReport {
    pub msg_id: String,
    pub created: DateTime,
    /// The initiation it answers: its `msg_id` and its message name (`pain.008.001.08` or
    /// `pain.001.001.09`).
    pub original_msg_id: String,
    pub original_direction: Direction,
    /// One per operation of the initiation, in its order.
    pub transactions: Vec<TxReport>,
}

/// Credit or debit, seen from the holder of the reported account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Credit,
    Debit,
}

/// One booked entry of a notification or a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookedEntry {
    /// The end-to-end id of the operation that caused it (the engine's operation id).
    pub end_to_end_id: String,
    /// Positive; `side` says which way.
    pub amount: Amount,
    pub side: Side,
    pub booked: Date,
}

/// A camt.054: entries booked on one account since the last notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub msg_id: String,
    pub created: DateTime,
    /// The notification's own id, and its sequence number at the bank (ElctrncSeqNb), so that
    /// notifications arriving out of order can be put back in order.
    pub notification_id: String,
    pub sequence: u64,
    pub account: String,
    pub currency: String,
    pub entries: Vec<BookedEntry>,
}

/// A camt.053: one account's statement of a day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub msg_id: String,
    pub created: DateTime,
    pub statement_id: String,
    pub account: String,
    pub currency: String,
    pub date: Date,
    /// Opening (OPBD) and closing (CLBD) booked balances; may be negative.
    pub opening: Amount,
    pub closing: Amount,
    pub entries: Vec<BookedEntry>,
}
