//! Recharge (F8) end to end, over the node's API: the operator issues a batch of prepaid
//! recharge codes (given once; a replay has them redacted); consumers redeem a code into the
//! wallet once (the same consumer again: the same answer; another consumer, or two at once:
//! one wins), under the cap (the rest to the bank, or refused); an expired code; deposits by
//! bank transfer; a brute-force run against the throttle. No code is stored in the clear, and
//! `onecard verify` replays it all.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::files_under;
use common::node::*;
use onecard_engine::cards::CardKey;
use onecard_sim::card::applet::CardApplet;
use serde_json::{json, Value};

const BOB_CARD: &str = "4000009876543210";
const BOB_BANK: &str = "DE02120300000000202051";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A node whose wallets are topped up only below 100.00, so that the wallet moves only by
/// what the test does.
fn start(dir: &std::path::Path) -> NodeProc {
    let cfg = dir.join("node.toml");
    std::fs::write(
        &cfg,
        "[rules]\ntopup_threshold = \"100.00\"\n[node]\ntick_interval_ms = 200\n",
    )
    .unwrap();
    NodeProc::start_with(&dir.join("data"), &[], Some(&cfg))
}

/// A consumer who can sign in: their world (reader, card key) and card number.
struct Person {
    world: World,
    card: &'static str,
    holder: &'static str,
    counter: u32,
}

impl Person {
    /// A fresh session (card and PIN at the consumer's reader, nothing paid).
    fn session(&mut self, node: &NodeProc) -> String {
        self.counter += 1;
        let mut card = MemoryCard(CardApplet::new(
            self.card.into(),
            self.holder.into(),
            CardKey::from_bytes(self.world.card_key),
            self.counter,
        ));
        let (_, answer) = sign_in(node, &self.world, &mut card, PIN);
        answer
            .and_then(|a| a.session)
            .expect("a consumer session")
            .token
    }
}

/// alice (wallet 500.00, bank 10000.00) and bob (wallet 100.00, bank 1000.00), each with a card
/// and a reader at 127.0.0.1.
fn people(node: &NodeProc) -> (Person, Person) {
    let w = setup(node, None, None);
    let a = admin(
        node,
        "/v1/admin/bank-accounts",
        json!({"account": BOB_BANK, "balance": "1000.00"}),
    );
    assert_eq!(a.status, 201, "{a:?}");
    let a = admin(
        node,
        "/v1/admin/consumers",
        json!({"consumer": "bob", "credit_limit": "100.00", "bank": BOB_BANK, "wallet": "100.00"}),
    );
    assert_eq!(a.status, 201, "{a:?}");
    let key = issue_card_with_reader(node, "bob", BOB_CARD, PIN, "reader-bob");
    let bob = World {
        card_key: key,
        reader_id: "reader-bob".into(),
        ..w.clone()
    };
    (
        Person {
            world: w,
            card: CARD,
            holder: "alice",
            counter: 0,
        },
        Person {
            world: bob,
            card: BOB_CARD,
            holder: "bob",
            counter: 0,
        },
    )
}

fn issue(node: &NodeProc, key: Option<&str>, body: &Value) -> Answer {
    call(
        "POST",
        &node.url("/v1/admin/recharge-batches"),
        Some(ADMIN_TOKEN),
        key,
        Some(body),
    )
}

fn codes(a: &Answer) -> Vec<String> {
    a.body["codes"]
        .as_array()
        .unwrap_or_else(|| panic!("no codes: {a:?}"))
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect()
}

fn redeem(node: &NodeProc, session: &str, code: &str, overflow: Option<&str>) -> Answer {
    let mut body = json!({ "code": code });
    if let Some(o) = overflow {
        body["overflow"] = json!(o);
    }
    call(
        "POST",
        &node.url("/v1/consumer/recharges"),
        Some(session),
        None,
        Some(&body),
    )
}

