//! The web pages of `onecard serve` (issue 14) over real HTTP, as a browser without
//! JavaScript uses them: the one-time code the reader shows after card and PIN, the session
//! cookie it buys, the consumer's account page, its forms with their CSRF token, and what one
//! consumer cannot do with another's orders or with a used code or an ended session.

mod common;

use std::time::Duration;

use common::node::*;
use common::web::*;
use onecard_engine::cards::CardKey;
use onecard_sim::card::applet::CardApplet;
use onecard_terminal::flow::PaymentEnd;
use serde_json::json;

/// Signs in at the reader with card and PIN; the web code the reader shows.
fn code_at_reader(node: &NodeProc, w: &World, card: &mut MemoryCard) -> String {
    let (end, answer) = sign_in(node, w, card, PIN);
    assert!(matches!(end, PaymentEnd::Authorised(_)), "{end:?}");
    let code = answer
        .and_then(|a| a.web_code)
        .expect("a sign-in shows a web code")
        .code;
    assert_eq!(code.len(), 11, "{code}");
    code
}

fn order_state(node: &NodeProc, w: &World, order: &str) -> String {
    let a = call(
        "GET",
        &node.url(&format!("/v1/orders/{order}")),
        Some(&w.api_key),
        None,
        None,
    );
    assert_eq!(a.status, 200, "{a:?}");
    a.body["state"].as_str().unwrap().to_string()
}

#[test]
fn a_consumer_signs_in_with_the_readers_code_and_releases_an_order_from_the_page() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(dir.path());
    let w = setup(&node, None, None);
    let order = create_order(&node, &w, "42.50", true);
    pay_with_session(&node, &w, 1, &order);
    assert_eq!(order_state(&node, &w, &order), "pending");

    // Not signed in: the account page sends to the sign-in page.
    let p = get(&node, "/web/account", None);
    assert_eq!(p.status, 303);
    assert_eq!(p.location.as_deref(), Some("/web/sign-in"));
    let p = get(&node, "/web/sign-in", None);
    assert_eq!(p.status, 200);
    assert!(p
        .body
        .contains("<form method=\"post\" action=\"/web/sign-in\">"));
    assert!(p.csp.unwrap().contains("default-src 'none'"));

    let mut card = card_for(&w, 2);
    let code = code_at_reader(&node, &w, &mut card);
    // A wrong code and a malformed one: refused, no cookie.
    let p = post(&node, "/web/sign-in", None, &[("code", "AAAAA-AAAAA")]);
    assert_eq!(p.status, 401, "{}", p.body);
    assert!(p.body.contains("unknown, used or expired"));
    assert!(p.set_cookie.is_empty());
    let p = post(&node, "/web/sign-in", None, &[("code", "<script>")]);
    assert_eq!(p.status, 422);
    assert!(!p.body.contains("<script>"), "nothing typed is echoed");
    // The code as typed, in lower case and without its dash: a session cookie, secure.
    let typed = code.replace('-', "").to_lowercase();
    let p = post(&node, "/web/sign-in", None, &[("code", &typed)]);
    assert_eq!(p.status, 303, "{}", p.body);
    assert_eq!(p.location.as_deref(), Some("/web/account"));
    let set = p.set_cookie.join("; ");
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/web"] {
        assert!(set.contains(attr), "{attr} missing in {set}");
    }
    let cookie = session_cookie(&p);
    // Good once.
    let again = post(&node, "/web/sign-in", None, &[("code", &code)]);
    assert_eq!(again.status, 401);

    // The account: the order waiting with its release condition, the wallet against the cap.
    let p = get(&node, "/web/account", Some(&cookie));
    assert_eq!(p.status, 200, "{}", p.body);
    assert!(
        p.body.contains(&format!("data-order=\"{order}\"")),
        "{}",
        p.body
    );
    assert!(p.body.contains("on receipt"));
    assert!(
        p.body.contains("id=\"wallet-balance\">500.00<"),
        "{}",
        p.body
    );
    assert!(p.body.contains("id=\"reserved\">42.50<"));
    // 500.00 of 5000.00: a tenth of the gauge.
    assert!(
        p.body.contains("width=\"30\" height=\"24\" class=\"fill\""),
        "{}",
        p.body
    );
    assert!(!p.body.contains(BANK), "no full bank account on a page");
    let token = csrf(&p.body);

    // Forms without the session's token change nothing.
    let path = format!("/web/orders/{order}/receipt");
    let p = post(&node, &path, Some(&cookie), &[("satisfied", "yes")]);
    assert_eq!(p.status, 403);
    let p = post(
        &node,
        &path,
        Some(&cookie),
        &[("csrf", "0".repeat(64).as_str()), ("satisfied", "yes")],
    );
    assert_eq!(p.status, 403);
    // Nor without the session (the token alone is nothing).
    let p = post(
        &node,
        &path,
        None,
        &[("csrf", &token), ("satisfied", "yes")],
    );
    assert_eq!(p.status, 303);
    assert_eq!(p.location.as_deref(), Some("/web/sign-in"));
    assert_eq!(order_state(&node, &w, &order), "pending");

    // Received and satisfied: the money goes to the merchant.
    let p = post(
        &node,
        &path,
        Some(&cookie),
        &[("csrf", &token), ("satisfied", "yes")],
    );
    assert_eq!(p.status, 303, "{}", p.body);
    assert_eq!(p.location.as_deref(), Some("/web/account?done=settled"));
    assert_eq!(order_state(&node, &w, &order), "settled");
    let p = get(&node, "/web/account?done=settled", Some(&cookie));
    assert!(p.body.contains("the money was released"));
    assert!(p.body.contains("No orders are waiting."), "{}", p.body);

    // The month's analysis: the settled order is this month's spending, in the chart and
    // by category, as the journal has it (the analysis follower catches up on its own).
    let month = time::OffsetDateTime::now_utc();
    let month = format!("{:04}-{:02}", month.year(), u8::from(month.month()));
    let bar = format!("data-month=\"{month}\" data-series=\"spending\" data-value=\"42.50\"");
    let p = eventually(20, || {
        let p = get(&node, "/web/analysis", Some(&cookie));
        p.body.contains(&bar).then_some(p)
    })
    .unwrap_or_else(|| panic!("no spending bar {bar}"));
    assert!(p.body.contains("id=\"spending\">42.50<"), "{}", p.body);
    assert!(
        p.body
            .contains("data-category=\"uncategorised\" data-value=\"42.50\""),
        "{}",
        p.body
    );
    assert!(p.body.contains(&format!(
        "data-month=\"{month}\" data-series=\"income\" data-value=\"0.00\""
    )));
    let p = get(&node, "/web/analysis?month=2026-13", Some(&cookie));
    assert_eq!(p.status, 400);

    // The wallet: what it paid and the top-up back to the cap (500.00 - 42.50 + 4542.50).
    let p = eventually(20, || {
        let p = get(&node, "/web/wallet", Some(&cookie));
        p.body.contains("top-up from the bank account").then_some(p)
    })
    .unwrap_or_else(|| panic!("no top-up in the wallet's history"));
    assert!(
        p.body.contains("id=\"wallet-balance\">5000.00<"),
        "{}",
        p.body
    );
    assert!(
        p.body
            .contains("<td>paid an order</td><td class=\"num\">-42.50</td>"),
        "{}",
        p.body
    );
    assert!(
        p.body.contains("<td class=\"num\">4542.50</td>"),
        "{}",
        p.body
    );
    assert!(!p.body.contains(BANK), "no full bank account on a page");
    let p = get(&node, "/web/wallet?after=x;y", Some(&cookie));
    assert_eq!(p.status, 400);

    // Signing out ends the session: the cookie is cleared and no longer works.
    let p = post(&node, "/web/sign-out", Some(&cookie), &[("csrf", &token)]);
    assert_eq!(p.status, 303);
    assert!(p.set_cookie.join(";").contains("Max-Age=0"));
    let p = get(&node, "/web/account", Some(&cookie));
    assert_eq!(p.status, 303);
    assert_eq!(p.location.as_deref(), Some("/web/sign-in"));
}

