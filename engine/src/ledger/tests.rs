//! Unit tests of every ledger rule, without actors, journal or bank.

use super::*;
use crate::model::{RefusalKind, RulesConfig};

fn a(s: &str) -> Amount {
    match s.strip_prefix('-') {
        Some(rest) => Amount::parse(rest).unwrap().checked_neg(),
        None => Amount::parse(s).unwrap(),
    }
}

fn rules() -> RulesConfig {
    RulesConfig::default()
}

/// A consumer with `wallet` in the wallet and an order book built by applying events.
fn consumer(limit: &str, wallet: &str) -> ConsumerState {
    let mut c = ConsumerState::new("alice".into(), a(limit), "alice-bank".into());
    let ev = consumer_opened_event(
        "alice",
        a(limit),
        "alice-bank",
        a(wallet),
        Some("op-0".into()),
    );
    c.apply(&ev, 0).unwrap();
    c
}

fn place(
    c: &mut ConsumerState,
    id: &str,
    amount: &str,
    release: Release,
    at: Secs,
) -> CommandResult {
    let cfg = rules();
    let result = match c.decide_place(a(amount), &cfg) {
        PlaceDecision::Accept => Ok(Outcome::Accepted),
        PlaceDecision::Refused(r) => Err(r),
        PlaceDecision::Direct => panic!("direct mode is off"),
    };
    let ev = c.placed_event(id, "shop", a(amount), &release, result.clone(), false);
    c.apply(&ev, at).unwrap();
    result
}

/// Places an order that must be accepted.
fn accept(c: &mut ConsumerState, id: &str, amount: &str, release: Release, at: Secs) {
    assert_eq!(place(c, id, amount, release, at), Ok(Outcome::Accepted));
}

fn settle(c: &mut ConsumerState, id: &str, bank_op: Option<&str>) {
    let amount = c.orders[id].amount;
    let f = c.funding(amount);
    let ev = c.settled_event(id, "shop", f, bank_op.map(str::to_string));
    assert!(ev.imbalance().unwrap().is_zero(), "settlement must balance");
    c.apply(&ev, 0).unwrap();
}

#[test]
fn opening_moves_the_wallet_from_the_bank_in_one_balanced_event() {
    let ev = consumer_opened_event("alice", a("100"), "alice-bank", a("5000"), None);
    assert_eq!(ev.imbalance().unwrap(), Amount::ZERO);
    let c = consumer("100", "5000");
    assert_eq!(c.wallet, a("5000"));
    assert_eq!(c.bank_clearing, a("-5000"));
}

#[test]
fn an_order_within_credit_is_reserved_and_one_beyond_is_refused_for_credit() {
    let mut c = consumer("1000", "5000");
    assert_eq!(
        place(&mut c, "o1", "800", Release::Receipt, 0),
        Ok(Outcome::Accepted)
    );
    assert_eq!(c.reserved, a("800"));
    assert_eq!(c.available_credit(), a("200"));
    let r = place(&mut c, "o2", "300", Release::Receipt, 0).unwrap_err();
    assert_eq!(r.kind, RefusalKind::Credit);
    assert_eq!(c.orders["o2"].state, OrderState::Refused);
    assert_eq!(c.reserved, a("800"), "a refused order reserves nothing");
    assert_eq!(
        place(&mut c, "o3", "200", Release::Receipt, 0),
        Ok(Outcome::Accepted)
    );
    assert_eq!(c.available_credit(), Amount::ZERO);
}

#[test]
fn direct_mode_applies_up_to_and_including_direct_max() {
    let c = consumer("0", "5000");
    let cfg = RulesConfig {
        direct_max: a("50"),
        ..rules()
    };
    assert_eq!(c.decide_place(a("50"), &cfg), PlaceDecision::Direct);
    assert!(
        matches!(c.decide_place(a("50.01"), &cfg), PlaceDecision::Refused(r) if r.kind == RefusalKind::Credit)
    );
    assert!(
        matches!(c.decide_place(a("1"), &rules()), PlaceDecision::Refused(_)),
        "off at zero"
    );
}

