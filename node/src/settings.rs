//! The `[node]` table of `config.toml`: where the node listens, where it keeps its data, TLS,
//! and the tuning of the API, the print queue and the webhooks. Every key is optional.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSettings {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// PEM files; with both, the node serves HTTPS (rustls). Without, it serves plain HTTP and
    /// only on a loopback address.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// HTTP worker threads; 0 = one per core.
    pub workers: usize,
    /// Largest request body accepted; a larger one gets 413.
    pub max_body_bytes: usize,
    /// How long a consumer session issued at the reader lasts.
    pub session_ttl_secs: u64,
    /// How long the one-time web sign-in code shown at the reader stays good.
    pub web_code_ttl_secs: u64,
    /// How often expired sessions and old idempotency records are removed from the store.
    pub sweep_secs: u64,
    /// How long a request's answer is kept for replay under its `Idempotency-Key`; after
    /// that the key may be used again.
    pub idempotency_ttl_secs: u64,
    /// An order not paid this long after it was created can no longer be paid.
    pub checkout_ttl_secs: u64,
    /// How often the node runs the engine's time-driven work (expiries, time releases, top-up
    /// retries).
    pub tick_interval_ms: u64,
    /// Seconds to finish requests in progress on SIGTERM before closing.
    pub shutdown_timeout_secs: u64,
    pub print_timeout_ms: u64,
    /// Longest wait between two attempts at an offline printer (the back-off doubles up to it).
    pub print_retry_max_ms: u64,
    pub webhook_timeout_ms: u64,
    /// Longest wait between two attempts at a merchant's webhook endpoint.
    pub webhook_retry_max_ms: u64,
    /// Threads delivering webhooks.
    pub webhook_workers: usize,
    /// A webhook event not delivered this long after it was queued is abandoned (recorded,
    /// counted in /metrics, no more attempts).
    pub webhook_give_up_after_secs: u64,
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            data_dir: PathBuf::from("./data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls_cert: None,
            tls_key: None,
            workers: 0,
            max_body_bytes: 64 * 1024,
            session_ttl_secs: 3600,
            web_code_ttl_secs: 300,
            sweep_secs: 60,
            idempotency_ttl_secs: 604_800,
            checkout_ttl_secs: 86_400,
            tick_interval_ms: 1000,
            shutdown_timeout_secs: 30,
            print_timeout_ms: 5000,
            print_retry_max_ms: 60_000,
            webhook_timeout_ms: 10_000,
            webhook_retry_max_ms: 300_000,
            webhook_workers: 4,
            webhook_give_up_after_secs: 259_200,
        }
    }
}

impl NodeSettings {
    /// From the `[node]` table (already parsed by the engine's config loader).
    pub fn from_table(table: &toml::Table) -> Result<NodeSettings, String> {
        let s: NodeSettings = toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e: toml::de::Error| format!("[node]: {}", e.message()))?;
        s.validate()?;
        Ok(s)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("[node]: tls_cert and tls_key go together".into());
        }
        if self.tls_cert.is_none() && !self.listen.ip().is_loopback() {
            return Err(format!(
                "[node]: plain HTTP is served only on a loopback address, not {}; configure \
                 tls_cert and tls_key to listen on the network",
                self.listen
            ));
        }
        if self.max_body_bytes < 1024 {
            return Err("[node]: max_body_bytes must be at least 1024".into());
        }
        if self.tick_interval_ms == 0
            || self.session_ttl_secs == 0
            || self.web_code_ttl_secs == 0
            || self.checkout_ttl_secs == 0
            || self.sweep_secs == 0
            || self.idempotency_ttl_secs == 0
        {
            return Err(
                "[node]: tick_interval_ms, session_ttl_secs, web_code_ttl_secs, checkout_ttl_secs, \
                 sweep_secs and idempotency_ttl_secs must be positive"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let t: toml::Table = toml::from_str("listen = \"127.0.0.1:9999\"\nworkers = 3").unwrap();
        let s = NodeSettings::from_table(&t).unwrap();
        assert_eq!(s.listen.port(), 9999);
        assert_eq!(s.workers, 3);
        assert_eq!(s.max_body_bytes, 64 * 1024);
    }

    #[test]
    fn plain_http_off_loopback_and_unknown_keys_are_refused() {
        let t: toml::Table = toml::from_str("listen = \"0.0.0.0:8080\"").unwrap();
        assert!(NodeSettings::from_table(&t)
            .unwrap_err()
            .contains("loopback"));
        let t: toml::Table = toml::from_str("lisen = \"127.0.0.1:1\"").unwrap();
        assert!(NodeSettings::from_table(&t).is_err());
    }
}
