//! How the reader program talks to a card: one APDU out, one response back.

/// Why a card exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CardIoError {
    #[error("the card was removed")]
    CardRemoved,
    #[error("the card reader is gone: {0}")]
    ReaderGone(String),
    #[error("no smart-card service is running (pcscd): {0}")]
    NoService(String),
    #[error("the card does not answer: {0}")]
    Unresponsive(String),
}

/// A card in a reader, as the reader program sees it.
pub trait CardChannel {
    /// Sends a command APDU and returns the card's response APDU (data and status word).
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, CardIoError>;
}