#[test]
fn funding_takes_the_wallet_first_and_the_bank_for_the_rest() {
    let c = consumer("0", "1000");
    assert_eq!(
        c.funding(a("400")),
        Funding {
            wallet_part: a("400"),
            bank_part: Amount::ZERO
        }
    );
    assert_eq!(
        c.funding(a("1500")),
        Funding {
            wallet_part: a("1000"),
            bank_part: a("500")
        }
    );
    let empty = consumer("0", "0");
    assert_eq!(
        empty.funding(a("7")),
        Funding {
            wallet_part: Amount::ZERO,
            bank_part: a("7")
        }
    );
}

#[test]
fn settlement_pays_the_merchant_releases_the_reservation_and_cannot_happen_twice() {
    let mut c = consumer("8000", "1000");
    accept(&mut c, "o1", "1500", Release::Receipt, 0);
    settle(&mut c, "o1", Some("op-1"));
    assert_eq!(c.wallet, Amount::ZERO);
    assert_eq!(
        c.bank_clearing,
        a("-1500"),
        "opening 1000 plus the bank's 500"
    );
    assert_eq!(c.reserved, Amount::ZERO);
    assert_eq!(c.orders["o1"].state, OrderState::Settled);
    let again = c.settled_event(
        "o1",
        "shop",
        Funding {
            wallet_part: Amount::ZERO,
            bank_part: a("1"),
        },
        None,
    );
    assert_eq!(
        c.apply(&again, 0),
        Err(LedgerError::SettledTwice { order: "o1".into() })
    );
}

#[test]
fn top_up_brings_the_wallet_to_exactly_the_cap_counting_what_is_in_flight() {
    let mut c = consumer("0", "1200");
    let cfg = rules();
    assert_eq!(c.topup_needed(&cfg), Some(a("3800")));
    c.topup_in_flight = a("3800");
    assert_eq!(
        c.topup_needed(&cfg),
        None,
        "a top-up in flight uses the headroom (I3)"
    );
    c.topup_in_flight = Amount::ZERO;
    let ev = c.topped_up_event(a("3800"), "op-9".into());
    c.apply(&ev, 0).unwrap();
    assert_eq!(c.wallet, a("5000"));
    assert_eq!(c.topup_needed(&cfg), None);
}

#[test]
fn a_threshold_below_the_cap_tops_up_only_below_it() {
    let cfg = RulesConfig {
        topup_threshold: a("1000"),
        ..rules()
    };
    assert_eq!(consumer("0", "2000").topup_needed(&cfg), None);
    assert_eq!(
        consumer("0", "1000").topup_needed(&cfg),
        None,
        "at the threshold is not below it"
    );
    assert_eq!(
        consumer("0", "999.99").topup_needed(&cfg),
        Some(a("4000.01"))
    );
}

#[test]
fn receipt_settles_when_satisfied_and_disputes_otherwise() {
    let mut c = consumer("8000", "5000");
    accept(&mut c, "o1", "400", Release::Receipt, 0);
    assert_eq!(c.decide_receipt("o1", true), Ok(ReleaseDecision::Settle));
    let Ok(ReleaseDecision::Record(events, result)) = c.decide_receipt("o1", false) else {
        panic!()
    };
    assert_eq!(result, Ok(Outcome::Disputed));
    for e in &events {
        c.apply(e, 0).unwrap();
    }
    assert_eq!(c.orders["o1"].state, OrderState::Disputed);
    assert_eq!(
        c.decide_receipt("o1", true),
        Ok(ReleaseDecision::Settle),
        "a later satisfied receipt settles"
    );
    assert_eq!(
        c.decide_receipt("nope", true).unwrap_err().kind,
        RefusalKind::Unknown
    );
}

#[test]
fn receipt_and_code_are_refused_for_the_wrong_kind_of_release() {
    let mut c = consumer("8000", "5000");
    accept(&mut c, "c1", "10", Release::Code("42".into()), 0);
    accept(&mut c, "r1", "10", Release::Receipt, 0);
    accept(&mut c, "t1", "10", Release::Time { after_secs: 5 }, 0);
    let cfg = rules();
    assert_eq!(
        c.decide_receipt("c1", true).unwrap_err().kind,
        RefusalKind::State
    );
    assert_eq!(
        c.decide_receipt("t1", true).unwrap_err().kind,
        RefusalKind::State
    );
    assert_eq!(
        c.decide_code("r1", "42", &cfg).unwrap_err().kind,
        RefusalKind::State
    );
    assert_eq!(
        c.decide_code("t1", "42", &cfg).unwrap_err().kind,
        RefusalKind::State
    );
}

