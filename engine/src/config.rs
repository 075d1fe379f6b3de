//! `config.toml`: the node's defaults. Every key is optional; a missing key takes the default
//! documented in the repository's `config.toml`.

use std::path::Path;

use serde::Deserialize;

use crate::engine::EngineConfig;
use crate::journal::JournalConfig;
use crate::model::RulesConfig;
use crate::money::Amount;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rules: RawRules,
    #[serde(default)]
    journal: RawJournal,
    #[serde(default)]
    engine: RawEngine,
    #[serde(default)]
    node: toml::Table,
    #[serde(default)]
    bank: toml::Table,
    #[serde(default)]
    credit: toml::Table,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    currency: Option<String>,
    wallet_cap: Option<String>,
    topup_threshold: Option<String>,
    direct_max: Option<String>,
    order_expiry_secs: Option<u64>,
    code_attempts_max: Option<u32>,
    max_pin_failures: Option<u32>,
    challenge_ttl_secs: Option<u64>,
    refused_swipes_per_minute: Option<u32>,
    max_counter_jump: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJournal {
    queue_capacity: Option<usize>,
    max_batch: Option<usize>,
    batch_window_micros: Option<u64>,
    cache_mib: Option<u64>,
    record_cache_mib: Option<u64>,
    segment_mib: Option<u64>,
    archive_dir: Option<std::path::PathBuf>,
    checkpoint_interval_ms: Option<u64>,
    checkpoint_max_keys: Option<usize>,
    id_filter_capacity: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEngine {
    arbiters: Option<usize>,
    mailbox_capacity: Option<usize>,
    max_in_flight: Option<usize>,
    passivate_after_ms: Option<u64>,
}

/// The parsed configuration file.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub currency: String,
    pub engine: EngineConfig,
    /// The `[node]` table, kept for the parts of the node that read it (HTTP API, adapters).
    pub node: toml::Table,
    /// The `[bank]` table: which bank the node works with (`kind`, default `"simulated"`) and
    /// the settings of the ISO 20022 adapter (`onecard-adapters`), which reads it.
    pub bank: toml::Table,
    /// The `[credit]` table: the node's credit policy (SPEC F10), which the node checks and
    /// reads (`onecard_node::credit::CreditPolicy`).
    pub credit: toml::Table,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            currency: "EUR".into(),
            engine: EngineConfig::default(),
            node: toml::Table::new(),
            bank: toml::Table::new(),
            credit: toml::Table::new(),
        }
    }
}

impl NodeConfig {
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        NodeConfig::parse(&text).map_err(|message| ConfigError::Invalid {
            path: path.display().to_string(),
            message,
        })
    }

    pub fn parse(text: &str) -> Result<NodeConfig, String> {
        let raw: RawFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut cfg = NodeConfig::default();
        let amount = |key: &str, v: &Option<String>, default: Amount| -> Result<Amount, String> {
            match v {
                None => Ok(default),
                Some(s) => Amount::parse_non_negative(s).map_err(|e| format!("rules.{key}: {e}")),
            }
        };
        let d = RulesConfig::default();
        let wallet_cap = amount("wallet_cap", &raw.rules.wallet_cap, d.wallet_cap)?;
        let rules = RulesConfig {
            wallet_cap,
            topup_threshold: amount("topup_threshold", &raw.rules.topup_threshold, wallet_cap)?,
            direct_max: amount("direct_max", &raw.rules.direct_max, d.direct_max)?,
            order_expiry_secs: raw.rules.order_expiry_secs.unwrap_or(d.order_expiry_secs),
            code_attempts_max: raw.rules.code_attempts_max.unwrap_or(d.code_attempts_max),
            auth: crate::cards::AuthConfig {
                max_pin_failures: raw
                    .rules
                    .max_pin_failures
                    .unwrap_or(d.auth.max_pin_failures),
                challenge_ttl_secs: raw
                    .rules
                    .challenge_ttl_secs
                    .unwrap_or(d.auth.challenge_ttl_secs),
                refused_swipes_per_minute: raw
                    .rules
                    .refused_swipes_per_minute
                    .unwrap_or(d.auth.refused_swipes_per_minute),
                max_counter_jump: raw
                    .rules
                    .max_counter_jump
                    .unwrap_or(d.auth.max_counter_jump),
            },
        };
        rules.validate()?;
        cfg.engine.rules = rules;
        if let Some(c) = raw.rules.currency {
            cfg.currency = c;
        }
        let dj = JournalConfig::default();
        cfg.engine.journal = JournalConfig {
            queue_capacity: raw.journal.queue_capacity.unwrap_or(dj.queue_capacity),
            max_batch: raw.journal.max_batch.unwrap_or(dj.max_batch),
            batch_window_micros: raw
                .journal
                .batch_window_micros
                .unwrap_or(dj.batch_window_micros),
            cache_bytes: raw
                .journal
                .cache_mib
                .map(|m| m.saturating_mul(1024 * 1024))
                .unwrap_or(dj.cache_bytes),
            record_cache_bytes: raw
                .journal
                .record_cache_mib
                .map(|m| m.saturating_mul(1024 * 1024))
                .unwrap_or(dj.record_cache_bytes),
            segment_bytes: raw
                .journal
                .segment_mib
                .filter(|m| *m > 0)
                .map(|m| m.saturating_mul(1024 * 1024))
                .unwrap_or(dj.segment_bytes),
            archive_dir: raw.journal.archive_dir.or(dj.archive_dir),
            checkpoint_interval_ms: raw
                .journal
                .checkpoint_interval_ms
                .unwrap_or(dj.checkpoint_interval_ms),
            checkpoint_max_keys: raw
                .journal
                .checkpoint_max_keys
                .unwrap_or(dj.checkpoint_max_keys),
            id_filter_capacity: raw
                .journal
                .id_filter_capacity
                .unwrap_or(dj.id_filter_capacity),
            // Set by the layer above, not by the file.
            filtered_record_prefixes: dj.filtered_record_prefixes,
        };
        if let Some(n) = raw.engine.arbiters.filter(|n| *n > 0) {
            cfg.engine.arbiters = n;
        }
        if let Some(n) = raw.engine.mailbox_capacity {
            cfg.engine.mailbox_capacity = n;
        }
        if let Some(n) = raw.engine.max_in_flight {
            cfg.engine.max_in_flight = n;
        }
        if let Some(ms) = raw.engine.passivate_after_ms {
            cfg.engine.passivate_after = std::time::Duration::from_millis(ms);
        }
        cfg.node = raw.node;
        cfg.bank = raw.bank;
        cfg.credit = raw.credit;
        Ok(cfg)
    }
}