fn deposit(node: &NodeProc, session: &str, key: Option<&str>, amount: &str) -> Answer {
    call(
        "POST",
        &node.url("/v1/consumer/deposits"),
        Some(session),
        key,
        Some(&json!({ "amount": amount })),
    )
}

fn wallet(node: &NodeProc, session: &str) -> String {
    let a = call(
        "GET",
        &node.url("/v1/consumer/account"),
        Some(session),
        None,
        None,
    );
    assert_eq!(a.status, 200, "{a:?}");
    a.body["wallet"].as_str().unwrap().to_string()
}

fn inbox_types(node: &NodeProc, session: &str) -> Vec<String> {
    let a = call(
        "GET",
        &node.url("/v1/consumer/notifications"),
        Some(session),
        None,
        None,
    );
    assert_eq!(a.status, 200, "{a:?}");
    a.body["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["type"].as_str().unwrap().to_string())
        .collect()
}

fn metric(node: &NodeProc, name: &str) -> f64 {
    let a = call("GET", &node.url("/metrics"), None, None, None);
    let text = a.body.as_str().unwrap_or_default().to_string();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

/// The simulated bank's balance of `account` in a stopped node's data: the engine opened on
/// it with the node's keys (the bank's accounts are in the engine's log).
fn bank_balance(data: &std::path::Path, account: &str) -> String {
    let mut cfg = onecard_engine::EngineConfig::default();
    onecard_engine::config::secret_keys_from_env(&mut cfg, |v| match v {
        "ONECARD_DATA_KEY" => Some(DATA_KEY.to_string()),
        "ONECARD_ISSUER_KEY" => Some(ISSUER_KEY.to_string()),
        _ => None,
    })
    .unwrap();
    actix_rt::System::new().block_on(async {
        let bank = onecard_engine::SimBank::open(data).unwrap();
        let engine = onecard_engine::Engine::open(
            data,
            cfg,
            Arc::new(onecard_engine::SimBankPort(bank.clone())),
        )
        .await
        .unwrap();
        let b = bank.balance(account).map(|a| a.to_string());
        engine.close().await.unwrap();
        b.unwrap_or_else(|| panic!("no bank account {account}"))
    })
}

fn verify(data: &std::path::Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_onecard"))
        .args(["verify", "--data"])
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "verify failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn codes_are_given_once_redeemed_once_within_the_cap_and_never_stored_in_the_clear() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = start(dir.path());
    let (mut alice, mut bob) = people(&node);
    let expires = now() + 3600;
    let batch =
        json!({"batch_id": "B-2026-1", "count": 4, "value": "25.00", "expires_at": expires});

    // Issuing: an Idempotency-Key is required; the codes are given once.
    let no_key = issue(&node, None, &batch);
    assert_eq!(no_key.status, 400, "{no_key:?}");
    assert_eq!(no_key.body["error"]["code"], "idempotency_key_required");
    let first = issue(&node, Some("batch-1"), &batch);
    assert_eq!(first.status, 201, "{first:?}");
    assert_eq!(first.body["count"], 4);
    assert_eq!(first.body["value"], "25.00");
    let codes = codes(&first);
    assert_eq!(codes.len(), 4);
    let alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    for c in &codes {
        let groups: Vec<&str> = c.split('-').collect();
        assert_eq!(groups.len(), 5, "{c}");
        assert!(
            groups
                .iter()
                .all(|g| g.len() == 4 && g.chars().all(|ch| alphabet.contains(ch))),
            "{c}"
        );
    }
    // A replay: the same answer with the codes redacted.
    let replay = issue(&node, Some("batch-1"), &batch);
    assert_eq!(replay.status, 201, "{replay:?}");
    assert!(replay.replayed);
    assert_eq!(replay.body["codes"], Value::Null);
    assert_eq!(replay.body["batch_id"], "B-2026-1");
    // The same batch under another key: the batch, no codes; with other content: 409.
    let again = issue(&node, Some("batch-1-again"), &batch);
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.body["codes"], Value::Null);
    let mut other = batch.clone();
    other["value"] = json!("50.00");
    let conflict = issue(&node, Some("batch-1-other"), &other);
    assert_eq!(conflict.status, 409, "{conflict:?}");
    assert_eq!(conflict.body["error"]["code"], "batch_conflict");
    for bad in [
        json!({"batch_id": "B-x", "count": 0, "value": "25.00", "expires_at": expires}),
        json!({"batch_id": "B-x", "count": 10001, "value": "25.00", "expires_at": expires}),
        json!({"batch_id": "B-x", "count": 1, "value": "0.00", "expires_at": expires}),
        json!({"batch_id": "B-x", "count": 1, "value": "25.00", "expires_at": now() - 1}),
        json!({"batch_id": "", "count": 1, "value": "25.00", "expires_at": expires}),
    ] {
        let a = issue(&node, Some("bad"), &bad);
        assert_eq!(a.status, 422, "{bad}: {a:?}");
    }
    // A batch that expires in two seconds.
    let short = issue(
        &node,
        Some("batch-2"),
        &json!({"batch_id": "B-short", "count": 1, "value": "10.00", "expires_at": now() + 2}),
    );
    assert_eq!(short.status, 201, "{short:?}");
    let expired_code = self::codes(&short).remove(0);

    let sa = alice.session(&node);
    let sb = bob.session(&node);

    // Redeemed into the wallet, typed in lower case with spaces instead of dashes.
    let typed = codes[0].to_lowercase().replace('-', " ");
    let r = redeem(&node, &sa, &typed, None);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["to_wallet"], "25.00");
    assert_eq!(r.body["to_bank"], "0.00");
    assert_eq!(r.body["wallet"], "525.00");
    assert_eq!(r.body["batch"], "B-2026-1");
    assert!(r.body["credit"].as_str().unwrap().starts_with("rc-"));
    // Again by alice: the same answer, nothing moves twice.
    let again = redeem(&node, &sa, &codes[0], None);
    assert_eq!(again.status, 200, "{again:?}");
    for f in ["credit", "to_wallet", "to_bank", "redeemed_at"] {
        assert_eq!(again.body[f], r.body[f], "{f}");
    }
    assert_eq!(wallet(&node, &sa), "525.00");
    // By bob: redeemed already.
    let taken = redeem(&node, &sb, &codes[0], None);
    assert_eq!(taken.status, 409, "{taken:?}");
    assert_eq!(taken.body["error"]["code"], "code_redeemed");
    assert_eq!(wallet(&node, &sb), "100.00");

    // An expired code.
    std::thread::sleep(Duration::from_millis(2100));
    let late = redeem(&node, &sa, &expired_code, None);
    assert_eq!(late.status, 410, "{late:?}");
    assert_eq!(late.body["error"]["code"], "code_expired");
    // A wrong code, and no code at all.
    let wrong = redeem(&node, &sa, "AAAA-BBBB-CCCC-DDDD-EEEE", None);
    assert_eq!(wrong.status, 404, "{wrong:?}");
    assert_eq!(wrong.body["error"]["code"], "invalid_code");
    let malformed = redeem(&node, &sa, "AAAA-BBBB", None);
    assert_eq!(malformed.status, 422, "{malformed:?}");
    let bad_overflow = redeem(&node, &sa, &codes[1], Some("sometimes"));
    assert_eq!(bad_overflow.status, 422, "{bad_overflow:?}");

    // Deposits by bank transfer: an Idempotency-Key is required; within the cap; once per key.
    let no_key = deposit(&node, &sa, None, "10.00");
    assert_eq!(no_key.status, 400, "{no_key:?}");
    assert_eq!(no_key.body["error"]["code"], "idempotency_key_required");
    let d = deposit(&node, &sa, Some("dep-1"), "4460.00");
    assert_eq!(d.status, 201, "{d:?}");
    assert_eq!(d.body["amount"], "4460.00");
    assert_eq!(d.body["wallet"], "4985.00");
    let masked = format!("{}{}", "*".repeat(BANK.len() - 4), &BANK[BANK.len() - 4..]);
    assert_eq!(d.body["bank_account"], masked.as_str());
    let d2 = deposit(&node, &sa, Some("dep-1"), "4460.00");
    assert_eq!(d2.status, 201, "{d2:?}");
    assert!(d2.replayed);
    assert_eq!(d2.body["credit"], d.body["credit"]);
    assert_eq!(wallet(&node, &sa), "4985.00");
    // Above the cap's room (15.00): refused, nothing moves.
    let over = deposit(&node, &sa, Some("dep-2"), "15.01");
    assert_eq!(over.status, 422, "{over:?}");
    assert_eq!(over.body["error"]["code"], "refused_amount");
    let zero = deposit(&node, &sa, Some("dep-3"), "0.00");
    assert_eq!(zero.status, 422, "{zero:?}");
    assert_eq!(wallet(&node, &sa), "4985.00");

    // Near the cap: refused when the consumer says so (the code stays usable), else the rest
    // goes to the bank account.
    let refused = redeem(&node, &sa, &codes[1], Some("refuse"));
    assert_eq!(refused.status, 422, "{refused:?}");
    assert_eq!(refused.body["error"]["code"], "refused_amount");
    assert_eq!(wallet(&node, &sa), "4985.00");
    let split = redeem(&node, &sa, &codes[1], Some("bank"));
    assert_eq!(split.status, 200, "{split:?}");
    assert_eq!(split.body["to_wallet"], "15.00");
    assert_eq!(split.body["to_bank"], "10.00");
    assert_eq!(split.body["wallet"], "5000.00");

    // Two consumers redeem one code at once: exactly one gets it.
    let (node_ref, code) = (&node, codes[2].clone());
    let (ra, rb) = std::thread::scope(|s| {
        let a = s.spawn(|| redeem(node_ref, &sa, &code, None));
        let b = s.spawn(|| redeem(node_ref, &sb, &code, None));
        (a.join().unwrap(), b.join().unwrap())
    });
    let mut statuses = [ra.status, rb.status];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{ra:?}\n{rb:?}");
    let bob_won = rb.status == 200;
    assert_eq!(
        wallet(&node, &sb),
        if bob_won { "125.00" } else { "100.00" }
    );
    // alice's wallet is full: had she won, it all went to her bank account.
    assert_eq!(wallet(&node, &sa), "5000.00");
    if !bob_won {
        assert_eq!(ra.body["to_bank"], "25.00", "{ra:?}");
    }

    // Told in the inbox, with the cause.
    let types = inbox_types(&node, &sa);
    assert!(
        types.iter().filter(|t| *t == "recharge.redeemed").count() >= 2,
        "{types:?}"
    );
    assert_eq!(
        types.iter().filter(|t| *t == "deposit.made").count(),
        1,
        "{types:?}"
    );
    assert!(metric(&node, "onecard_recharge_wrong_codes_total") >= 1.0);

    assert!(node.terminate().success(), "{}", node.log());
    verify(&node.data);

    // No code is stored in the clear: neither as given nor in its normal form.
    let stored: Vec<(std::path::PathBuf, Vec<u8>)> = files_under(&node.data)
        .into_iter()
        .map(|f| {
            let b = std::fs::read(&f).unwrap();
            (f, b)
        })
        .collect();
    assert!(
        stored.iter().any(|(_, b)| contains(b, b"rc/")),
        "no recharge code records (rc/…) in the data: the test is not looking at the store"
    );
    for c in codes.iter().chain([&expired_code]) {
        let bare = c.replace('-', "");
        for (f, b) in &stored {
            for needle in [c.as_str(), bare.as_str(), &c.to_lowercase()] {
                assert!(
                    !contains(b, needle.as_bytes()),
                    "a recharge code is in the clear in {}",
                    f.display()
                );
            }
        }
    }

    // The bank side: alice's account (10000.00, less the 500.00 her wallet was opened with)
    // paid the deposit (4460.00) and got the overflow (10.00), and the whole third code had
    // she won it; bob's (1000.00 less his opening 100.00) moved by nothing here.
    let alice_bank = if bob_won { "5050.00" } else { "5075.00" };
    assert_eq!(bank_balance(&node.data, BANK), alice_bank);
    assert_eq!(bank_balance(&node.data, BOB_BANK), "900.00");
    // And the journal's bank operations, which reconciliation matches a statement against:
    // the deposit a debit of 4460.00, the overflow a credit of 10.00 (the recharge batch's
    // clearing account is no bank's).
    let ops: Vec<(String, String)> = onecard_engine::bank_ops::journal_bank_ops(&node.data, None)
        .unwrap()
        .into_iter()
        .filter(|o| o.at > 0)
        .map(|o| (format!("{:?}", o.kind), o.amount.to_string()))
        .collect();
    assert!(
        ops.contains(&("Debit".to_string(), "4460.00".to_string())),
        "{ops:?}"
    );
    assert!(
        ops.contains(&("Credit".to_string(), "10.00".to_string())),
        "{ops:?}"
    );
    assert!(
        !ops.iter().any(|(_, a)| a == "15.00"),
        "a recharge's overflow read as a debit: {ops:?}"
    );
}