#[test]
fn the_nth_wrong_code_disputes_the_order_and_the_right_one_settles() {
    let mut c = consumer("8000", "5000");
    let cfg = RulesConfig {
        code_attempts_max: 3,
        ..rules()
    };
    accept(&mut c, "c1", "90", Release::Code("777".into()), 0);
    for attempt in 1..=2 {
        let Ok(ReleaseDecision::Record(evs, result)) = c.decide_code("c1", "000", &cfg) else {
            panic!()
        };
        assert_eq!(result.unwrap_err().kind, RefusalKind::Code);
        for e in &evs {
            c.apply(e, 0).unwrap();
        }
        assert_eq!(c.orders["c1"].code_attempts, attempt);
    }
    assert_eq!(
        c.decide_code("c1", "777", &cfg),
        Ok(ReleaseDecision::Settle)
    );
    let Ok(ReleaseDecision::Record(evs, result)) = c.decide_code("c1", "1", &cfg) else {
        panic!()
    };
    assert_eq!(result, Ok(Outcome::Disputed));
    for e in &evs {
        c.apply(e, 0).unwrap();
    }
    assert_eq!(c.orders["c1"].state, OrderState::Disputed);
    assert_eq!(c.reserved, a("90"), "a dispute keeps the reservation");
    assert_eq!(
        c.decide_code("c1", "777", &cfg).unwrap_err().kind,
        RefusalKind::State
    );
}

#[test]
fn cancel_releases_the_reservation_and_only_from_pending_or_disputed() {
    let mut c = consumer("1000", "5000");
    accept(&mut c, "o1", "600", Release::Receipt, 0);
    let ev = c.decide_cancel("o1").unwrap();
    c.apply(&ev, 0).unwrap();
    assert_eq!(c.reserved, Amount::ZERO);
    assert_eq!(c.orders["o1"].state, OrderState::Cancelled);
    assert_eq!(c.decide_cancel("o1").unwrap_err().kind, RefusalKind::State);
    accept(&mut c, "o2", "100", Release::Receipt, 0);
    settle(&mut c, "o2", None);
    assert_eq!(c.decide_cancel("o2").unwrap_err().kind, RefusalKind::State);
}

#[test]
fn refunds_only_for_settled_orders_and_never_above_the_amount() {
    let mut c = consumer("8000", "5000");
    accept(&mut c, "o1", "2000", Release::Receipt, 0);
    assert_eq!(
        c.check_refund("o1", a("1")).unwrap_err().kind,
        RefusalKind::State
    );
    settle(&mut c, "o1", None);
    let o = c.check_refund("o1", a("1200")).unwrap().clone();
    let ev = c.refunded_event("r1", &o, a("1200"), a("1200"), Amount::ZERO, None);
    assert!(ev.imbalance().unwrap().is_zero());
    c.apply(&ev, 0).unwrap();
    assert_eq!(c.orders["o1"].refunded, a("1200"));
    assert_eq!(
        c.check_refund("o1", a("800.01")).unwrap_err().kind,
        RefusalKind::State
    );
    assert!(c.check_refund("o1", a("800")).is_ok());
    let o = c.orders["o1"].clone();
    let too_much = c.refunded_event("r2", &o, a("900"), a("900"), Amount::ZERO, None);
    assert!(matches!(
        c.apply(&too_much, 0),
        Err(LedgerError::OverRefunded { .. })
    ));
}

#[test]
fn a_refund_fills_the_wallet_to_the_cap_and_sweeps_the_rest() {
    let cfg = rules();
    assert_eq!(
        consumer("0", "5000").refund_split(a("1200"), &cfg),
        (Amount::ZERO, a("1200"))
    );
    assert_eq!(
        consumer("0", "4500").refund_split(a("1200"), &cfg),
        (a("500"), a("700"))
    );
    assert_eq!(
        consumer("0", "0").refund_split(a("600"), &cfg),
        (a("600"), Amount::ZERO)
    );
}

