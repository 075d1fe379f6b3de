//! The PC/SC backend: a real reader through pcsc-lite (`pcscd`), here the vsmartcard driver's
//! `Virtual PCD 00 00` in tests and a USB reader at a consumer's home.
//!
//! pcsc calls block; callers run them on a thread of their own, never on an async executor
//! that serves other work.

use std::ffi::CString;
use std::time::Duration;

use pcsc::{Context, Protocols, ReaderState, Scope, ShareMode, State};

use crate::channel::{CardChannel, CardIoError};

/// Why the reader could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReaderError {
    #[error("no smart-card service is running: start pcscd ({0})")]
    NoService(String),
    #[error("no card reader is attached")]
    NoReader,
    #[error("the card reader {0:?} is not attached (attached: {1})")]
    NotAttached(String, String),
    #[error("the card reader was unplugged")]
    ReaderGone,
    #[error("no card was inserted within {0:?}")]
    NoCard(Duration),
    #[error("the card was removed")]
    CardRemoved,
    #[error("PC/SC: {0}")]
    Other(String),
}

fn reader_error(e: pcsc::Error) -> ReaderError {
    use pcsc::Error::*;
    match e {
        NoService | ServiceStopped => ReaderError::NoService(e.to_string()),
        NoReadersAvailable => ReaderError::NoReader,
        ReaderUnavailable | UnknownReader => ReaderError::ReaderGone,
        RemovedCard | ResetCard | NoSmartcard | UnpoweredCard => ReaderError::CardRemoved,
        other => ReaderError::Other(other.to_string()),
    }
}

fn card_error(e: pcsc::Error) -> CardIoError {
    match reader_error(e) {
        ReaderError::CardRemoved => CardIoError::CardRemoved,
        ReaderError::ReaderGone | ReaderError::NoReader => CardIoError::ReaderGone(e.to_string()),
        ReaderError::NoService(s) => CardIoError::NoService(s),
        _ => CardIoError::Unresponsive(e.to_string()),
    }
}

/// The names of the readers PC/SC sees.
pub fn list_readers() -> Result<Vec<String>, ReaderError> {
    let ctx = Context::establish(Scope::User).map_err(reader_error)?;
    let names = ctx.list_readers_owned().map_err(reader_error)?;
    Ok(names
        .into_iter()
        .map(|n| n.to_string_lossy().into_owned())
        .collect())
}

/// A reader found through PC/SC.
pub struct PcscReader {
    ctx: Context,
    name: CString,
}

impl PcscReader {
    /// Connects to the PC/SC service and picks the reader named `wanted`, or the first one.
    pub fn open(wanted: Option<&str>) -> Result<PcscReader, ReaderError> {
        let ctx = Context::establish(Scope::User).map_err(reader_error)?;
        let readers = ctx.list_readers_owned().map_err(reader_error)?;
        let name = match wanted {
            Some(w) => readers
                .iter()
                .find(|r| r.to_str().is_ok_and(|n| n == w))
                .cloned()
                .ok_or_else(|| {
                    let names: Vec<String> = readers
                        .iter()
                        .map(|r| r.to_string_lossy().into_owned())
                        .collect();
                    ReaderError::NotAttached(w.to_string(), names.join(", "))
                })?,
            None => readers.first().cloned().ok_or(ReaderError::NoReader)?,
        };
        Ok(PcscReader { ctx, name })
    }

    pub fn name(&self) -> String {
        self.name.to_string_lossy().into_owned()
    }

    /// Waits until a card is present, at most `timeout`.
    pub fn wait_for_card(&self, timeout: Duration) -> Result<(), ReaderError> {
        let mut states = [ReaderState::new(self.name.clone(), State::UNAWARE)];
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match self.ctx.get_status_change(Duration::ZERO, &mut states) {
                Ok(()) | Err(pcsc::Error::Timeout) => {}
                Err(e) => return Err(reader_error(e)),
            }
            let now = states[0].event_state();
            if now.intersects(State::UNKNOWN | State::UNAVAILABLE) {
                return Err(ReaderError::ReaderGone);
            }
            if now.contains(State::PRESENT) && !now.contains(State::MUTE) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(ReaderError::NoCard(timeout));
            }
            states[0].sync_current_state();
            match self
                .ctx
                .get_status_change(left.min(Duration::from_millis(500)), &mut states)
            {
                Ok(()) | Err(pcsc::Error::Timeout) => {}
                Err(e) => return Err(reader_error(e)),
            }
        }
    }

    /// Connects to the card in the reader.
    pub fn connect(&self) -> Result<PcscCard, ReaderError> {
        let card = self
            .ctx
            .connect(&self.name, ShareMode::Shared, Protocols::ANY)
            .map_err(reader_error)?;
        Ok(PcscCard { card })
    }
}

/// A card connected through PC/SC.
pub struct PcscCard {
    card: pcsc::Card,
}

impl CardChannel for PcscCard {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, CardIoError> {
        let mut buf = [0u8; pcsc::MAX_BUFFER_SIZE];
        self.card
            .transmit(apdu, &mut buf)
            .map(|r| r.to_vec())
            .map_err(card_error)
    }
}
