//! Salaries (F12) end to end, over the node's API: an employer registered by the operator
//! uploads payroll batches (CSV or JSON); a bad file is refused whole, every bad line named,
//! nothing stored or paid; a good batch is funded from the employer's bank account and paid
//! line by line into wallets (the rest above the cap to the bank account) and bank accounts;
//! a failing line fails alone; an unfunded batch pays nothing; every employee and the employer
//! are told; the batch id is idempotent; and a SIGKILL in the middle of a batch of 300 lines
//! pays no line twice and leaves a report the restarted node completes. Balances are read
//! back from the data directory with the engine itself once the node has stopped, and
//! `onecard verify` replays every run.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::node::*;
use onecard_engine::cards::{CardKey, IssuerKey};
use onecard_engine::feed::FeedKind;
use onecard_engine::{Amount, CreditSource, DataKey, Engine, EngineConfig, SimBank, SimBankPort};
use onecard_sim::card::applet::CardApplet;
use serde_json::{json, Value};

/// A node whose wallets are topped up only below 100.00 (so a wallet shows what was credited
/// to it), with a fast tick and fast webhook retries.
fn start(dir: &Path) -> NodeProc {
    let cfg = dir.join("node.toml");
    std::fs::write(
        &cfg,
        "[rules]\ntopup_threshold = \"100.00\"\n[node]\ntick_interval_ms = 200\nwebhook_retry_max_ms = 1000\n",
    )
    .unwrap();
    NodeProc::start_with(&dir.join("data"), &[], Some(&cfg))
}

fn restart(dir: &Path) -> NodeProc {
    NodeProc::start_with(&dir.join("data"), &[], Some(&dir.join("node.toml")))
}

fn ok(a: Answer, status: u16) -> Answer {
    assert_eq!(a.status, status, "{a:?}");
    a
}

fn bank_account(node: &NodeProc, account: &str, balance: &str) {
    ok(
        admin(
            node,
            "/v1/admin/bank-accounts",
            json!({"account": account, "balance": balance}),
        ),
        201,
    );
}

fn consumer(node: &NodeProc, id: &str, bank: &str, wallet: &str) {
    ok(
        admin(
            node,
            "/v1/admin/consumers",
            json!({"consumer": id, "credit_limit": "100.00", "bank": bank, "wallet": wallet}),
        ),
        201,
    );
}

/// Registers employer `id` with bank account `bank`; its API key and webhook secret.
fn employer(node: &NodeProc, id: &str, bank: &str, webhook: Option<&str>) -> (String, String) {
    let mut body = json!({"id": id, "name": format!("{id} Ltd"), "bank": bank});
    if let Some(w) = webhook {
        body["webhook_url"] = json!(w);
    }
    let a = ok(admin(node, "/v1/admin/employers", body), 201);
    assert_eq!(a.body["employer"], true, "{a:?}");
    (
        a.body["api_key"].as_str().unwrap().to_string(),
        a.body["webhook_secret"].as_str().unwrap().to_string(),
    )
}

/// Uploads a CSV payroll as batch `batch`.
fn post_csv(node: &NodeProc, key: &str, batch: &str, csv: &str, idem: Option<&str>) -> Answer {
    post_file(
        node,
        key,
        &format!("/v1/employer/payrolls?batch_id={batch}"),
        "text/csv",
        csv,
        idem,
    )
}

fn post_file(
    node: &NodeProc,
    key: &str,
    path: &str,
    content_type: &str,
    body: &str,
    idem: Option<&str>,
) -> Answer {
    let mut req = agent()
        .post(&node.url(path))
        .set("Authorization", &format!("Bearer {key}"))
        .set("Content-Type", content_type);
    if let Some(k) = idem {
        req = req.set("Idempotency-Key", k);
    }
    let resp = match req.send_string(body) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("POST {path}: {e}"),
    };
    let status = resp.status();
    let replayed = resp.header("idempotent-replayed").is_some();
    let text = resp.into_string().unwrap_or_default();
    Answer {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        replayed,
        request_id: None,
    }
}

