//! The ISO 20022 bank adapter over HTTPS with client-certificate authentication, against the
//! bank simulator (`onecard-sim bank --tls-cert --tls-key --client-ca`) as a real process on
//! a loopback port. Certificates are made here with rcgen: a CA, the bank's certificate for
//! 127.0.0.1 and localhost signed by it, the node's client certificate signed by it, and a
//! second CA, trusted by nobody, with a client certificate of its own.
//!
//! - With the CA as `tls_root_cert` and the CA's client certificate, a debit is booked.
//! - Without a client certificate, with one of the other CA, or trusting another root than the
//!   bank's CA, the handshake fails: the debit is `Unavailable` and nothing is booked.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use futures::executor::block_on;
use onecard_adapters::iso20022::bank::{BankSettings, Iso20022Bank};
use onecard_adapters::{BankAnswer, BankError, BankOp, BankPort};
use onecard_engine::Amount;
use onecard_sim::bank::tls::rustls;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde_json::{json, Value};

const CONSUMER: &str = "CONSUMER-TLS-1";
const OWN_ACCOUNT: &str = "ONECARD-SETTLEMENT";

/// A certificate authority: its certificate and key, to sign others.
struct Ca {
    cert: Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("a CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("a self-signed CA");
        Ca { cert, key }
    }

    /// A leaf certificate signed by this CA, as (certificate PEM, key PEM).
    fn issue(&self, name: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let key = KeyPair::generate().expect("a leaf key");
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("a signed leaf");
        (cert.pem(), key.serialize_pem())
    }
}

/// Every PEM file of a test, in its temporary directory.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    other_ca: PathBuf,
    other_client_cert: PathBuf,
    other_client_key: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let write = |name: &str, pem: &str| {
            let p = dir.join(name);
            std::fs::write(&p, pem).expect("write a PEM file");
            p
        };
        let ca = Ca::new("OneCard test bank CA");
        let (server_cert, server_key) = ca.issue(
            "bank simulator",
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) =
            ca.issue("onecard node", &[], ExtendedKeyUsagePurpose::ClientAuth);
        let other = Ca::new("Untrusted CA");
        let (other_client_cert, other_client_key) =
            other.issue("intruder", &[], ExtendedKeyUsagePurpose::ClientAuth);
        Pki {
            ca: write("ca.pem", &ca.cert.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server.key", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client.key", &client_key),
            other_ca: write("other-ca.pem", &other.cert.pem()),
            other_client_cert: write("other-client.pem", &other_client_cert),
            other_client_key: write("other-client.key", &other_client_key),
        }
    }
}

