//! I10 end to end: no PIN, card key, full card number or full bank account number is stored
//! or logged in the clear.
//!
//! Runs the real `onecard demo` on an empty data directory (three cards issued, readers
//! registered, every order paid at a reader with the card and the PIN, a wrong PIN refused,
//! top-ups and a refund to a bank account), then looks for every demo PIN, card number and
//! bank account, as bytes, in everything the binary printed and in every file of the data
//! directory (the log, the view's checkpoint and the node store; the simulated bank's accounts
//! ride on the same log, under their references). The demo's secrets are repeated here from
//! `src/demo.rs`; the positive checks (the PIN hashes and bank references are in the store,
//! the masked numbers and the bank balances are in the output) make sure the test looks in the
//! right places and would notice if the demo changed them.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

mod common;
use common::{files_under, run_with_timeout};

/// The demo's PINs (`src/demo.rs`, `DEMO_PINS`): six digits that appear nowhere else.
const DEMO_PINS: [&str; 3] = ["418273", "529384", "630495"];
/// The demo's card numbers (`src/demo.rs`, `demo_card_number`): sixteen digits.
const DEMO_CARDS: [&str; 3] = ["4000000000000001", "4000000000000002", "4000000000000003"];
/// The demo's consumers' bank accounts (`src/demo.rs`).
const DEMO_BANK_ACCOUNTS: [&str; 3] = ["alice-bank", "bob-bank", "carol-bank"];
/// Generous: the demo takes seconds (Argon2id hashes included) on a debug build.
const TIMEOUT: Duration = Duration::from_secs(300);

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether `bytes` holds a bank reference: `bk-` and 32 lowercase hex digits.
fn contains_bank_ref(bytes: &[u8]) -> bool {
    bytes.windows(35).any(|w| {
        w.starts_with(b"bk-")
            && w[3..]
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    })
}

#[test]
fn the_demo_stores_and_prints_no_pin_no_full_card_number_and_no_bank_account() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_onecard"));
    // From the temporary directory: no `config.toml` is picked up, the defaults are used.
    cmd.current_dir(tmp.path())
        .args(["demo", "--data"])
        .arg(&data);
    let (status, stdout, stderr) = run_with_timeout(&mut cmd, TIMEOUT);
    let status = status.unwrap_or_else(|| panic!("the demo did not finish within {TIMEOUT:?}"));
    assert!(status.success(), "demo failed:\n{stdout}\n{stderr}");

    let output = format!("{stdout}\n{stderr}");
    // Everything the node wrote: the log, the view's checkpoint, the node store.
    let node_store = data.clone();
    let files = files_under(&node_store);
    assert!(
        !files.is_empty(),
        "the demo left no files in {}",
        node_store.display()
    );
    let stored: Vec<(PathBuf, Vec<u8>)> = files
        .into_iter()
        .map(|f| {
            let bytes = std::fs::read(&f).expect("read a stored file");
            (f, bytes)
        })
        .collect();

    // The test looks where the secrets would be: the cards' tokens and keyed PIN verifiers
    // (64 hex digits each, as the journal encodes a string: its length as u64 LE first) are in
    // the store, the cards are shown (masked) in the output.
    assert!(
        stored
            .iter()
            .map(|(_, b)| encoded_hex64_count(b))
            .sum::<usize>()
            >= 2 * DEMO_CARDS.len(),
        "no card tokens and PIN verifiers in the store: the test is not looking at the node's store"
    );
    // Bank accounts are stored by reference (`bk-` + 32 hex digits), and the money did reach
    // the accounts themselves: the bank's own store knows them.
    assert!(
        stored.iter().any(|(_, b)| contains_bank_ref(b)),
        "no bank reference (bk-…) in the node's store"
    );
    for who in ["alice", "bob", "carol"] {
        assert!(
            output.contains(&format!("bank:{who}")),
            "the demo no longer shows {who}'s bank balance: the demo's accounts changed"
        );
    }
    for (i, number) in DEMO_CARDS.iter().enumerate() {
        let masked = format!("************{}", &number[number.len() - 4..]);
        assert!(
            output.contains(&masked),
            "card {} is not shown masked ({masked}) in the output:\n{output}",
            i + 1
        );
    }
    assert!(
        output.contains("invariants I1-I6 and I8: ok"),
        "the demo did not run to its end:\n{output}"
    );
    // The node's security log (standard error) records the refused swipe and the wrong PIN,
    // with the card masked.
    let refused = stderr
        .lines()
        .find(|l| l.contains("swipe refused"))
        .unwrap_or_else(|| panic!("no refused swipe in the node's log:\n{stderr}"));
    assert!(refused.contains("************0001"), "{refused}");
    assert!(
        stderr.contains("authentication refused") && stderr.contains("WrongPin"),
        "no wrong PIN in the node's log:\n{stderr}"
    );

    // I10: no PIN, no full card number, anywhere.
    let secrets = DEMO_PINS
        .iter()
        .map(|p| ("PIN", *p))
        .chain(DEMO_CARDS.iter().map(|n| ("card number", *n)))
        .chain(DEMO_BANK_ACCOUNTS.iter().map(|a| ("bank account", *a)));
    for (what, secret) in secrets {
        assert!(
            !output.contains(secret),
            "{what} {secret} in the demo's output:\n{output}"
        );
        for (file, bytes) in &stored {
            assert!(
                !contains(bytes, secret.as_bytes()),
                "{what} {secret} stored in the clear in {}",
                file.display()
            );
        }
    }
}

/// How many strings of 64 lowercase hex digits, encoded with their length first (u64 LE, as
/// the journal and the view encode a string), `bytes` holds.
fn encoded_hex64_count(bytes: &[u8]) -> usize {
    let mut prefix = [0u8; 8];
    prefix[0] = 64;
    bytes
        .windows(8 + 64)
        .filter(|w| {
            w[..8] == prefix
                && w[8..]
                    .iter()
                    .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        })
        .count()
}