fn get(node: &NodeProc, path: &str, token: &str) -> Answer {
    call("GET", &node.url(path), Some(token), None, None)
}

fn report(node: &NodeProc, key: &str, batch: &str) -> Value {
    ok(
        get(node, &format!("/v1/employer/payrolls/{batch}"), key),
        200,
    )
    .body
}

/// The report once the batch is finished (at most `secs`).
fn finished(node: &NodeProc, key: &str, batch: &str, secs: u64) -> Value {
    eventually(secs, || {
        let r = report(node, key, batch);
        (r["state"] != "paying").then_some(r)
    })
    .unwrap_or_else(|| {
        panic!(
            "batch {batch} not finished: {}\n{}",
            report(node, key, batch),
            node.log()
        )
    })
}

fn balance(node: &NodeProc, key: &str) -> String {
    ok(get(node, "/v1/merchant", key), 200).body["balance"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A consumer session: card and PIN at the consumer's reader, nothing paid.
fn session_of(node: &NodeProc, holder: &str, card: &str, key: [u8; 32], reader: &str) -> String {
    let w = World {
        api_key: String::new(),
        webhook_secret: String::new(),
        card_key: key,
        reader_id: reader.into(),
    };
    let mut c = MemoryCard(CardApplet::new(
        card.into(),
        holder.into(),
        CardKey::from_bytes(key),
        0,
    ));
    let (_, answer) = sign_in(node, &w, &mut c, PIN);
    answer
        .and_then(|a| a.session)
        .expect("a consumer session")
        .token
}

fn inbox(node: &NodeProc, session: &str) -> Vec<Value> {
    ok(get(node, "/v1/consumer/notifications", session), 200).body["notifications"]
        .as_array()
        .unwrap()
        .clone()
}

fn salary_notes(node: &NodeProc, session: &str, reference: &str) -> Vec<Value> {
    inbox(node, session)
        .into_iter()
        .filter(|n| {
            n["type"].as_str().unwrap_or("").starts_with("salary.")
                && n["data"]["reference"] == reference
        })
        .collect()
}

fn verify(data: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_onecard"))
        .args(["verify", "--data"])
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What the data directory holds once the node has stopped, read with the engine itself.
struct Books {
    wallets: Vec<(String, Amount)>,
    banks: Vec<(String, Option<Amount>)>,
    merchants: Vec<(String, Amount)>,
    /// Every salary credit journaled: (credit id, consumer, amount).
    salaries: Vec<(String, String, Amount)>,
    fundings: Vec<(String, Amount)>,
}

fn books(data: &Path, consumers: &[&str], banks: &[&str], merchants: &[&str]) -> Books {
    actix_rt::System::new().block_on(async {
        let cfg = EngineConfig {
            issuer_key: Some(IssuerKey::from_bytes([0x11; 32])),
            data_key: Some(DataKey::from_bytes([0x22; 32])),
            ..EngineConfig::default()
        };
        let bank = SimBank::open(data).unwrap();
        let engine = Engine::open(data, cfg, Arc::new(SimBankPort(bank.clone())))
            .await
            .unwrap();
        let mut wallets = Vec::new();
        for c in consumers {
            let s = engine.account_summary(c).await.unwrap().unwrap();
            wallets.push((c.to_string(), s.wallet));
        }
        let banks = banks
            .iter()
            .map(|b| (b.to_string(), bank.balance(b)))
            .collect();
        let mut ms = Vec::new();
        for m in merchants {
            ms.push((
                m.to_string(),
                engine.merchant(m).await.unwrap().unwrap().balance,
            ));
        }
        let (mut salaries, mut fundings) = (Vec::new(), Vec::new());
        let mut after = 0;
        loop {
            let feed = engine.feed_after(after, 1000).unwrap();
            if feed.through == after {
                break;
            }
            after = feed.through;
            for e in feed.records.iter().flat_map(|r| r.entries.clone()) {
                for ev in e.events {
                    match ev.kind {
                        FeedKind::Credited {
                            credit,
                            consumer,
                            source: CreditSource::Employer { .. },
                            amount,
                            ..
                        } => salaries.push((credit, consumer, amount)),
                        FeedKind::MerchantFunded {
                            funding, amount, ..
                        } => fundings.push((funding, amount)),
                        _ => {}
                    }
                }
            }
        }
        engine.close().await.unwrap();
        Books {
            wallets,
            banks,
            merchants: ms,
            salaries,
            fundings,
        }
    })
}

fn amount(s: &str) -> Amount {
    Amount::parse(s).unwrap()
}

fn get_amount(list: &[(String, Amount)], id: &str) -> Amount {
    list.iter().find(|(k, _)| k == id).unwrap().1
}

#[test]
fn an_employer_pays_a_batch_into_wallets_and_bank_accounts_and_everyone_is_told() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = start(dir.path());
    let w = setup(&node, None, None); // alice: wallet 500.00, bank BANK 10000.00 - 500.00
    let hooks = Endpoint::start();
    bank_account(&node, "ACME-BANK", "20000.00");
    bank_account(&node, "BOB-BANK", "1000.00");
    bank_account(&node, "CAROL-BANK", "0.00");
    consumer(&node, "bob", "BOB-BANK", "900.00");
    consumer(&node, "carol", "CAROL-BANK", "0.00");
    let bob_key = issue_card_with_reader(&node, "bob", "4000009999999991", PIN, "reader-bob");
    let (key, secret) = employer(&node, "acme", "ACME-BANK", Some(&hooks.url()));

    // Only an employer uploads payrolls; an employer needs a bank account to be funded from.
    let shop = post_csv(
        &node,
        &w.api_key,
        "b-0",
        "employee,amount,account\nalice,1.00,wallet\n",
        None,
    );
    assert_eq!(shop.status, 403, "{shop:?}");
    assert_eq!(shop.body["error"]["code"], "not_an_employer");
    let no_bank = admin(
        &node,
        "/v1/admin/employers",
        json!({"id": "x", "name": "X"}),
    );
    assert_eq!(no_bank.status, 422, "{no_bank:?}");
    assert_eq!(balance(&node, &key), "0.00");

    // alice 1000.00 into the wallet; bob 4300.00 into the wallet, which has room for 4100.00
    // (cap 5000.00): 200.00 go on to his bank account; carol 250.50 to her bank account.
    let csv =
        "employee,amount,account\nalice,1000.00,wallet\nbob,4300.00,wallet\ncarol,250.5,bank\n";
    let stored = ok(post_csv(&node, &key, "2026-11", csv, Some("up-1")), 202);
    assert_eq!(stored.body["state"], "paying");
    assert_eq!(stored.body["total"], "5550.50");
    assert_eq!(stored.body["counts"]["lines"], 3);
    assert_eq!(stored.body["url"], "/v1/employer/payrolls/2026-11");
    let reference = stored.body["reference"].as_str().unwrap().to_string();
    // The same request again (same key): the stored answer.
    let again = post_csv(&node, &key, "2026-11", csv, Some("up-1"));
    assert!(again.replayed && again.status == 202, "{again:?}");

    let r = finished(&node, &key, "2026-11", 30);
    assert_eq!(r["state"], "done", "{r}");
    assert_eq!(r["funded"], true);
    assert_eq!(r["paid_total"], "5550.50");
    assert_eq!(
        r["counts"],
        json!({"lines": 3, "pending": 0, "paid": 3, "failed": 0})
    );
    let lines = r["lines"].as_array().unwrap();
    let expect = [
        (2, "alice", "1000.00", "wallet", "1000.00", "0.00"),
        (3, "bob", "4300.00", "wallet", "4100.00", "200.00"),
        (4, "carol", "250.50", "bank", "0.00", "250.50"),
    ];
    assert_eq!(lines.len(), 3);
    for (l, (n, who, amount, account, to_wallet, to_bank)) in lines.iter().zip(expect) {
        assert_eq!(l["line"], n, "{l}");
        assert_eq!(l["employee"], who, "{l}");
        assert_eq!(l["amount"], amount, "{l}");
        assert_eq!(l["account"], account, "{l}");
        assert_eq!(l["state"], "paid", "{l}");
        assert_eq!(l["to_wallet"], to_wallet, "{l}");
        assert_eq!(l["to_bank"], to_bank, "{l}");
    }
    // The employer's balance: funded 5550.50, paid 5550.50.
    assert_eq!(balance(&node, &key), "0.00");

    // Each employee is told, once, where the money went.
    let alice = session_of(&node, "alice", CARD, w.card_key, "reader-alice");
    let notes = salary_notes(&node, &alice, &reference);
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(notes[0]["type"], "salary.paid");
    assert_eq!(notes[0]["data"]["amount"], "1000.00");
    assert_eq!(notes[0]["data"]["employer"], "acme");
    assert_eq!(notes[0]["data"]["account"], "wallet");
    let bob = session_of(&node, "bob", "4000009999999991", bob_key, "reader-bob");
    let notes = salary_notes(&node, &bob, &reference);
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(notes[0]["data"]["to_wallet"], "4100.00");
    assert_eq!(notes[0]["data"]["to_bank"], "200.00");
    let account = ok(get(&node, "/v1/consumer/account", &bob), 200).body;
    assert_eq!(account["wallet"], "5000.00", "{account}");
    // The employer: a signed payroll.done.
    let done = eventually(20, || {
        hooks.hooks().into_iter().find(|h| {
            h.accepted
                && serde_json::from_str::<Value>(&h.body).is_ok_and(|v| v["type"] == "payroll.done")
        })
    })
    .expect("payroll.done webhook");
    assert!(signature_ok(&secret, &done));
    let v: Value = serde_json::from_str(&done.body).unwrap();
    assert_eq!(v["data"]["counts"]["paid"], 3);
    assert_eq!(v["data"]["batch_id"], "2026-11");

    // The batch id is idempotent: the same lines (as JSON too) answer the batch as it is; other
    // lines are a conflict; nothing is paid again.
    let same = ok(post_csv(&node, &key, "2026-11", csv, None), 200);
    assert_eq!(same.body["reference"], reference.as_str());
    assert_eq!(same.body["state"], "done");
    let as_json = json!({"batch_id": "2026-11", "lines": [
        {"employee": "alice", "amount": "1000", "account": "wallet"},
        {"employee": "bob", "amount": "4300.00", "account": "wallet"},
        {"employee": "carol", "amount": "250.50", "account": "bank"},
    ]});
    let same = ok(
        call(
            "POST",
            &node.url("/v1/employer/payrolls"),
            Some(&key),
            None,
            Some(&as_json),
        ),
        200,
    );
    assert_eq!(same.body["reference"], reference.as_str());
    let other = post_csv(
        &node,
        &key,
        "2026-11",
        "employee,amount,account\nalice,1000.01,wallet\n",
        None,
    );
    assert_eq!(other.status, 409, "{other:?}");
    assert_eq!(other.body["error"]["code"], "payroll_conflict");

    // A second batch, as JSON; the list shows both, newest first; an unknown one is 404.
    let second = json!({"batch_id": "2026-12", "lines": [
        {"employee": "carol", "amount": "10.00", "account": "wallet"}
    ]});
    ok(
        call(
            "POST",
            &node.url("/v1/employer/payrolls"),
            Some(&key),
            None,
            Some(&second),
        ),
        202,
    );
    assert_eq!(finished(&node, &key, "2026-12", 30)["state"], "done");
    let list = ok(get(&node, "/v1/employer/payrolls", &key), 200).body;
    let ids: Vec<&str> = list["payrolls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["batch_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["2026-12", "2026-11"]);
    let page = ok(get(&node, "/v1/employer/payrolls?limit=1", &key), 200).body;
    assert_eq!(page["payrolls"].as_array().unwrap().len(), 1);
    let next = page["next_after"].as_str().unwrap();
    let page2 = ok(
        get(
            &node,
            &format!("/v1/employer/payrolls?limit=1&after={next}"),
            &key,
        ),
        200,
    )
    .body;
    assert_eq!(page2["payrolls"][0]["batch_id"], "2026-11");
    let unknown = get(&node, "/v1/employer/payrolls/nope", &key);
    assert_eq!(unknown.status, 404, "{unknown:?}");
    assert_eq!(unknown.body["error"]["code"], "unknown_payroll");
    // A page of a report's lines.
    let p = report(&node, &key, "2026-11?limit=2");
    assert_eq!(p["lines"].as_array().unwrap().len(), 2);
    assert_eq!(p["next_after"], 3);
    let p = report(&node, &key, "2026-11?after=3");
    assert_eq!(p["lines"].as_array().unwrap().len(), 1);
    assert_eq!(p["lines"][0]["employee"], "carol");

    assert!(node.terminate().success(), "{}", node.log());
    verify(&node.data);
    let b = books(
        &node.data,
        &["alice", "bob", "carol"],
        &["ACME-BANK", "BOB-BANK", "CAROL-BANK"],
        &["acme"],
    );
    assert_eq!(get_amount(&b.wallets, "alice"), amount("1500.00"));
    assert_eq!(get_amount(&b.wallets, "bob"), amount("5000.00"));
    assert_eq!(get_amount(&b.wallets, "carol"), amount("10.00"));
    let bank = |name: &str| b.banks.iter().find(|(k, _)| k == name).unwrap().1;
    assert_eq!(bank("ACME-BANK"), Some(amount("14439.50")));
    assert_eq!(bank("BOB-BANK"), Some(amount("300.00")), "1000 - 900 + 200");
    assert_eq!(bank("CAROL-BANK"), Some(amount("250.50")));
    assert_eq!(get_amount(&b.merchants, "acme"), Amount::ZERO);
    assert_eq!(b.salaries.len(), 4, "{:?}", b.salaries);
    assert_eq!(b.fundings.len(), 2, "{:?}", b.fundings);
}

#[test]
fn a_bad_file_is_refused_whole_with_every_bad_line_named_and_nothing_paid() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = start(dir.path());
    let _w = setup(&node, None, None);
    bank_account(&node, "ACME-BANK", "20000.00");
    bank_account(&node, "BOB-BANK", "1000.00");
    consumer(&node, "bob", "BOB-BANK", "900.00");
    let (key, _) = employer(&node, "acme", "ACME-BANK", None);

    let csv = "employee,amount,account\n\
               alice,100.00,wallet\n\
               bob,100.00\n\
               bob,\"5.00,wallet\n\
               ghost,10.00,wallet\n\
               alice,5.00,bank\n\
               bob,-5.00,wallet\n\
               bob,0.00,bank\n\
               bob,1.005,wallet\n\
               bob,12abc,wallet\n\
               bob,10.00,savings\n";
    let a = post_csv(&node, &key, "bad-1", csv, Some("k-1"));
    assert_eq!(a.status, 422, "{a:?}");
    assert_eq!(a.body["error"]["code"], "invalid_payroll");
    assert!(a.body["error"]["request_id"].is_string());
    let named: Vec<(u64, String)> = a.body["error"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["line"].as_u64().unwrap(),
                p["code"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(u64, String)> = [
        (3, "wrong_column_count"),
        (4, "malformed"),
        (5, "unknown_employee"),
        (6, "duplicate_employee"),
        // bob's first readable line: lines 3 and 4 could not be read as lines.
        (7, "amount_not_positive"),
        (8, "duplicate_employee"),
        (8, "amount_not_positive"),
        (9, "duplicate_employee"),
        (9, "too_many_decimals"),
        (10, "duplicate_employee"),
        (10, "invalid_amount"),
        (11, "duplicate_employee"),
        (11, "unknown_account_kind"),
    ]
    .into_iter()
    .map(|(l, c)| (l, c.to_string()))
    .collect();
    assert_eq!(named, want, "{}", a.body);

    // JSON: an amount as a number, three decimals, an unknown account kind.
    let body = json!({"batch_id": "bad-2", "lines": [
        {"employee": "alice", "amount": 10.5, "account": "wallet"},
        {"employee": "bob", "amount": "1.001", "account": "wallet"},
        {"employee": "carol", "amount": "1.00", "account": "cash"},
    ]});
    let a = call(
        "POST",
        &node.url("/v1/employer/payrolls"),
        Some(&key),
        None,
        Some(&body),
    );
    assert_eq!(a.status, 422, "{a:?}");
    let codes: Vec<&str> = a.body["error"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        vec![
            "malformed",
            "too_many_decimals",
            "unknown_employee",
            "unknown_account_kind"
        ]
    );
    // An empty batch, a file without its header, too many lines.
    for (file, code) in [
        ("employee,amount,account\n", "empty_batch"),
        ("alice,1.00,wallet\n", "bad_header"),
    ] {
        let a = post_csv(&node, &key, "bad-3", file, None);
        assert_eq!(a.status, 422, "{a:?}");
        assert_eq!(a.body["error"]["problems"][0]["code"], code, "{a:?}");
    }
    let mut many = String::from("employee,amount,account\n");
    for i in 0..10_001 {
        many.push_str(&format!("e{i},1.00,wallet\n"));
    }
    let a = post_csv(&node, &key, "bad-4", &many, None);
    assert_eq!(a.status, 422, "{a:?}");
    assert_eq!(a.body["error"]["problems"][0]["code"], "too_many_lines");
    assert_eq!(a.body["error"]["problems"][0]["line"], Value::Null);
    // Thousands of bad lines are all named (an error body far above 64 KiB).
    let mut strangers = String::from("employee,amount,account\n");
    for i in 0..3_000 {
        strangers.push_str(&format!("stranger-{i},1.00,wallet\n"));
    }
    let a = post_csv(&node, &key, "bad-5", &strangers, None);
    assert_eq!(a.status, 422, "{a:?}");
    assert_eq!(a.body["error"]["problems"].as_array().unwrap().len(), 3_000);
    assert_eq!(a.body["error"]["problems"][2_999]["line"], 3_001);
    assert!(a.body["error"]["request_id"].is_string());
    // No batch id for a CSV, a bad one, a body neither JSON nor CSV.
    let a = post_file(
        &node,
        &key,
        "/v1/employer/payrolls",
        "text/csv",
        "employee,amount,account\n",
        None,
    );
    assert_eq!(a.status, 422, "{a:?}");
    assert_eq!(a.body["error"]["code"], "invalid_field");
    let a = post_csv(
        &node,
        &key,
        "a%20b",
        "employee,amount,account\nbob,1,bank\n",
        None,
    );
    assert_eq!(a.status, 422, "{a:?}");
    let a = post_file(
        &node,
        &key,
        "/v1/employer/payrolls?batch_id=x",
        "text/plain",
        "x",
        None,
    );
    assert_eq!(a.status, 415, "{a:?}");

    // Nothing was stored: no batch, and the refusal was not kept for its key, so the fixed
    // file goes through under the same key.
    let list = ok(get(&node, "/v1/employer/payrolls", &key), 200).body;
    assert_eq!(list["payrolls"], json!([]));
    assert_eq!(get(&node, "/v1/employer/payrolls/bad-1", &key).status, 404);
    assert_eq!(balance(&node, &key), "0.00");
    assert!(node.terminate().success(), "{}", node.log());
    let b = books(
        &node.data,
        &["alice", "bob"],
        &["ACME-BANK", "BOB-BANK"],
        &["acme"],
    );
    assert_eq!(get_amount(&b.wallets, "alice"), amount("500.00"));
    assert_eq!(get_amount(&b.wallets, "bob"), amount("900.00"));
    assert_eq!(
        b.banks[0].1,
        Some(amount("20000.00")),
        "the employer's bank"
    );
    assert_eq!(b.banks[1].1, Some(amount("100.00")));
    assert!(b.salaries.is_empty() && b.fundings.is_empty());

    let node = restart(dir.path());
    let fixed = post_csv(
        &node,
        &key,
        "bad-1",
        "employee,amount,account\nalice,100.00,wallet\nbob,5.00,bank\n",
        Some("k-1"),
    );
    assert_eq!(fixed.status, 202, "{fixed:?}");
    assert_eq!(finished(&node, &key, "bad-1", 30)["state"], "done");
}

#[test]
fn a_failing_line_fails_alone_and_an_unfunded_batch_pays_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = start(dir.path());
    let w = setup(&node, None, None);
    let hooks = Endpoint::start();
    bank_account(&node, "ACME-BANK", "20000.00");
    bank_account(&node, "POOR-BANK", "100.00");
    bank_account(&node, "BOB-BANK", "1000.00");
    consumer(&node, "bob", "BOB-BANK", "900.00");
    // dan's designated account is one his bank does not know (closed): a salary to it cannot
    // be paid, one to his wallet can.
    consumer(&node, "dan", "CLOSED-ACCOUNT", "0.00");
    let (key, _) = employer(&node, "acme", "ACME-BANK", None);
    let (poor, poor_secret) = employer(&node, "poorco", "POOR-BANK", Some(&hooks.url()));

    let csv = "employee,amount,account\nalice,100.00,wallet\ndan,70.00,bank\nbob,30.00,bank\n";
    ok(post_csv(&node, &key, "mixed", csv, None), 202);
    let r = finished(&node, &key, "mixed", 30);
    assert_eq!(r["state"], "done_with_failures", "{r}");
    assert_eq!(
        r["counts"],
        json!({"lines": 3, "pending": 0, "paid": 2, "failed": 1})
    );
    assert_eq!(r["lines"][0]["state"], "paid");
    assert_eq!(r["lines"][1]["state"], "failed");
    assert_eq!(r["lines"][1]["reason"]["code"], "refused_funds", "{r}");
    assert!(!r["lines"][1]["reason"]["message"]
        .as_str()
        .unwrap()
        .contains("CLOSED-ACCOUNT"));
    assert_eq!(r["lines"][2]["state"], "paid");
    assert_eq!(r["paid_total"], "130.00");
    // What the failed line did not take stays in the employer's balance: funded − paid.
    assert_eq!(balance(&node, &key), "70.00");
    let alice = session_of(&node, "alice", CARD, w.card_key, "reader-alice");
    assert_eq!(
        salary_notes(&node, &alice, r["reference"].as_str().unwrap()).len(),
        1
    );

    // poorco's bank holds 100.00: a batch of 150.00 is not funded, and no line is paid.
    let csv = "employee,amount,account\nalice,100.00,wallet\nbob,50.00,bank\n";
    ok(post_csv(&node, &poor, "p-1", csv, None), 202);
    let r = finished(&node, &poor, "p-1", 30);
    assert_eq!(r["state"], "failed", "{r}");
    assert_eq!(r["funded"], false);
    assert_eq!(r["failure"]["code"], "refused_funds", "{r}");
    assert_eq!(
        r["counts"],
        json!({"lines": 2, "pending": 0, "paid": 0, "failed": 2})
    );
    for l in r["lines"].as_array().unwrap() {
        assert_eq!(l["state"], "failed");
        assert_eq!(l["reason"]["code"], "batch_not_funded");
    }
    assert_eq!(balance(&node, &poor), "0.00");
    let failed = eventually(20, || {
        hooks.hooks().into_iter().find(|h| {
            h.accepted
                && serde_json::from_str::<Value>(&h.body)
                    .is_ok_and(|v| v["type"] == "payroll.failed")
        })
    })
    .expect("payroll.failed webhook");
    assert!(signature_ok(&poor_secret, &failed));

    assert!(node.terminate().success(), "{}", node.log());
    verify(&node.data);
    let b = books(
        &node.data,
        &["alice", "bob", "dan"],
        &["ACME-BANK", "POOR-BANK", "BOB-BANK"],
        &["acme", "poorco"],
    );
    assert_eq!(get_amount(&b.wallets, "alice"), amount("600.00"));
    assert_eq!(get_amount(&b.wallets, "dan"), Amount::ZERO);
    assert_eq!(b.banks[0].1, Some(amount("19800.00")));
    assert_eq!(
        b.banks[1].1,
        Some(amount("100.00")),
        "poorco's bank untouched"
    );
    assert_eq!(b.banks[2].1, Some(amount("130.00")), "1000 - 900 + 30");
    assert_eq!(get_amount(&b.merchants, "acme"), amount("70.00"));
    assert_eq!(get_amount(&b.merchants, "poorco"), Amount::ZERO);
    assert_eq!(b.salaries.len(), 2, "{:?}", b.salaries);
}

/// Employees of the big batch.
const STAFF: usize = 300;

#[test]
fn a_sigkill_in_the_middle_of_a_batch_pays_no_line_twice_and_the_report_is_completed() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = start(dir.path());
    bank_account(&node, "ACME-BANK", "1000000.00");
    let (key, _) = employer(&node, "acme", "ACME-BANK", None);
    let staff: Vec<String> = (0..STAFF).map(|i| format!("e{i:03}")).collect();
    let mut csv = String::from("employee,amount,account\n");
    let mut total = Amount::ZERO;
    for (i, e) in staff.iter().enumerate() {
        // Wallets start empty: a salary within the cap goes wholly into the wallet.
        consumer(&node, e, &format!("BANK-{e}"), "0.00");
        let a = Amount::from_cents(100_000 + i as i64 * 7);
        total = total.checked_add(a).unwrap();
        csv.push_str(&format!("{e},{a},wallet\n"));
    }
    ok(post_csv(&node, &key, "big", &csv, None), 202);
    // Killed once some lines are paid and some are not.
    let seen = eventually(60, || {
        let a = get(&node, "/v1/employer/payrolls/big?limit=1", &key);
        let paid = a.body["counts"]["paid"].as_u64().unwrap_or(0);
        (paid > 0 && (paid as usize) < STAFF).then_some(paid)
    });
    let paid_before = seen.expect("caught the batch in the middle");
    eprintln!("killed with {paid_before} of {STAFF} lines paid");
    node.kill();

    let mut node = restart(dir.path());
    let r = finished(&node, &key, "big", 120);
    assert_eq!(r["state"], "done", "{r}");
    assert_eq!(
        r["counts"],
        json!({"lines": STAFF, "pending": 0, "paid": STAFF, "failed": 0})
    );
    assert_eq!(r["paid_total"], total.to_string());
    assert_eq!(r["total"], total.to_string());
    let lines = r["lines"].as_array().unwrap();
    assert_eq!(lines.len(), STAFF);
    assert!(lines.iter().all(|l| l["state"] == "paid"));
    assert_eq!(balance(&node, &key), "0.00", "funded − paid");
    assert!(node.terminate().success(), "{}", node.log());
    verify(&node.data);

    let names: Vec<&str> = staff.iter().map(String::as_str).collect();
    let b = books(&node.data, &names, &["ACME-BANK"], &["acme"]);
    let mut sum = Amount::ZERO;
    for (_, w) in &b.wallets {
        sum = sum.checked_add(*w).unwrap();
    }
    assert_eq!(sum, total, "the wallets took the batch's total, once");
    // Every line's credit is journaled exactly once, and the batch was funded once.
    let mut ids: Vec<&str> = b.salaries.iter().map(|(id, _, _)| id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), STAFF);
    assert_eq!(
        b.salaries.len(),
        STAFF,
        "paid before the kill: {paid_before}"
    );
    assert_eq!(b.fundings.len(), 1);
    assert_eq!(b.fundings[0].1, total);
    assert_eq!(
        b.banks[0].1,
        Some(amount("1000000.00").checked_sub(total).unwrap())
    );
    assert_eq!(get_amount(&b.merchants, "acme"), Amount::ZERO);
}
