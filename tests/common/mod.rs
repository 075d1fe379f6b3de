//! Helpers shared by the integration tests that drive the `onecard` binary.

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

#[allow(dead_code)] // not every test binary that includes this module uses it
/// Runs a command to completion, or kills it after `timeout`. (status, stdout, stderr);
/// status is `None` on a timeout.
pub fn run_with_timeout(
    cmd: &mut Command,
    timeout: Duration,
) -> (Option<ExitStatus>, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let drain = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    (
        status,
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    )
}

/// Every file below `dir`, recursively (the stores' files, for tests that damage or scan them).
#[allow(dead_code)] // not every test binary that includes this module uses it
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}
/// The newest modification time of the `.rs` and `Cargo.toml` files below `dir`.
fn newest_source(dir: &std::path::Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let t = if path.is_dir() {
            newest_source(&path)
        } else if path.extension().is_some_and(|e| e == "rs")
            || path.file_name().is_some_and(|n| n == "Cargo.toml")
        {
            entry.metadata().ok()?.modified().ok()
        } else {
            None
        };
        newest = newest.max(t);
    }
    newest
}

/// A binary of another package of the workspace, in this build's target directory and profile
/// (beside `onecard`). `env!("CARGO_BIN_EXE_…")` names only the binaries of the tests' own
/// package, and `cargo test -p onecard` builds no other package's binary: when `bin` is
/// missing or older than any source below the workspace directories `sources`, it is built
/// here (`cargo build -p PACKAGE --bin BIN --features FEATURES`). A workspace build
/// (`cargo nextest run --workspace --all-targets --all-features`, as CI runs) has built it
/// already.
#[allow(dead_code)] // not every test binary that includes this module uses it
pub fn workspace_binary(
    package: &str,
    bin: &str,
    features: &[&str],
    sources: &[&str],
) -> std::path::PathBuf {
    use std::path::Path;
    let onecard = Path::new(env!("CARGO_BIN_EXE_onecard"));
    let profile_dir = onecard.parent().expect("the binaries' directory");
    let path = profile_dir.join(format!("{bin}{}", std::env::consts::EXE_SUFFIX));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let newest = sources
        .iter()
        .filter_map(|d| newest_source(&root.join(d)))
        .max();
    let built = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
    if built.is_some() && built >= newest {
        return path;
    }
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "-p", package, "--bin", bin, "--profile", profile])
        .arg("--target-dir")
        .arg(profile_dir.parent().expect("the target directory"))
        .current_dir(root);
    if !features.is_empty() {
        build.args(["--features", &features.join(",")]);
    }
    let status = build
        .status()
        .unwrap_or_else(|e| panic!("run cargo to build {bin}: {e}"));
    assert!(status.success(), "building {bin} failed");
    path
}

/// A running `onecard serve` and the peers it talks to, for the HTTP API's tests.
pub mod node;
pub mod web;

/// The `onecard-sim` binary of this build (another package's binary: built here when missing
/// or older than its sources).
#[allow(dead_code)] // not every test binary that includes this module uses it
pub fn onecard_sim() -> std::path::PathBuf {
    let features: &[&str] = if cfg!(feature = "pcsc") {
        // As the workspace build has it, so that nothing is built twice.
        &["onecard-terminal/pcsc"]
    } else {
        &[]
    };
    workspace_binary(
        "onecard-sim",
        "onecard-sim",
        features,
        &[
            "simulator",
            "adapters",
            "terminal",
            "protocol",
            "engine",
            "storage",
        ],
    )
}

/// Starts `onecard-sim bank --listen 127.0.0.1:0 --data DATA ARGS…` (standard error passed
/// through) and waits until it says where it listens: the child and its base URL.
#[allow(dead_code)] // not every test binary that includes this module uses it
pub fn start_bank_sim(
    data: &std::path::Path,
    args: &[&std::ffi::OsStr],
) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(onecard_sim())
        .args(["bank", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start onecard-sim bank");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(url) = line.split("listening on ").nth(1) {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(base) => (child, base),
        Err(_) => {
            let _ = child.kill();
            panic!("the bank simulator did not start");
        }
    }
}