/// The node's secrets come from its environment, never from `config.toml` (which is shared
/// and versioned): `ONECARD_ISSUER_KEY` (the card issuer's master key) and `ONECARD_DATA_KEY`
/// (seals bank accounts at rest), each 64 hex digits. Absent variables leave the keys unset.
pub fn secret_keys_from_env(
    engine: &mut EngineConfig,
    var: impl Fn(&str) -> Option<String>,
) -> Result<(), String> {
    if let Some(hex) = var("ONECARD_ISSUER_KEY") {
        engine.issuer_key = Some(crate::cards::IssuerKey::from_bytes(key_bytes(
            "ONECARD_ISSUER_KEY",
            &hex,
        )?));
    }
    if let Some(hex) = var("ONECARD_DATA_KEY") {
        engine.data_key = Some(crate::seal::DataKey::from_bytes(key_bytes(
            "ONECARD_DATA_KEY",
            &hex,
        )?));
    }
    Ok(())
}

/// 32 bytes from 64 hex digits; the error never repeats the value (it is a secret).
fn key_bytes(name: &str, text: &str) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out)
        .map_err(|_| format!("{name} must be 64 hex digits (32 bytes)"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_config_parses_with_the_documented_defaults() {
        let text = include_str!("../../config.toml");
        let cfg = NodeConfig::parse(text).unwrap();
        assert_eq!(cfg.engine.rules.wallet_cap.to_string(), "5000.00");
        assert_eq!(cfg.engine.rules.topup_threshold.to_string(), "5000.00");
        // `[credit]` is kept whole for the node, which checks it.
        assert_eq!(cfg.credit["policy"].as_str(), Some("fixed"));
    }

    #[test]
    fn secret_keys_come_from_the_environment_and_bad_ones_are_refused_without_echo() {
        let mut e = EngineConfig::default();
        secret_keys_from_env(&mut e, |_| None).unwrap();
        assert!(e.issuer_key.is_none() && e.data_key.is_none());
        let good = "00".repeat(31) + "ff";
        secret_keys_from_env(&mut e, |v| {
            Some(good.clone()).filter(|_| v.ends_with("KEY"))
        })
        .unwrap();
        assert!(e.issuer_key.is_some() && e.data_key.is_some());
        let secret = "zz".repeat(32);
        let err = secret_keys_from_env(&mut EngineConfig::default(), |v| {
            (v == "ONECARD_DATA_KEY").then(|| secret.clone())
        })
        .unwrap_err();
        assert!(
            err.contains("ONECARD_DATA_KEY") && !err.contains("zz"),
            "{err}"
        );
        assert!(
            secret_keys_from_env(&mut EngineConfig::default(), |_| Some("abc".into())).is_err()
        );
        // Upper case and surrounding whitespace are fine; a sign, an odd length or 63 bytes
        // of digits are not.
        let upper = format!(" {} \n", "AB".repeat(32));
        secret_keys_from_env(&mut EngineConfig::default(), |_| Some(upper.clone())).unwrap();
        for bad in [
            "+f".repeat(32),
            "0".repeat(63),
            "0".repeat(66),
            "é".repeat(32),
        ] {
            assert!(
                secret_keys_from_env(&mut EngineConfig::default(), |_| Some(bad.clone())).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn threshold_defaults_to_the_cap_and_bad_values_are_named() {
        let cfg = NodeConfig::parse("[rules]\nwallet_cap = \"300.00\"\n").unwrap();
        assert_eq!(cfg.engine.rules.topup_threshold.to_string(), "300.00");
        let err = NodeConfig::parse("[rules]\nwallet_cap = \"3.001\"\n").unwrap_err();
        assert!(err.contains("wallet_cap"), "{err}");
        let err = NodeConfig::parse("[rules]\nwalet_cap = \"3\"\n").unwrap_err();
        assert!(err.contains("walet_cap"), "{err}");
    }
}
