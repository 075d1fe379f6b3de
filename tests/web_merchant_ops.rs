//! The merchant's pages and the operator's dashboard of `onecard serve` (issue 14) over real
//! HTTP, as a browser without JavaScript uses them: sign-in with the API key or the
//! administrator's token, the order board with the delivery slip printed by a TCP printer and
//! printed again, payouts, the dashboard's numbers and its check of the journal; and what a
//! session cannot do: open another party's pages, another merchant's orders, a form without
//! its token, or anything once ended or once its credential changed.

mod common;

use std::time::Duration;

use common::node::*;
use common::web::*;
use onecard_engine::cards::CardKey;
use onecard_sim::card::applet::CardApplet;
use onecard_terminal::flow::PaymentEnd;
use serde_json::json;

/// The text of the element with this id (up to the next tag).
fn value_of(body: &str, id: &str) -> String {
    let marker = format!("id=\"{id}\">");
    let at = body
        .find(&marker)
        .unwrap_or_else(|| panic!("no #{id} in {body}"));
    let rest = &body[at + marker.len()..];
    rest[..rest.find('<').unwrap()].to_string()
}

fn number_of(body: &str, id: &str) -> u64 {
    let v = value_of(body, id);
    v.parse().unwrap_or_else(|_| panic!("#{id} is {v:?}"))
}

/// A column of the merchant's board (`new`, `printed`, `settled`, …).
fn group<'a>(body: &'a str, id: &str) -> &'a str {
    let at = body
        .find(&format!("id=\"group-{id}\""))
        .unwrap_or_else(|| panic!("no group {id} in {body}"));
    let rest = &body[at..];
    &rest[..rest.find("</section>").unwrap()]
}

/// Signs in with a key or token on `path`: the session cookie.
fn signed_in(node: &NodeProc, path: &str, field: &str, secret: &str, home: &str) -> String {
    let p = post(node, path, None, &[(field, secret)]);
    assert_eq!(p.status, 303, "{}", p.body);
    assert_eq!(p.location.as_deref(), Some(home));
    let set = p.set_cookie.join("; ");
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/web"] {
        assert!(set.contains(attr), "{attr} missing in {set}");
    }
    session_cookie(&p)
}

fn merchant_signed_in(node: &NodeProc, api_key: &str) -> String {
    signed_in(
        node,
        "/web/merchant/sign-in",
        "api_key",
        api_key,
        "/web/merchant",
    )
}

fn operator_signed_in(node: &NodeProc) -> String {
    signed_in(node, "/web/ops/sign-in", "token", ADMIN_TOKEN, "/web/ops")
}

/// An order as its merchant's API shows it.
fn order(node: &NodeProc, w: &World, order: &str) -> serde_json::Value {
    let a = call(
        "GET",
        &node.url(&format!("/v1/orders/{order}")),
        Some(&w.api_key),
        None,
        None,
    );
    assert_eq!(a.status, 200, "{a:?}");
    a.body
}

fn balance(node: &NodeProc, w: &World) -> String {
    let a = call(
        "GET",
        &node.url("/v1/merchant"),
        Some(&w.api_key),
        None,
        None,
    );
    assert_eq!(a.status, 200, "{a:?}");
    a.body["balance"].as_str().unwrap().to_string()
}

/// A consumer with a card and reader of their own; their world (merchant `shop`'s key).
fn consumer(
    node: &NodeProc,
    w: &World,
    id: &str,
    bank: &str,
    bank_balance: &str,
    wallet: &str,
    card: &str,
) -> (World, impl Fn(u32) -> MemoryCard) {
    let a = admin(
        node,
        "/v1/admin/bank-accounts",
        json!({"account": bank, "balance": bank_balance}),
    );
    assert_eq!(a.status, 201, "{a:?}");
    let a = admin(
        node,
        "/v1/admin/consumers",
        json!({"consumer": id, "credit_limit": "500.00", "bank": bank, "wallet": wallet}),
    );
    assert_eq!(a.status, 201, "{a:?}");
    let reader = format!("reader-{id}");
    let key = issue_card_with_reader(node, id, card, PIN, &reader);
    let world = World {
        card_key: key,
        reader_id: reader,
        ..w.clone()
    };
    let (card, holder) = (card.to_string(), id.to_string());
    let make = move |counter| {
        MemoryCard(CardApplet::new(
            card.clone(),
            holder.clone(),
            CardKey::from_bytes(key),
            counter,
        ))
    };
    (world, make)
}