/// A rustls client configuration trusting `root`, presenting `client` (certificate, key).
fn client_tls(root: &Path, client: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(root).expect("the root") {
        roots.add(c.expect("a root certificate")).expect("trusted");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .expect("the client certificate")
                .collect::<Result<Vec<_>, _>>()
                .expect("client certificates");
            let key = PrivateKeyDer::from_pem_file(key).expect("the client key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// `onecard-sim bank` as a process over HTTPS; killed (SIGKILL) when dropped. Its admin calls
/// go through an agent that trusts the test CA and presents the test client certificate.
struct BankSim {
    child: Child,
    base: String,
    admin: ureq::Agent,
}

impl BankSim {
    fn start(data: &Path, tls_flags: &[&Path], pki: &Pki) -> BankSim {
        let args: Vec<&std::ffi::OsStr> = tls_flags.iter().map(|p| p.as_os_str()).collect();
        let (child, base) = common::start_bank_sim(data, &args);
        let admin = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(10))
            .tls_config(client_tls(
                &pki.ca,
                Some((&pki.client_cert, &pki.client_key)),
            ))
            .build();
        BankSim { child, base, admin }
    }

    /// The simulator with HTTPS and client-certificate authentication by the test CA.
    fn start_mtls(data: &Path, pki: &Pki) -> BankSim {
        let flags: [&Path; 6] = [
            Path::new("--tls-cert"),
            &pki.server_cert,
            Path::new("--tls-key"),
            &pki.server_key,
            Path::new("--client-ca"),
            &pki.ca,
        ];
        BankSim::start(data, &flags, pki)
    }

    fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let req = self.admin.request(method, &format!("{}{path}", self.base));
        let result = match body {
            Some(b) => req
                .set("Content-Type", "application/json")
                .send_string(&b.to_string()),
            None => req.call(),
        };
        let resp = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = resp.status();
        let text = resp.into_string().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    fn open_account(&self, account: &str, balance: &str) {
        let (status, body) = self.admin(
            "POST",
            "/admin/accounts",
            Some(json!({"account": account, "balance": balance})),
        );
        assert_eq!(status, 201, "{body}");
    }

    /// The balance of `account`, or `None` if the bank does not know it.
    fn balance(&self, account: &str) -> Option<String> {
        let (status, body) = self.admin("GET", &format!("/admin/accounts/{account}"), None);
        match status {
            200 => Some(body["balance"].as_str().expect("balance").to_string()),
            404 => None,
            _ => panic!("GET /admin/accounts/{account}: {status} {body}"),
        }
    }

    fn totals(&self) -> Value {
        let (status, body) = self.admin("GET", "/admin/totals", None);
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Nothing was ever booked: no message, the consumer's balance untouched.
    fn assert_nothing_booked(&self) {
        let totals = self.totals();
        assert_eq!(totals["messages"], 0, "{totals}");
        assert_eq!(totals["bookings"], 0, "{totals}");
        assert_eq!(totals["total"], "100.00", "{totals}");
        assert_eq!(self.balance(CONSUMER).as_deref(), Some("100.00"));
        assert_eq!(self.balance(OWN_ACCOUNT), None);
    }
}

impl Drop for BankSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Adapter settings for the simulator at `base`: fast failures (one attempt, short waits).
fn settings(base: &str, root: &Path, client: Option<(&Path, &Path)>) -> BankSettings {
    assert!(base.starts_with("https://"), "{base}");
    let mut s = BankSettings::for_endpoint(base, "EUR");
    s.retries = 1;
    s.retry_backoff = Duration::from_millis(50);
    s.timeout = Duration::from_secs(5);
    s.connect_timeout = Duration::from_secs(2);
    s.pending_wait = Duration::from_millis(500);
    s.tls_root_cert = Some(root.to_path_buf());
    s.client_cert = client.map(|(c, _)| c.to_path_buf());
    s.client_key = client.map(|(_, k)| k.to_path_buf());
    s
}

fn debit(id: &str) -> BankOp {
    BankOp {
        id: id.into(),
        account: CONSUMER.into(),
        amount: Amount::from_cents(2_500),
    }
}

/// Opens the adapter with `settings` in `dir`, performs one debit, closes the adapter.
fn debit_through(settings: BankSettings, dir: &Path, id: &str) -> Result<BankAnswer, BankError> {
    let adapter = Iso20022Bank::open(settings, dir, None).expect("the adapter opens");
    let answer = block_on(adapter.debit(debit(id)));
    adapter.close();
    answer
}

fn assert_refused(answer: Result<BankAnswer, BankError>, what: &str) {
    match answer {
        Err(BankError::Unavailable(reason)) => eprintln!("{what}: refused: {reason}"),
        other => panic!("{what}: expected BankError::Unavailable, got {other:?}"),
    }
}

#[test]
fn a_debit_over_https_with_a_client_certificate_is_booked() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let bank = BankSim::start_mtls(&dir.path().join("bank"), &pki);
    assert!(bank.base.starts_with("https://127.0.0.1:"), "{}", bank.base);
    bank.open_account(CONSUMER, "100.00");

    let s = settings(
        &bank.base,
        &pki.ca,
        Some((&pki.client_cert, &pki.client_key)),
    );
    let answer = debit_through(s, &dir.path().join("node"), "tls-debit-1");
    assert_eq!(answer, Ok(BankAnswer::Done));

    assert_eq!(bank.balance(CONSUMER).as_deref(), Some("75.00"));
    assert_eq!(bank.balance(OWN_ACCOUNT).as_deref(), Some("25.00"));
    let totals = bank.totals();
    assert_eq!(totals["messages"], 1, "{totals}");
    assert_eq!(totals["total"], "100.00", "{totals}");
}

#[test]
fn a_client_without_a_certificate_is_refused_at_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let bank = BankSim::start_mtls(&dir.path().join("bank"), &pki);
    bank.open_account(CONSUMER, "100.00");

    let s = settings(&bank.base, &pki.ca, None);
    assert_refused(
        debit_through(s, &dir.path().join("node"), "tls-debit-2"),
        "no client certificate",
    );
    bank.assert_nothing_booked();

    // The admin calls are refused alike without a certificate.
    let bare = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .tls_config(client_tls(&pki.ca, None))
        .build();
    let r = bare.get(&format!("{}/admin/totals", bank.base)).call();
    assert!(
        matches!(r, Err(ureq::Error::Transport(_))),
        "an admin call without a client certificate: {r:?}"
    );
}

#[test]
fn a_client_certificate_of_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let bank = BankSim::start_mtls(&dir.path().join("bank"), &pki);
    bank.open_account(CONSUMER, "100.00");

    let s = settings(
        &bank.base,
        &pki.ca,
        Some((&pki.other_client_cert, &pki.other_client_key)),
    );
    assert_refused(
        debit_through(s, &dir.path().join("node"), "tls-debit-3"),
        "a client certificate of an untrusted CA",
    );
    bank.assert_nothing_booked();
}

