//! The engine's faults: [`EngineError`] and the conversions into it.
//!
//! A module of its own because every layer above the journal returns it (the router, the
//! actors, recovery, the authentication front end and the engine's commands): with the error
//! here, none of them has to import the module that holds the `Engine` to name it, and the
//! module graph stays one-way (`engine` → `actors` → `router` → `error`).

use crate::bank::BankError;
use crate::journal::JournalError;

/// Faults: the command could not be carried out, and nothing was acknowledged. Business
/// refusals are not faults; they are the `Err` side of a [`CommandResult`].
///
/// [`CommandResult`]: crate::model::CommandResult
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("journal: {0}")]
    Journal(#[from] JournalError),
    #[error("bank: {0}")]
    Bank(#[from] BankError),
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    #[error("overloaded: {0} commands already in progress; retry later with the same id")]
    Overloaded(usize),
    #[error("configuration: {0}")]
    Config(String),
    #[error("internal error (a bug): {0}")]
    Internal(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl From<crate::view::ViewError> for EngineError {
    fn from(e: crate::view::ViewError) -> Self {
        EngineError::Journal(JournalError::View(e))
    }
}