#[test]
fn a_merchant_sees_only_its_own_orders_by_state_reprints_a_slip_and_is_paid_out() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("data"));
    let printer = Printer::start();
    let shop = setup(&node, Some(&printer.addr.to_string()), None);
    // A second merchant, without a printer, with a bank account for its payouts.
    const MILL_BANK: &str = "DE02120300000000202051";
    let a = admin(
        &node,
        "/v1/admin/bank-accounts",
        json!({"account": MILL_BANK, "balance": "0.00"}),
    );
    assert_eq!(a.status, 201, "{a:?}");
    let m = admin(
        &node,
        "/v1/admin/merchants",
        json!({"id": "mill", "name": "The Mill", "bank": MILL_BANK}),
    );
    assert_eq!(m.status, 201, "{m:?}");
    let mill = World {
        api_key: m.body["api_key"].as_str().unwrap().to_string(),
        ..shop.clone()
    };

    // The shop's order paid at the reader (its slip prints), one not paid yet; the mill's
    // order paid.
    let paid = create_order(&node, &shop, "42.50", false);
    pay_with_session(&node, &shop, 1, &paid);
    let unpaid = create_order(&node, &shop, "7.00", false);
    let mills = create_order(&node, &mill, "30.00", false);
    let mill_session = pay_with_session(&node, &mill, 2, &mills);
    eventually(30, || (printer.slips().len() == 1).then_some(()))
        .expect("the paid order's slip prints");
    eventually(30, || {
        (order(&node, &shop, &paid)["print"]["status"] == "printed").then_some(())
    })
    .expect("the order shows it printed");

    // Not signed in: the board sends to the merchant's sign-in page.
    let p = get(&node, "/web/merchant", None);
    assert_eq!(p.status, 303);
    assert_eq!(p.location.as_deref(), Some("/web/merchant/sign-in"));
    let p = get(&node, "/web/merchant/sign-in", None);
    assert_eq!(p.status, 200);
    assert!(
        p.body.contains("action=\"/web/merchant/sign-in\""),
        "{}",
        p.body
    );
    assert!(p.csp.unwrap().contains("default-src 'none'"));
    // A wrong key: a 401 page, no cookie, nothing echoed.
    let wrong = "sk_not_a_key_<b>0123456789";
    let p = post(&node, "/web/merchant/sign-in", None, &[("api_key", wrong)]);
    assert_eq!(p.status, 401, "{}", p.body);
    assert!(p.body.contains("opens no merchant"));
    assert!(p.set_cookie.is_empty());
    assert!(
        !p.body.contains("sk_not_a_key"),
        "the key typed is not echoed"
    );
    let p = post(&node, "/web/merchant/sign-in", None, &[("api_key", "")]);
    assert_eq!(p.status, 401);
    // The administrator's token is no merchant's key.
    let p = post(
        &node,
        "/web/merchant/sign-in",
        None,
        &[("api_key", ADMIN_TOKEN)],
    );
    assert_eq!(p.status, 401);

    // The shop's board: its orders by state, the slip's status, nothing of the mill's.
    let cookie = merchant_signed_in(&node, &shop.api_key);
    let p = get(&node, "/web/merchant", Some(&cookie));
    assert_eq!(p.status, 200, "{}", p.body);
    let printed = group(&p.body, "printed");
    assert!(
        printed.contains(&format!("data-order=\"{paid}\"")),
        "{}",
        p.body
    );
    assert!(printed.contains("data-print=\"printed\""), "{printed}");
    assert!(printed.contains(&format!("/web/merchant/orders/{paid}/reprint")));
    let new = group(&p.body, "new");
    assert!(
        new.contains(&format!("data-order=\"{unpaid}\"")),
        "{}",
        p.body
    );
    assert!(new.contains("awaiting_payment"));
    assert!(new.contains("prints once paid"));
    assert!(!p.body.contains(&mills), "the shop sees the mill's order");
    assert!(p.body.contains("Orders 1 to 2 of 2"), "{}", p.body);
    assert!(!p.body.contains(CARD) && !p.body.contains(BANK));
    assert!(p.body.contains("No bank account is registered for payouts"));
    let token = csrf(&p.body);

    // Forms without the session's token change nothing.
    let reprint = format!("/web/merchant/orders/{paid}/reprint");
    let p = post(&node, &reprint, Some(&cookie), &[]);
    assert_eq!(p.status, 403, "{}", p.body);
    let p = post(
        &node,
        &reprint,
        Some(&cookie),
        &[("csrf", "0".repeat(64).as_str())],
    );
    assert_eq!(p.status, 403);
    // Nor the token without the session.
    let p = post(&node, &reprint, None, &[("csrf", &token)]);
    assert_eq!(p.status, 303);
    assert_eq!(p.location.as_deref(), Some("/web/merchant/sign-in"));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(printer.slips().len(), 1, "nothing printed again");
    assert_eq!(order(&node, &shop, &paid)["print"]["reprints"], 0);
    // The mill's order is not the shop's to reprint: as if it did not exist.
    let p = post(
        &node,
        &format!("/web/merchant/orders/{mills}/reprint"),
        Some(&cookie),
        &[("csrf", &token)],
    );
    assert_eq!(p.status, 404, "{}", p.body);
    // An order without a slip yet: refused, nothing queued.
    let p = post(
        &node,
        &format!("/web/merchant/orders/{unpaid}/reprint"),
        Some(&cookie),
        &[("csrf", &token)],
    );
    assert_eq!(p.status, 409, "{}", p.body);
    assert!(p.body.contains("no delivery slip"), "{}", p.body);

    // The reprint: the same slip reaches the printer again.
    let p = post(&node, &reprint, Some(&cookie), &[("csrf", &token)]);
    assert_eq!(p.status, 303, "{}", p.body);
    assert_eq!(p.location.as_deref(), Some("/web/merchant?done=reprint"));
    eventually(30, || (printer.slips().len() == 2).then_some(())).expect("printed again");
    let slips = printer.slips();
    assert_eq!(slips[0], slips[1], "the same slip");
    assert!(String::from_utf8_lossy(&slips[1]).contains(&paid));
    eventually(30, || {
        let o = order(&node, &shop, &paid);
        (o["print"]["status"] == "printed" && o["print"]["reprints"] == 1).then_some(())
    })
    .expect("the reprint is recorded");
    let p = get(&node, "/web/merchant?done=reprint", Some(&cookie));
    assert!(p.body.contains("queued to print again"));
    assert!(
        group(&p.body, "printed").contains("reprinted 1×"),
        "{}",
        p.body
    );

    // Settled, the order moves to its column.
    let session = pay_with_session(&node, &shop, 3, &unpaid);
    let r = confirm_receipt(&node, &session, &unpaid);
    assert_eq!(r.body["state"], "settled", "{r:?}");
    let p = get(&node, "/web/merchant", Some(&cookie));
    assert!(group(&p.body, "settled").contains(&format!("data-order=\"{unpaid}\"")));
    assert!(!group(&p.body, "new").contains(&unpaid), "{}", p.body);

    // The mill: its own board, its payout to its bank account, shown masked.
    let r = confirm_receipt(&node, &mill_session, &mills);
    assert_eq!(r.body["state"], "settled", "{r:?}");
    let mill_cookie = merchant_signed_in(&node, &mill.api_key);
    let p = get(&node, "/web/merchant", Some(&mill_cookie));
    assert_eq!(p.status, 200, "{}", p.body);
    assert!(group(&p.body, "settled").contains(&format!("data-order=\"{mills}\"")));
    assert!(!p.body.contains(&paid) && !p.body.contains(&unpaid));
    assert!(group(&p.body, "settled").contains("no printer configured"));
    assert_eq!(value_of(&p.body, "balance-amount"), "30.00");
    assert!(p
        .body
        .contains(&onecard_protocol::mask_card_number(MILL_BANK)));
    assert!(
        !p.body.contains(MILL_BANK),
        "no full bank account on a page"
    );
    assert!(p.body.contains("id=\"no-payouts\""));
    let mill_token = csrf(&p.body);
    assert_ne!(mill_token, token, "each session has its own token");
    // The shop's token is not the mill's.
    let p = post(
        &node,
        "/web/merchant/payouts",
        Some(&mill_cookie),
        &[("csrf", &token)],
    );
    assert_eq!(p.status, 403);
    assert_eq!(balance(&node, &mill), "30.00");
    let p = post(
        &node,
        "/web/merchant/payouts",
        Some(&mill_cookie),
        &[("csrf", &mill_token)],
    );
    assert_eq!(p.status, 303, "{}", p.body);
    assert_eq!(p.location.as_deref(), Some("/web/merchant?done=payout"));
    assert_eq!(balance(&node, &mill), "0.00");
    // Sent again (a double click): nothing left to pay, nothing paid twice.
    let p = post(
        &node,
        "/web/merchant/payouts",
        Some(&mill_cookie),
        &[("csrf", &mill_token)],
    );
    assert_eq!(p.status, 409, "{}", p.body);
    let listed = eventually(30, || {
        let p = get(&node, "/web/merchant", Some(&mill_cookie));
        p.body.contains("id=\"payouts\"").then_some(p.body)
    })
    .expect("the payout is listed");
    assert_eq!(listed.matches("data-payout=").count(), 1, "{listed}");
    assert!(
        listed.contains("<td class=\"num\">30.00</td>\n<td>paid</td>"),
        "{listed}"
    );
    assert_eq!(value_of(&listed, "balance-amount"), "0.00");

    // A merchant's cookie opens no consumer's or operator's page.
    let p = get(&node, "/web/account", Some(&cookie));
    assert_eq!(p.status, 303);
    assert_eq!(p.location.as_deref(), Some("/web/sign-in"));
    let p = get(&node, "/web/ops", Some(&cookie));
    assert_eq!(p.status, 303);
    assert_eq!(p.location.as_deref(), Some("/web/ops/sign-in"));
    let p = post(&node, "/web/ops/verify", Some(&cookie), &[("csrf", &token)]);
    assert_eq!(p.status, 303);
    assert_eq!(p.location.as_deref(), Some("/web/ops/sign-in"));
    // `/web` sends each party to its own pages.
    let p = get(&node, "/web", Some(&cookie));
    assert_eq!(p.location.as_deref(), Some("/web/merchant"));

    // Signing out ends the session.
    let p = post(&node, "/web/sign-out", Some(&cookie), &[("csrf", &token)]);
    assert_eq!(p.status, 303);
    assert_eq!(p.location.as_deref(), Some("/web/merchant/sign-in"));
    assert!(p.set_cookie.join(";").contains("Max-Age=0"));
    let p = get(&node, "/web/merchant", Some(&cookie));
    assert_eq!(p.status, 303);
}