#[test]
fn tick_work_is_ordered_as_format_md_fixes() {
    let mut c = consumer("9000", "5000");
    let cfg = rules();
    accept(&mut c, "t-late", "10", Release::Time { after_secs: 100 }, 0);
    accept(
        &mut c,
        "t-early",
        "10",
        Release::Time { after_secs: 50 },
        10,
    );
    accept(&mut c, "t-same", "10", Release::Time { after_secs: 60 }, 0);
    accept(&mut c, "r1", "10", Release::Receipt, 5);
    assert!(c.time_due(59).is_empty());
    assert_eq!(
        c.time_due(60),
        vec!["t-early", "t-same"],
        "equal due times go in placement order"
    );
    assert_eq!(c.time_due(100), vec!["t-early", "t-same", "t-late"]);
    assert!(c.expiring(cfg.order_expiry_secs + 4, &cfg).is_empty());
    assert_eq!(
        c.expiring(cfg.order_expiry_secs + 5, &cfg),
        vec!["r1".to_string()]
    );
    assert!(c.has_time_work(100, &cfg));
    assert!(!c.has_time_work(49, &cfg));
}

#[test]
fn time_orders_never_expire() {
    let mut c = consumer("9000", "5000");
    let cfg = rules();
    accept(
        &mut c,
        "t1",
        "10",
        Release::Time {
            after_secs: 10_000_000,
        },
        0,
    );
    assert!(c.expiring(cfg.order_expiry_secs * 10, &cfg).is_empty());
}

#[test]
fn the_whole_ledger_refuses_unbalanced_events_and_reused_ids() {
    let mut state = LedgerState::new(rules());
    let open = Entry::new(
        0,
        vec![consumer_opened_event(
            "alice",
            a("100"),
            "ab",
            a("10"),
            None,
        )],
    );
    state.apply_entry(&open).unwrap();
    assert_eq!(state.total().unwrap(), Amount::ZERO);
    let mut bad = consumer_opened_event("bob", a("1"), "bb", a("10"), None);
    bad.postings[0].amount = a("-9");
    assert!(matches!(
        state.apply_entry(&Entry::new(0, vec![bad])),
        Err(LedgerError::Unbalanced { .. })
    ));
    let again = Entry::new(
        0,
        vec![consumer_opened_event(
            "alice",
            a("1"),
            "other",
            Amount::ZERO,
            None,
        )],
    );
    assert!(matches!(
        state.apply_entry(&again),
        Err(LedgerError::DuplicateAccount(_))
    ));
}

/// I6 in the replay: an order id is used once, by whichever consumer. The ledger keeps the
/// ids as hashes (`IdSet`); a hash seen before is confirmed against the consumers' orders.
#[test]
fn the_whole_ledger_refuses_an_order_id_used_again_by_anyone() {
    let mut state = LedgerState::new(rules());
    for (who, bank) in [("alice", "ab"), ("bob", "bb")] {
        let open = consumer_opened_event(who, a("100"), bank, a("50"), None);
        state.apply_entry(&Entry::new(0, vec![open])).unwrap();
    }
    let placed = |state: &LedgerState, who: &str, id: &str| {
        let c = &state.consumers[who];
        Entry::new(
            0,
            vec![c.placed_event(
                id,
                "shop",
                a("5"),
                &Release::Receipt,
                Ok(Outcome::Accepted),
                false,
            )],
        )
    };
    let first = placed(&state, "alice", "o-1");
    state.apply_entry(&first).unwrap();
    assert_eq!(state.owner_of_order("o-1"), Some("alice"));
    for who in ["bob", "alice"] {
        let again = placed(&state, who, "o-1");
        assert!(
            matches!(state.apply_entry(&again), Err(LedgerError::DuplicateId(id)) if id == "o-1"),
            "{who} placing o-1 again"
        );
    }
    // Refused before anything was applied: bob holds no order, alice one.
    assert!(state.consumers["bob"].orders.is_empty());
    assert_eq!(state.consumers["alice"].orders.len(), 1);
    let other = placed(&state, "bob", "o-2");
    state.apply_entry(&other).unwrap();
    assert_eq!(state.order_ids.len(), 2);
    assert_eq!(state.owner_of_order("o-2"), Some("bob"));
}

#[test]
fn a_wallet_above_the_cap_is_an_invariant_violation() {
    let cfg = RulesConfig {
        wallet_cap: a("100"),
        topup_threshold: a("100"),
        ..rules()
    };
    let c = consumer("0", "100.01");
    assert!(matches!(
        c.check_wallet(&cfg),
        Err(LedgerError::WalletOutOfRange { .. })
    ));
    assert!(consumer("0", "100").check_wallet(&cfg).is_ok());
}

// ----- payment-gateway rules (SPEC F9) -----

fn rules_with(f: impl FnOnce(&mut GatewayRules)) -> GatewayRules {
    let mut r = GatewayRules::default();
    f(&mut r);
    r.validate().unwrap();
    r
}