#[test]
fn one_consumer_cannot_act_on_anothers_order_and_an_ended_session_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("node.toml");
    std::fs::write(
        &cfg,
        "[node]\nsession_ttl_secs = 2\nweb_code_ttl_secs = 1\n",
    )
    .unwrap();
    let node = NodeProc::start_with(&dir.path().join("data"), &[], Some(&cfg));
    let w = setup(&node, None, None);
    // Bob, with his own card and reader.
    let a = admin(
        &node,
        "/v1/admin/bank-accounts",
        json!({"account": "GB33BUKB20201555555555", "balance": "1000.00"}),
    );
    assert_eq!(a.status, 201, "{a:?}");
    let a = admin(
        &node,
        "/v1/admin/consumers",
        json!({"consumer": "bob", "credit_limit": "500.00", "bank": "GB33BUKB20201555555555", "wallet": "100.00"}),
    );
    assert_eq!(a.status, 201, "{a:?}");
    const BOB_CARD: &str = "4000009876543210";
    let bob_key = issue_card_with_reader(&node, "bob", BOB_CARD, PIN, "reader-bob");
    let bob = World {
        card_key: bob_key,
        reader_id: "reader-bob".into(),
        ..w.clone()
    };
    let bob_card = |counter| {
        MemoryCard(CardApplet::new(
            BOB_CARD.into(),
            "bob".into(),
            CardKey::from_bytes(bob_key),
            counter,
        ))
    };
    let alices = create_order(&node, &w, "10.00", true);
    pay_with_session(&node, &w, 1, &alices);

    // A code not used in time is refused.
    let late = code_at_reader(&node, &w, &mut card_for(&w, 2));
    std::thread::sleep(Duration::from_millis(2_100));
    let p = post(&node, "/web/sign-in", None, &[("code", &late)]);
    assert_eq!(p.status, 401, "{}", p.body);
    assert!(p.set_cookie.is_empty());

    let code = code_at_reader(&node, &bob, &mut bob_card(1));
    let p = post(&node, "/web/sign-in", None, &[("code", &code)]);
    assert_eq!(p.status, 303, "{}", p.body);
    let cookie = session_cookie(&p);
    let p = get(&node, "/web/account", Some(&cookie));
    assert_eq!(p.status, 200);
    assert!(!p.body.contains(&alices), "bob sees alice's order");
    let token = csrf(&p.body);
    let p = post(
        &node,
        &format!("/web/orders/{alices}/receipt"),
        Some(&cookie),
        &[("csrf", &token), ("satisfied", "yes")],
    );
    assert_eq!(p.status, 404, "{}", p.body);
    assert_eq!(order_state(&node, &w, &alices), "pending");

    // The session ends with `session_ttl_secs`.
    std::thread::sleep(Duration::from_millis(2_500));
    let p = get(&node, "/web/account", Some(&cookie));
    assert_eq!(p.status, 303);
    assert_eq!(p.location.as_deref(), Some("/web/sign-in"));
    // A cookie that is no session's: the same.
    let p = get(
        &node,
        "/web/account",
        Some(&format!("onecard_session={}", "ab".repeat(32))),
    );
    assert_eq!(p.status, 303);
}