#[test]
fn the_operator_dashboard_shows_the_nodes_numbers_and_checks_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut node = NodeProc::start(&data);
    let w = setup(&node, None, None);
    // An order waiting for its consumer's receipt.
    let open = create_order(&node, &w, "12.00", true);
    pay_with_session(&node, &w, 1, &open);
    // Carol has nothing in her wallet nor at her bank: her settlement waits for funds.
    let (carol, carol_card) = consumer(
        &node,
        &w,
        "carol",
        "GB33BUKB20201555555555",
        "0.00",
        "0.00",
        "4000005555555555",
    );
    let waiting = create_order(&node, &carol, "20.00", true);
    let mut card = carol_card(1);
    let (end, answer) = pay(&node, &carol, &mut card, &waiting, PIN);
    assert!(matches!(end, PaymentEnd::Authorised(_)), "{end:?}");
    let session = answer.and_then(|a| a.session).unwrap().token;
    let r = confirm_receipt(&node, &session, &waiting);
    assert_eq!(r.body["state"], "awaiting_funds", "{r:?}");
    // Bob's card is locked by three wrong PINs.
    const BOB_CARD: &str = "4000009876543210";
    let (bob, bob_card) = consumer(
        &node,
        &w,
        "bob",
        "FR7630006000011234567890189",
        "100.00",
        "10.00",
        BOB_CARD,
    );
    let mut card = bob_card(1);
    for _ in 0..3 {
        let (end, _) = sign_in(&node, &bob, &mut card, "0000");
        assert!(!matches!(end, PaymentEnd::Authorised(_)), "{end:?}");
    }

    // Not signed in, or with a wrong token: no dashboard.
    let p = get(&node, "/web/ops", None);
    assert_eq!(p.status, 303);
    assert_eq!(p.location.as_deref(), Some("/web/ops/sign-in"));
    let p = post(
        &node,
        "/web/ops/sign-in",
        None,
        &[("token", "not-the-token-<i>-0123456789")],
    );
    assert_eq!(p.status, 401, "{}", p.body);
    assert!(p.set_cookie.is_empty());
    assert!(
        !p.body.contains("not-the-token"),
        "the token typed is not echoed"
    );
    // A merchant's API key is not the administrator's token.
    let p = post(&node, "/web/ops/sign-in", None, &[("token", &w.api_key)]);
    assert_eq!(p.status, 401);

    let cookie = operator_signed_in(&node);
    let p = get(&node, "/web/ops", Some(&cookie));
    assert_eq!(p.status, 200, "{}", p.body);
    assert_eq!(p.refresh.as_deref(), Some("5"), "it reloads itself");
    assert!(p.csp.unwrap().contains("default-src 'none'"));
    assert!(!p.body.contains("<script"), "no script");
    let body = p.body;
    assert_eq!(value_of(&body, "journal-state"), "Taking writes.");
    // The journal's numbers, as /healthz and /metrics count them.
    let health = call("GET", &node.url("/healthz"), None, None, None);
    let seq = health.body["journal_seq"].as_u64().unwrap();
    let shown_seq = number_of(&body, "journal-seq");
    assert!(shown_seq >= 1 && shown_seq <= seq, "{shown_seq} of {seq}");
    assert!(number_of(&body, "journal-records") >= 1);
    assert!(value_of(&body, "journal-batch").parse::<f64>().unwrap() >= 1.0);
    // Throughput and latency: every API request of the test so far is counted.
    assert!(number_of(&body, "requests-total") >= 20, "{body}");
    assert_eq!(number_of(&body, "orders-created"), 2);
    assert!(
        value_of(&body, "latency-p95").starts_with('≤')
            || value_of(&body, "latency-p95").starts_with('>')
    );
    assert!(
        body.contains("<td>/v1/orders</td><td>POST</td><td class=\"num\">2</td>"),
        "{body}"
    );
    // The queues: nothing to print (digital orders), the outbox caught up or nearly.
    assert_eq!(number_of(&body, "queue-print"), 0);
    assert!(number_of(&body, "lag-outbox") <= seq);
    assert_eq!(number_of(&body, "open-orders"), 2, "alice's and carol's");
    // The settlement waiting for carol's bank.
    let awaiting = eventually(30, || {
        let p = get(&node, "/web/ops", Some(&cookie));
        (number_of(&p.body, "awaiting-count") == 1).then_some(p.body)
    })
    .expect("the top-up waiting is shown");
    let table = &awaiting[awaiting.find("id=\"awaiting\"").unwrap()..];
    assert!(table.contains(&format!("<tr data-order=\"{waiting}\"><td>{waiting}</td><td>carol</td><td>shop</td><td class=\"num\">20.00</td>")), "{table}");
    assert!(awaiting.contains("simulated"));
    assert_eq!(number_of(&awaiting, "bank-unresolved"), 0);
    // Bob's card, masked.
    assert_eq!(number_of(&awaiting, "locked-count"), 1);
    assert!(
        awaiting.contains(
            "<td class=\"card\">************3210</td><td>bob</td><td class=\"num\">3</td>"
        ),
        "{awaiting}"
    );
    assert!(!awaiting.contains(BOB_CARD) && !awaiting.contains(CARD));
    // Unlocked, it leaves the list.
    let a = admin(&node, "/v1/admin/cards/unlock", json!({"number": BOB_CARD}));
    assert_eq!(a.status, 200, "{a:?}");
    let p = get(&node, "/web/ops", Some(&cookie));
    assert_eq!(number_of(&p.body, "locked-count"), 0);
    assert_eq!(
        value_of(&p.body, "verify-result"),
        "Not run since the node started."
    );
    let token = csrf(&p.body);

    // The check of the journal: not without the session's token.
    let p = post(&node, "/web/ops/verify", Some(&cookie), &[]);
    assert_eq!(p.status, 403);
    let p = post(
        &node,
        "/web/ops/verify",
        Some(&cookie),
        &[("csrf", "0".repeat(64).as_str())],
    );
    assert_eq!(p.status, 403);
    std::thread::sleep(Duration::from_millis(300));
    let p = get(&node, "/web/ops", Some(&cookie));
    assert_eq!(
        value_of(&p.body, "verify-result"),
        "Not run since the node started."
    );
    // Run beside the running node: the log checked up to its last durable record.
    let p = post(&node, "/web/ops/verify", Some(&cookie), &[("csrf", &token)]);
    assert_eq!(p.status, 303, "{}", p.body);
    assert_eq!(p.location.as_deref(), Some("/web/ops?done=verify"));
    let done = eventually(60, || {
        let p = get(&node, "/web/ops?done=verify", Some(&cookie));
        p.body.contains("id=\"verify-report\"").then_some(p.body)
    })
    .expect("the check finishes");
    assert!(
        value_of(&done, "verify-result").starts_with("OK, at "),
        "{done}"
    );
    let report = value_of(&done, "verify-report");
    assert!(report.contains("hash chain intact"), "{report}");
    assert!(
        report.contains("sum of all balances: 0.00 (I2)"),
        "{report}"
    );
    assert!(report.contains("awaiting_funds 1"), "{report}");
    assert!(report.contains("not compared"), "{report}");
    assert!(report.contains("invariants I1-I6 and I8: ok"), "{report}");

    // The operator's cookie opens no consumer's or merchant's page.
    let p = get(&node, "/web/account", Some(&cookie));
    assert_eq!(p.location.as_deref(), Some("/web/sign-in"));
    let p = get(&node, "/web/merchant", Some(&cookie));
    assert_eq!(p.location.as_deref(), Some("/web/merchant/sign-in"));
    let p = post(
        &node,
        "/web/merchant/payouts",
        Some(&cookie),
        &[("csrf", &token)],
    );
    assert_eq!(p.location.as_deref(), Some("/web/merchant/sign-in"));
    // Nor does a consumer's open the dashboard.
    let (end, answer) = sign_in(&node, &w, &mut card_for(&w, 2), PIN);
    assert!(matches!(end, PaymentEnd::Authorised(_)), "{end:?}");
    let code = answer.and_then(|a| a.web_code).unwrap().code;
    let p = post(&node, "/web/sign-in", None, &[("code", &code)]);
    assert_eq!(p.status, 303, "{}", p.body);
    let alice = session_cookie(&p);
    let p = get(&node, "/web/account", Some(&alice));
    assert_eq!(p.status, 200);
    let alice_token = csrf(&p.body);
    let p = get(&node, "/web/ops", Some(&alice));
    assert_eq!(p.location.as_deref(), Some("/web/ops/sign-in"));
    let p = post(
        &node,
        "/web/ops/verify",
        Some(&alice),
        &[("csrf", &alice_token)],
    );
    assert_eq!(p.location.as_deref(), Some("/web/ops/sign-in"));
    let p = get(&node, "/web/merchant", Some(&alice));
    assert_eq!(p.location.as_deref(), Some("/web/merchant/sign-in"));
    let p = post(
        &node,
        &format!("/web/merchant/orders/{open}/reprint"),
        Some(&alice),
        &[("csrf", &alice_token)],
    );
    assert_eq!(p.location.as_deref(), Some("/web/merchant/sign-in"));
    // The consumer's own page still works beside them.
    let p = get(&node, "/web/account", Some(&alice));
    assert!(p.body.contains(&format!("data-order=\"{open}\"")));

    // Signing out; then the full verify on the stopped node agrees.
    let p = post(&node, "/web/sign-out", Some(&cookie), &[("csrf", &token)]);
    assert_eq!(p.location.as_deref(), Some("/web/ops/sign-in"));
    let p = get(&node, "/web/ops", Some(&cookie));
    assert_eq!(p.status, 303);
    assert!(node.terminate().success());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_onecard"))
        .arg("verify")
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn merchant_and_operator_sessions_end_with_their_time_and_with_their_credential() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("node.toml");
    std::fs::write(&cfg, "[node]\nsession_ttl_secs = 2\n").unwrap();
    let node = NodeProc::start_with(&dir.path().join("data"), &[], Some(&cfg));
    let w = setup(&node, None, None);
    let merchant = merchant_signed_in(&node, &w.api_key);
    assert_eq!(get(&node, "/web/merchant", Some(&merchant)).status, 200);
    // A new API key ends the sessions opened with the old one, at once.
    let a = call(
        "POST",
        &node.url("/v1/admin/merchants/shop/api-key"),
        Some(ADMIN_TOKEN),
        None,
        None,
    );
    assert_eq!(a.status, 200, "{a:?}");
    let new_key = a.body["api_key"].as_str().unwrap().to_string();
    let p = get(&node, "/web/merchant", Some(&merchant));
    assert_eq!(p.status, 303);
    assert_eq!(p.location.as_deref(), Some("/web/merchant/sign-in"));
    let p = post(
        &node,
        "/web/merchant/sign-in",
        None,
        &[("api_key", &w.api_key)],
    );
    assert_eq!(p.status, 401, "the old key opens nothing");
    let merchant = merchant_signed_in(&node, &new_key);
    assert_eq!(get(&node, "/web/merchant", Some(&merchant)).status, 200);
    let operator = operator_signed_in(&node);
    assert_eq!(get(&node, "/web/ops", Some(&operator)).status, 200);

    // Both end with `session_ttl_secs`.
    std::thread::sleep(Duration::from_millis(2_500));
    let p = get(&node, "/web/merchant", Some(&merchant));
    assert_eq!(p.status, 303);
    assert_eq!(p.location.as_deref(), Some("/web/merchant/sign-in"));
    let p = get(&node, "/web/ops", Some(&operator));
    assert_eq!(p.status, 303);
    assert_eq!(p.location.as_deref(), Some("/web/ops/sign-in"));
}