#[test]
fn a_brute_force_run_is_throttled_per_consumer_and_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    let (mut alice, mut bob) = people(&node);
    let issued = issue(
        &node,
        Some("batch"),
        &json!({"batch_id": "B-1", "count": 1, "value": "5.00", "expires_at": now() + 3600}),
    );
    assert_eq!(issued.status, 201, "{issued:?}");
    let right = codes(&issued).remove(0);
    let sa = alice.session(&node);
    let sb = bob.session(&node);

    // Five wrong codes are looked up and refused; from then on alice is refused at once.
    let guess = |i: usize| format!("ZZZZ-ZZZZ-ZZZZ-ZZZZ-{i:04}");
    for i in 0..5 {
        let a = redeem(&node, &sa, &guess(i), None);
        assert_eq!(a.status, 404, "guess {i}: {a:?}");
    }
    let mut throttled = 0;
    for i in 5..40 {
        let a = redeem(&node, &sa, &guess(i), None);
        assert_eq!(a.status, 429, "guess {i}: {a:?}");
        assert_eq!(a.body["error"]["code"], "too_many_wrong_codes");
        throttled += 1;
    }
    // With Retry-After: about the rest of the 15 minutes.
    let raw = agent()
        .post(&node.url("/v1/consumer/recharges"))
        .set("Authorization", &format!("Bearer {sa}"))
        .set("Content-Type", "application/json")
        .send_string(&json!({"code": guess(99)}).to_string());
    let resp = match raw {
        Err(ureq::Error::Status(429, r)) => r,
        other => panic!("expected 429: {other:?}"),
    };
    let retry: u64 = resp.header("retry-after").unwrap().parse().unwrap();
    assert!((800..=900).contains(&retry), "Retry-After {retry}");
    throttled += 1;
    // The right code is refused too while throttled: nothing is looked up.
    let a = redeem(&node, &sa, &right, None);
    assert_eq!(a.status, 429, "{a:?}");
    throttled += 1;
    // bob has guessed nothing, but comes from the same address.
    let b = redeem(&node, &sb, &right, None);
    assert_eq!(b.status, 429, "{b:?}");
    throttled += 1;
    assert_eq!(wallet(&node, &sa), "500.00");
    assert_eq!(wallet(&node, &sb), "100.00");
    assert_eq!(metric(&node, "onecard_recharge_wrong_codes_total"), 5.0);
    assert_eq!(
        metric(&node, "onecard_recharge_throttled_total"),
        f64::from(throttled)
    );
    // Deposits are not recharge codes: not throttled.
    let d = deposit(&node, &sa, Some("d-1"), "1.00");
    assert_eq!(d.status, 201, "{d:?}");
}