/// Bills on the account page: one waiting for the consumer (rule `ask`) with its Pay and
/// Decline forms, the autopay rules in words; paying it from the page places its order.
#[test]
fn bills_wait_on_the_account_page_and_are_paid_or_declined_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(dir.path());
    let w = setup(&node, None, None);
    let biller = admin(
        &node,
        "/v1/admin/billers",
        json!({"id": "water", "name": "City Water", "kind": "water"}),
    );
    assert_eq!(biller.status, 201, "{biller:?}");
    let biller_key = biller.body["api_key"].as_str().unwrap().to_string();
    let mut card = card_for(&w, 1);
    let (_, answer) = sign_in(&node, &w, &mut card, PIN);
    let answer = answer.unwrap();
    let session = answer.session.unwrap().token;
    let code = answer.web_code.unwrap().code;
    let rule = call(
        "PUT",
        &node.url("/v1/consumer/autopay/water"),
        Some(&session),
        None,
        Some(&json!({"rule": "ask"})),
    );
    assert_eq!(rule.status, 200, "{rule:?}");
    let due = time::OffsetDateTime::now_utc().unix_timestamp() + 7 * 86_400;
    let mut refs = Vec::new();
    for id in ["W-1", "W-2"] {
        let posted = call(
            "POST",
            &node.url("/v1/biller/bills"),
            Some(&biller_key),
            None,
            Some(
                &json!({"bill_id": id, "consumer": "alice", "amount": "31.20", "due_date": due, "period": "2026-11"}),
            ),
        );
        assert_eq!(posted.status, 201, "{posted:?}");
        assert_eq!(posted.body["status"], "awaiting_approval");
        refs.push(posted.body["reference"].as_str().unwrap().to_string());
    }

    let p = post(&node, "/web/sign-in", None, &[("code", &code)]);
    let cookie = session_cookie(&p);
    let p = get(&node, "/web/account", Some(&cookie));
    assert_eq!(p.status, 200);
    for r in &refs {
        assert!(p.body.contains(&format!("data-bill=\"{r}\"")), "{}", p.body);
        assert!(p.body.contains(&format!("/web/bills/{r}/approve")));
    }
    assert!(
        p.body.contains("City Water: ask me for every bill"),
        "{}",
        p.body
    );
    let token = csrf(&p.body);

    // Without the token: nothing decided.
    let approve = format!("/web/bills/{}/approve", refs[0]);
    let p = post(&node, &approve, Some(&cookie), &[("csrf", "x")]);
    assert_eq!(p.status, 403);
    let p = post(&node, &approve, Some(&cookie), &[("csrf", &token)]);
    assert_eq!(p.status, 303, "{}", p.body);
    assert_eq!(
        p.location.as_deref(),
        Some("/web/account?done=bill_approved")
    );
    let decline = format!("/web/bills/{}/decline", refs[1]);
    let p = post(&node, &decline, Some(&cookie), &[("csrf", &token)]);
    assert_eq!(p.status, 303, "{}", p.body);
    // Declined, it cannot be paid any more.
    let p = post(
        &node,
        &format!("/web/bills/{}/approve", refs[1]),
        Some(&cookie),
        &[("csrf", &token)],
    );
    assert_eq!(p.status, 409, "{}", p.body);

    // The approved bill is paid through the engine (its order, released at the next tick).
    let paid = eventually(20, || {
        let b = call(
            "GET",
            &node.url("/v1/consumer/bills"),
            Some(&session),
            None,
            None,
        );
        let list = b.body["bills"].as_array().cloned().unwrap_or_default();
        list.iter()
            .find(|x| x["reference"] == refs[0].as_str() && x["status"] == "paid")
            .cloned()
    });
    assert!(paid.is_some(), "the approved bill was not paid");
    let p = get(&node, "/web/account", Some(&cookie));
    assert!(p.body.contains(&format!("data-bill=\"{}\"", refs[1])));
    assert!(p.body.contains(">declined<"), "{}", p.body);
    assert!(!p.body.contains(&format!("/web/bills/{}/approve", refs[1])));
}
