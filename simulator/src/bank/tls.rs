//! HTTPS for `onecard-sim bank`: `--tls-cert` and `--tls-key` (PEM) serve TLS instead of plain
//! HTTP, and `--client-ca` (PEM) requires of every client a certificate signed by that CA
//! (rustls' `WebPkiClientVerifier`): a client without one, or with one the CA did not sign, is
//! refused at the handshake, before any request is read. rustls 0.23 with the ring provider,
//! as the node serves HTTPS (node/src/lib.rs).
//!
//! [`rustls`] is re-exported for the programs and tests that call the simulator over TLS (they
//! need a `rustls::ClientConfig` of the same version for `ureq::AgentBuilder::tls_config`).

use std::path::Path;
use std::sync::Arc;

pub use rustls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The server's TLS configuration: its certificate chain and key, and, with `client_ca`, the
/// CA whose certificates clients must present. Every error names the flag and the file.
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
    client_ca: Option<&Path>,
) -> Result<rustls::ServerConfig, String> {
    let chain = certificates("--tls-cert", cert_file)?;
    let key = private_key(key_file)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certificates("--client-ca", ca)? {
                roots.add(c).map_err(|e| {
                    format!(
                        "--client-ca {}: not a usable CA certificate: {e}",
                        ca.display()
                    )
                })?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| format!("--client-ca {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder.with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "--tls-key {} is not the key of --tls-cert {}",
            key_file.display(),
            cert_file.display()
        ),
        e => format!(
            "--tls-cert {} and --tls-key {}: {e}",
            cert_file.display(),
            key_file.display()
        ),
    })
}

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{flag} {}: cannot read it: {e}", path.display()))
}

/// Every `CERTIFICATE` of a PEM file; at least one.
fn certificates(flag: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(flag, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{flag} {}: not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{flag} {}: no PEM CERTIFICATE in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read("--tls-key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            format!("--tls-key {}: no PEM PRIVATE KEY in it", path.display())
        }
        e => format!("--tls-key {}: not valid PEM: {e}", path.display()),
    })
}
