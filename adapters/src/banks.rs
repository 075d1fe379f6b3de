//! Which bank the node works with: the `[bank]` table of `config.toml`.
//!
//! - `kind = "simulated"` (the default): the engine's in-process simulated bank, durable in
//!   the engine's own log. The demo, the scenarios and `onecard-sim load` use it.
//! - `kind = "iso20022"`: a real bank over HTTP(S) through the ISO 20022 adapter
//!   ([`crate::iso20022::bank`]), behind the engine's batching port so that the operations
//!   asked for at once share one message.

use std::path::Path;
use std::sync::Arc;

use onecard_engine::bank::{BankError, BankPort};
use onecard_engine::bank_batch::{BatchConfig, BatchingBankPort};
use onecard_engine::seal::DataKey;
use onecard_engine::{SimBank, SimBankPort};

use crate::iso20022::bank::{BankSettings, Iso20022Bank};

/// The `[bank]` table, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BankKind {
    Simulated,
    /// Boxed: the settings are large, and the simulated bank has none.
    Iso20022(Box<BankSettings>),
}

impl BankKind {
    /// Reads the `[bank]` table; `currency` is `[rules] currency`.
    pub fn from_table(table: &toml::Table, currency: &str) -> Result<BankKind, String> {
        match table.get("kind") {
            None => {
                if let Some(k) = table.keys().next() {
                    return Err(format!(
                        "bank.{k} is set but bank.kind is not: set kind = \"iso20022\" for a real bank"
                    ));
                }
                Ok(BankKind::Simulated)
            }
            Some(toml::Value::String(k)) if k == "simulated" => {
                if let Some(k) = table.keys().find(|k| *k != "kind") {
                    return Err(format!("bank.{k} is not a setting of the simulated bank"));
                }
                Ok(BankKind::Simulated)
            }
            Some(toml::Value::String(k)) if k == "iso20022" => {
                BankSettings::from_table(table, currency).map(|s| BankKind::Iso20022(Box::new(s)))
            }
            Some(v) => Err(format!(
                "bank.kind must be \"simulated\" or \"iso20022\", not {v}"
            )),
        }
    }
}

/// The bank the engine opens with, and the handles its users need.
pub struct OpenedBank {
    /// What to give `Engine::open`.
    pub port: Arc<dyn BankPort>,
    /// The simulated bank, to open accounts and deposit (admin API, demo, load simulator).
    pub simulated: Option<Arc<SimBank>>,
    /// The ISO 20022 adapter, for its counters.
    pub iso20022: Option<Iso20022Bank>,
    batching: Option<Arc<BatchingBankPort>>,
}

impl OpenedBank {
    /// Stops what runs in the background; after the engine has closed.
    pub fn close(&self) {
        if let Some(b) = &self.batching {
            b.close();
        }
        if let Some(b) = &self.iso20022 {
            b.close();
        }
        if let Some(b) = &self.simulated {
            b.close();
        }
    }
}

/// Opens the bank of `kind` for the engine that opens in `data_dir`.
pub fn open_bank(
    kind: &BankKind,
    data_dir: &Path,
    data_key: Option<DataKey>,
) -> Result<OpenedBank, BankError> {
    match kind {
        BankKind::Simulated => {
            let bank = SimBank::open(data_dir)?;
            Ok(OpenedBank {
                port: Arc::new(SimBankPort(bank.clone())),
                simulated: Some(bank),
                iso20022: None,
                batching: None,
            })
        }
        BankKind::Iso20022(settings) => {
            let adapter = Iso20022Bank::open((**settings).clone(), data_dir, data_key)?;
            let batching = Arc::new(
                BatchingBankPort::new(
                    Arc::new(adapter.clone()),
                    BatchConfig {
                        batch_max: settings.batch_max,
                        batch_window: settings.batch_window,
                        ..BatchConfig::default()
                    },
                )
                .map_err(|e| {
                    BankError::Unavailable(format!("cannot start the bank's batching: {e}"))
                })?,
            );
            Ok(OpenedBank {
                port: batching.clone(),
                simulated: None,
                iso20022: Some(adapter),
                batching: Some(batching),
            })
        }
    }
}
