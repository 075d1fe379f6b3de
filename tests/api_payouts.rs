//! Merchant payouts over the node's API with the embedded simulated bank: a payout asked for by
//! the merchant, and the scheduler's payouts by period, each paid once to the merchant's bank
//! account; `verify` replays them.

mod common;

use std::process::Command;

use common::node::*;
use serde_json::json;

#[test]
fn a_merchant_is_paid_out_on_request_and_by_its_period_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeProc::start(&dir.path().join("data"));
    let w = setup(&node, None, None);
    let a = admin(
        &node,
        "/v1/admin/bank-accounts",
        json!({"account": "DE02120300000000202051", "balance": "0.00"}),
    );
    assert_eq!(a.status, 201, "{a:?}");
    let m = admin(
        &node,
        "/v1/admin/merchants",
        json!({"id": "mill", "name": "The Mill", "bank": "DE02120300000000202051"}),
    );
    assert_eq!(m.status, 201, "{m:?}");
    let mill = World {
        api_key: m.body["api_key"].as_str().unwrap().to_string(),
        ..w.clone()
    };
    // A policy needs a bank account: `shop` has none.
    let refused = call(
        "PATCH",
        &node.url("/v1/admin/merchants/shop"),
        Some(ADMIN_TOKEN),
        None,
        Some(&json!({"payout": {"every_secs": 1}})),
    );
    assert_eq!(refused.status, 422, "{refused:?}");

    // Two orders settled with the mill: 30.00 and 12.00.
    for (counter, amount) in [(1, "30.00"), (2, "12.00")] {
        let order = create_order(&node, &mill, amount, false);
        let session = pay_with_session(&node, &mill, counter, &order);
        let r = confirm_receipt(&node, &session, &order);
        assert_eq!(r.body["state"], "settled", "{r:?}");
    }
    let balance = |who: &World| {
        call(
            "GET",
            &node.url("/v1/merchant"),
            Some(&who.api_key),
            None,
            None,
        )
        .body["balance"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(balance(&mill), "42.00");

    // On request: more than there is is refused; 10.00 is paid, once for its key.
    let ask = |key: &str, amount: &str| {
        call(
            "POST",
            &node.url("/v1/merchant/payouts"),
            Some(&mill.api_key),
            Some(key),
            Some(&json!({"amount": amount})),
        )
    };
    let too_much = ask("p-1", "42.01");
    assert_eq!(too_much.status, 409, "{too_much:?}");
    let paid = ask("p-2", "10.00");
    assert_eq!(paid.status, 201, "{paid:?}");
    assert_eq!(ask("p-2", "10.00").body["payout"], paid.body["payout"]);
    assert_eq!(balance(&mill), "32.00");

    // By period: every second, the whole balance.
    let policy = call(
        "PATCH",
        &node.url("/v1/admin/merchants/mill"),
        Some(ADMIN_TOKEN),
        None,
        Some(&json!({"payout": {"every_secs": 1}})),
    );
    assert_eq!(policy.status, 200, "{policy:?}");
    assert_eq!(policy.body["payout"], json!({"every_secs": 1}));
    let emptied = eventually(20, || (balance(&mill) == "0.00").then_some(()));
    assert!(
        emptied.is_some(),
        "not paid out: {}\n{}",
        balance(&mill),
        node.log()
    );
    // `{}` removes the policy.
    let removed = call(
        "PATCH",
        &node.url("/v1/admin/merchants/mill"),
        Some(ADMIN_TOKEN),
        None,
        Some(&json!({"payout": {}})),
    );
    assert_eq!(removed.body["payout"], json!(null), "{removed:?}");

    assert!(node.terminate().success(), "{}", node.log());
    let verify = Command::new(env!("CARGO_BIN_EXE_onecard"))
        .args(["verify", "--data"])
        .arg(&node.data)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    // The journal's bank operations: the payouts are credits of 10.00 and 32.00.
    let ops = onecard_engine::bank_ops::journal_bank_ops(&node.data, None).unwrap();
    let credits: Vec<String> = ops
        .iter()
        .filter(|o| o.kind == onecard_engine::bank::BankOpKind::Credit)
        .map(|o| o.amount.to_string())
        .collect();
    assert_eq!(credits, vec!["10.00", "32.00"]);
}