/// 2026-12-07 at `hh:mm` UTC, in unix seconds.
fn at(hh: u64, mm: u64) -> Secs {
    1_796_601_600 + hh * 3600 + mm * 60
}

#[test]
fn each_gateway_rule_refuses_by_its_own_name() {
    let check = |r: &GatewayRules, merchant, category, amount, spent, now| {
        r.check(merchant, category, a(amount), a(spent), now)
            .map_err(|g| g.rule)
    };
    let none = GatewayRules::default();
    assert_eq!(
        check(&none, "shop", "games", "9999.99", "0", at(3, 0)),
        Ok(())
    );

    let r = rules_with(|r| r.max_per_payment = Some(a("100.00")));
    assert_eq!(check(&r, "shop", "x", "100.00", "0", at(12, 0)), Ok(()));
    assert_eq!(
        check(&r, "shop", "x", "100.01", "0", at(12, 0)),
        Err("max_per_payment")
    );

    let r = rules_with(|r| r.max_per_day = Some(a("150.00")));
    assert_eq!(check(&r, "shop", "x", "50.00", "100.00", at(12, 0)), Ok(()));
    assert_eq!(
        check(&r, "shop", "x", "50.01", "100.00", at(12, 0)),
        Err("max_per_day")
    );

    let r = rules_with(|r| r.blocked_merchants = vec!["casino".into()]);
    assert_eq!(
        check(&r, "casino", "x", "1", "0", at(12, 0)),
        Err("merchant")
    );
    assert_eq!(check(&r, "shop", "x", "1", "0", at(12, 0)), Ok(()));
    let r = rules_with(|r| r.allowed_merchants = vec!["shop".into()]);
    assert_eq!(
        check(&r, "other", "x", "1", "0", at(12, 0)),
        Err("merchant")
    );

    let r = rules_with(|r| r.blocked_categories = vec!["games".into()]);
    assert_eq!(
        check(&r, "shop", "games", "1", "0", at(12, 0)),
        Err("category")
    );
    let r = rules_with(|r| r.allowed_categories = vec!["groceries".into()]);
    assert_eq!(
        check(&r, "shop", "games", "1", "0", at(12, 0)),
        Err("category")
    );
    assert_eq!(check(&r, "shop", "groceries", "1", "0", at(12, 0)), Ok(()));
}

#[test]
fn allowed_hours_are_the_consumers_and_may_span_midnight() {
    let day = rules_with(|r| {
        r.hours = Some(AllowedHours {
            from: "08:00".into(),
            to: "20:00".into(),
        })
    });
    assert!(day.check("s", "c", a("1"), a("0"), at(8, 0)).is_ok());
    assert!(day.check("s", "c", a("1"), a("0"), at(19, 59)).is_ok());
    assert_eq!(
        day.check("s", "c", a("1"), a("0"), at(20, 0))
            .unwrap_err()
            .rule,
        "hours"
    );
    assert!(day.check("s", "c", a("1"), a("0"), at(7, 59)).is_err());
    let night = rules_with(|r| {
        r.hours = Some(AllowedHours {
            from: "22:00".into(),
            to: "06:00".into(),
        })
    });
    assert!(night.check("s", "c", a("1"), a("0"), at(23, 0)).is_ok());
    assert!(night.check("s", "c", a("1"), a("0"), at(5, 59)).is_ok());
    assert!(night.check("s", "c", a("1"), a("0"), at(12, 0)).is_err());
    // UTC+2: 07:30 UTC is 09:30 for the consumer, inside 08:00–20:00; and the day changes at
    // the consumer's midnight (22:00 UTC), not at UTC's.
    let east = rules_with(|r| {
        r.hours = day.hours.clone();
        r.utc_offset_minutes = 120;
    });
    assert!(east.check("s", "c", a("1"), a("0"), at(7, 30)).is_ok());
    assert_eq!(east.day_of(at(21, 59)), east.day_of(at(0, 0)));
    assert_eq!(east.day_of(at(22, 0)), east.day_of(at(0, 0)) + 1);
}