#[test]
fn a_bank_whose_certificate_the_node_does_not_trust_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let bank = BankSim::start_mtls(&dir.path().join("bank"), &pki);
    bank.open_account(CONSUMER, "100.00");

    // A valid client certificate, but the root trusted is not the bank's CA.
    let s = settings(
        &bank.base,
        &pki.other_ca,
        Some((&pki.client_cert, &pki.client_key)),
    );
    assert_refused(
        debit_through(s, &dir.path().join("node"), "tls-debit-4"),
        "a server certificate of an untrusted root",
    );
    bank.assert_nothing_booked();
}

#[test]
fn without_client_ca_the_bank_serves_https_to_any_client() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let flags: [&Path; 4] = [
        Path::new("--tls-cert"),
        &pki.server_cert,
        Path::new("--tls-key"),
        &pki.server_key,
    ];
    let bank = BankSim::start(&dir.path().join("bank"), &flags, &pki);
    assert!(bank.base.starts_with("https://"), "{}", bank.base);
    bank.open_account(CONSUMER, "100.00");

    let s = settings(&bank.base, &pki.ca, None);
    let answer = debit_through(s, &dir.path().join("node"), "tls-debit-5");
    assert_eq!(answer, Ok(BankAnswer::Done));
    assert_eq!(bank.balance(CONSUMER).as_deref(), Some("75.00"));
}

#[test]
fn unreadable_or_invalid_pem_files_stop_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a PEM file\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let run = |flags: &[&Path], expect: &str| {
        let mut cmd = Command::new(common::onecard_sim());
        cmd.args(["bank", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir.path().join("bank"))
            .args(flags);
        let (status, stdout, stderr) = common::run_with_timeout(&mut cmd, Duration::from_secs(60));
        let status = status.expect("the simulator stops");
        assert!(!status.success(), "{flags:?}: started: {stdout}");
        assert!(
            !stdout.contains("listening"),
            "{flags:?}: listened: {stdout}"
        );
        assert!(stderr.contains(expect), "{flags:?}: {stderr}");
    };
    let (cert, key, ca) = (
        Path::new("--tls-cert"),
        Path::new("--tls-key"),
        Path::new("--client-ca"),
    );
    run(&[cert, &missing, key, &pki.server_key], "--tls-cert");
    run(&[cert, &missing, key, &pki.server_key], "cannot read");
    run(
        &[cert, &garbage, key, &pki.server_key],
        "no PEM CERTIFICATE",
    );
    run(
        &[cert, &pki.server_cert, key, &garbage],
        "no PEM PRIVATE KEY",
    );
    // The key of another certificate.
    run(
        &[cert, &pki.server_cert, key, &pki.client_key],
        "is not the key of --tls-cert",
    );
    run(
        &[cert, &pki.server_cert, key, &pki.server_key, ca, &garbage],
        "--client-ca",
    );
    run(
        &[cert, &pki.server_cert, key, &pki.server_key, ca, &missing],
        "cannot read",
    );
    // Flags that need each other.
    run(&[cert, &pki.server_cert], "--tls-key");
    run(&[ca, &pki.ca], "--tls-cert");
}