/// The merchant marks a paid order's goods shipped, through the API (idempotent, refused
/// before payment and after settlement) and on the board (the Shipped column, with CSRF).
#[test]
fn a_merchant_marks_goods_shipped_through_the_api_and_on_the_board() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(dir.path());
    let w = setup(&node, None, None);
    let ship = |order: &str, key: Option<&str>| {
        call(
            "POST",
            &node.url(&format!("/v1/orders/{order}/shipped")),
            Some(&w.api_key),
            key,
            None,
        )
    };
    // Not paid yet: refused, nothing recorded.
    let unpaid = create_order(&node, &w, "12.00", false);
    let a = ship(&unpaid, Some("s-0"));
    assert_eq!(a.status, 409, "{a:?}");
    assert_eq!(a.body["error"]["code"], "not_shippable");
    assert!(order(&node, &w, &unpaid).get("shipped_at").is_none());

    // Paid: marked shipped once; again, the same answer and the same time.
    let first = create_order(&node, &w, "20.00", false);
    let session = pay_with_session(&node, &w, 1, &first);
    let a = ship(&first, Some("s-1"));
    assert_eq!(a.status, 200, "{a:?}");
    let at = a.body["shipped_at"].as_u64().expect("shipped_at");
    let again = ship(&first, Some("s-2"));
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.body["shipped_at"].as_u64(), Some(at));
    assert_eq!(order(&node, &w, &first)["state"], "pending");
    // Another merchant's key: no such order.
    let other = admin(
        &node,
        "/v1/admin/merchants",
        json!({"id": "other", "name": "Other Shop"}),
    );
    let other_key = other.body["api_key"].as_str().unwrap().to_string();
    let a = call(
        "POST",
        &node.url(&format!("/v1/orders/{first}/shipped")),
        Some(&other_key),
        None,
        None,
    );
    assert_eq!(a.status, 404, "{a:?}");

    // On the board: a second paid order, marked shipped with the page's form.
    let second = create_order(&node, &w, "30.00", false);
    pay_with_session(&node, &w, 2, &second);
    let cookie = merchant_signed_in(&node, &w.api_key);
    let p = get(&node, "/web/merchant", Some(&cookie));
    assert!(group(&p.body, "shipped").contains(&first), "{}", p.body);
    assert!(!group(&p.body, "shipped").contains(&second));
    let form = format!("/web/merchant/orders/{second}/shipped");
    assert!(p.body.contains(&form), "{}", p.body);
    let token = csrf(&p.body);
    let refused = post(&node, &form, Some(&cookie), &[("csrf", "nope")]);
    assert_eq!(refused.status, 403);
    assert!(order(&node, &w, &second).get("shipped_at").is_none());
    let done = post(&node, &form, Some(&cookie), &[("csrf", &token)]);
    assert_eq!(done.status, 303, "{}", done.body);
    let p = get(&node, "/web/merchant", Some(&cookie));
    assert!(group(&p.body, "shipped").contains(&second), "{}", p.body);
    assert!(order(&node, &w, &second)["shipped_at"].as_u64().is_some());

    // Settled, the goods received: it leaves the Shipped column, and cannot be marked again.
    let r = call(
        "POST",
        &node.url(&format!("/v1/consumer/orders/{first}/receipt")),
        Some(&session),
        None,
        Some(&json!({"satisfied": true})),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let p = get(&node, "/web/merchant", Some(&cookie));
    assert!(group(&p.body, "settled").contains(&first), "{}", p.body);
    let settled = create_order(&node, &w, "5.00", false);
    let s2 = pay_with_session(&node, &w, 3, &settled);
    let r = call(
        "POST",
        &node.url(&format!("/v1/consumer/orders/{settled}/receipt")),
        Some(&s2),
        None,
        Some(&json!({"satisfied": true})),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let a = ship(&settled, Some("s-3"));
    assert_eq!(a.status, 409, "{a:?}");
}