#[test]
fn malformed_gateway_rules_are_refused_with_the_reason() {
    let bad = [
        GatewayRules {
            max_per_payment: Some(Amount::ZERO),
            ..Default::default()
        },
        GatewayRules {
            hours: Some(AllowedHours {
                from: "24:00".into(),
                to: "06:00".into(),
            }),
            ..Default::default()
        },
        GatewayRules {
            hours: Some(AllowedHours {
                from: "8:00".into(),
                to: "20:00".into(),
            }),
            ..Default::default()
        },
        GatewayRules {
            hours: Some(AllowedHours {
                from: "08:00".into(),
                to: "08:00".into(),
            }),
            ..Default::default()
        },
        GatewayRules {
            blocked_merchants: vec![String::new()],
            ..Default::default()
        },
        GatewayRules {
            allowed_categories: vec!["x".into(); 101],
            ..Default::default()
        },
        GatewayRules {
            utc_offset_minutes: 15 * 60,
            ..Default::default()
        },
    ];
    for r in bad {
        assert!(r.validate().is_err(), "{r:?}");
    }
}

#[test]
fn the_daily_limit_counts_payments_at_readers_of_the_consumers_day_only() {
    let mut c = consumer("1000", "500");
    let rules = rules_with(|r| r.max_per_day = Some(a("100.00")));
    c.apply(
        &Event::new(EventKind::GatewayRulesSet {
            consumer: "alice".into(),
            rules: Some(rules),
        }),
        at(9, 0),
    )
    .unwrap();
    let spent = c
        .decide_gateway("o1", "shop", "c", a("60.00"), at(9, 0))
        .unwrap()
        .expect("counted against the daily limit");
    c.apply(&spent, at(9, 0)).unwrap();
    let r = c
        .decide_gateway("o2", "shop", "c", a("40.01"), at(10, 0))
        .unwrap_err();
    assert_eq!(r.kind, RefusalKind::Gateway);
    assert!(r.message.starts_with("max_per_day"), "{}", r.message);
    assert!(c
        .decide_gateway("o2", "shop", "c", a("40.00"), at(10, 0))
        .is_ok());
    // The next day starts from nothing.
    assert!(c
        .decide_gateway("o3", "shop", "c", a("100.00"), at(9, 0) + 86_400)
        .is_ok());
    // Rules removed: nothing checked, nothing counted.
    c.apply(
        &Event::new(EventKind::GatewayRulesSet {
            consumer: "alice".into(),
            rules: None,
        }),
        at(11, 0),
    )
    .unwrap();
    assert_eq!(
        c.decide_gateway("o4", "shop", "c", a("999.00"), at(11, 0)),
        Ok(None)
    );
}

// ----- credits (SPEC F8, F12) -----

#[test]
fn a_credit_splits_at_the_cap_by_its_target() {
    let c = consumer("1000", "4900");
    let cfg = rules();
    let recharge = CreditSource::RechargeCard { batch: "b".into() };
    assert_eq!(
        c.credit_split(
            &recharge,
            CreditTarget::WalletOverflowToBank,
            a("250"),
            &cfg
        ),
        Ok((a("100"), a("150")))
    );
    assert_eq!(
        c.credit_split(&recharge, CreditTarget::WalletOnly, a("100"), &cfg),
        Ok((a("100"), Amount::ZERO))
    );
    assert_eq!(
        c.credit_split(&recharge, CreditTarget::WalletOnly, a("100.01"), &cfg)
            .unwrap_err()
            .kind,
        RefusalKind::Amount
    );
    assert_eq!(
        c.credit_split(&recharge, CreditTarget::Bank, a("250"), &cfg),
        Ok((Amount::ZERO, a("250")))
    );
    let transfer = CreditSource::BankTransfer;
    assert!(c
        .credit_split(
            &transfer,
            CreditTarget::WalletOverflowToBank,
            a("100.01"),
            &cfg
        )
        .is_err());
    assert!(c
        .credit_split(&transfer, CreditTarget::Bank, a("1"), &cfg)
        .is_err());
    // Every credit event is balanced, and only the recharge batch's posting is external.
    let ev = c.credited_event(
        "rc",
        &recharge,
        CreditTarget::WalletOverflowToBank,
        a("250"),
        a("100"),
        a("150"),
        Some("op".into()),
    );
    assert!(ev.imbalance().unwrap().is_zero());
    let external: Vec<_> = ev
        .postings
        .iter()
        .filter(|p| ev.is_external_clearing(p))
        .collect();
    assert_eq!(external.len(), 1);
    assert_eq!(
        external[0].account,
        AccountRef::BankClearing(recharge_clearing("b"))
    );
}
