//! The errors of the cards' administrative operations and of the PIN primitives, below both
//! `auth` and `pin` so that neither imports the other for it.

/// Errors of the administrative operations and of the PIN primitives. They never carry a full
/// card number (only a masked one) nor a PIN.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CardError {
    #[error("a PIN is 4 to 12 digits")]
    InvalidPin,
    #[error("a stored PIN verifier is not 64 hex digits")]
    InvalidPinVerifier,
    #[error("the encrypted PIN could not be read")]
    PinTransport,
    #[error("a card number is 12 to 19 digits")]
    InvalidCardNumber,
    /// A stored card whose token is not 64 lowercase hex digits, is not the key it is stored
    /// under, or whose last four are not four digits.
    #[error("a stored card token or last four digits are malformed")]
    InvalidCardToken,
    #[error("card {0} is already issued")]
    DuplicateCard(String),
    #[error("no card {0}")]
    UnknownCard(String),
    #[error("card {0} was reported lost and cannot be unlocked")]
    CardLost(String),
    #[error("invalid {field}: must be 1 to 128 bytes")]
    InvalidField { field: &'static str },
    #[error("reader {0} is already registered")]
    DuplicateReader(String),
    #[error("no reader {0}")]
    UnknownReader(String),
    #[error("card {card} is already bound to reader {reader}")]
    CardAlreadyBound { card: String, reader: String },
    #[error("reader account {account} is not the holder of card {card}")]
    AccountMismatch { account: String, card: String },
}

impl From<onecard_protocol::PinError> for CardError {
    fn from(e: onecard_protocol::PinError) -> CardError {
        match e {
            onecard_protocol::PinError::InvalidPin => CardError::InvalidPin,
            onecard_protocol::PinError::Transport => CardError::PinTransport,
        }
    }
}
