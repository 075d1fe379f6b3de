//! The node over TLS (rustls) with a self-signed certificate: the reader program's link trusts
//! it when given the certificate, refuses it otherwise, and plain HTTP gets no answer.

mod common;

use common::node::*;
use onecard_terminal::http_link::{HttpLink, LinkOptions};

#[test]
fn the_node_serves_https_with_its_certificate_and_the_reader_trusts_only_that() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("self-signed certificate");
    let cert_pem = cert.cert.pem();
    let cert_path = dir.path().join("node.crt");
    let key_path = dir.path().join("node.key");
    std::fs::write(&cert_path, &cert_pem).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let config = dir.path().join("tls.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\ntick_interval_ms = 200\ntls_cert = {:?}\ntls_key = {:?}\n",
            cert_path, key_path
        ),
    )
    .unwrap();
    let node = NodeProc::start_with(&dir.path().join("data"), &[], Some(&config));
    assert!(node.base.starts_with("https://"), "{}", node.base);

    // Trusted: a real answer from the node over TLS (an unknown order, as JSON).
    let mut link = HttpLink::new(
        &node.base,
        LinkOptions {
            ca_cert_pem: Some(cert_pem.into_bytes()),
            ..LinkOptions::default()
        },
    )
    .unwrap();
    let err = link.checkout("ord_unknown").unwrap_err();
    assert!(err.0.contains("unknown"), "{err}");

    // Not trusted without the certificate.
    let mut untrusting = HttpLink::new(&node.base, LinkOptions::default()).unwrap();
    let err = untrusting.checkout("ord_unknown").unwrap_err();
    assert!(!err.0.contains("unknown to the node"), "{err}");

    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = node.base.replace("https://", "http://");
    let r = ureq::get(&format!("{plain}/healthz"))
        .timeout(std::time::Duration::from_secs(5))
        .call();
    assert!(
        !matches!(r, Ok(ref a) if a.status() == 200),
        "plain HTTP must not be served on the TLS port"
    );
}

#[test]
fn plain_http_off_loopback_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_onecard"))
        .args(["serve", "--listen", "0.0.0.0:0", "--data"])
        .arg(dir.path().join("data"))
        .env("ONECARD_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("loopback") && err.contains("tls_cert"),
        "{err}"
    );
}
