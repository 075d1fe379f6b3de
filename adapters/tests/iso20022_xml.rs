//! ISO 20022 XML: round trips, refused input (each with its error), a never-panics fuzz of
//! every reader, and (ignored: it needs Python) validation of what we write against the official
//! XSDs.
//!
//! The fuzz runs 2,000 cases per property unless `PROPTEST_CASES` says otherwise:
//! `PROPTEST_CASES=1000000 cargo test --release -p onecard-adapters --test iso20022_xml fuzz_`.

use std::sync::OnceLock;

use onecard_adapters::iso20022::xml::{XmlError, MAX_MESSAGE_BYTES};
use onecard_adapters::iso20022::{
    BookedEntry, Direction, Initiation, Notification, Reason, Side, Statement, StatusReport,
    Transfer, TxReport, TxStatus, PAIN_001, PAIN_008,
};
use onecard_engine::money::Amount;
use proptest::prelude::*;
use time::macros::{date, datetime};

fn amount(s: &str) -> Amount {
    Amount::parse_positive(s).expect("test amount")
}

fn initiation(direction: Direction) -> Initiation {
    Initiation {
        direction,
        msg_id: "MSG-2024-05-01-0001".into(),
        created: datetime!(2024-05-01 10:11:12.5 UTC),
        initiator_name: "OneCard Settlement Center <&> \"S.A.\"".into(),
        creditor_id: "DE98ZZZ09999999999".into(),
        own_account: "DE89370400440532013000".into(),
        currency: "EUR".into(),
        requested: date!(2024 - 05 - 03),
        transfers: vec![
            Transfer {
                end_to_end_id: "op-1".into(),
                account: "FR7630006000011234567890189".into(),
                amount: amount("0.01"),
            },
            Transfer {
                end_to_end_id: "op-2".into(),
                account: "MERCHANT-42".into(),
                amount: amount("12345678.90"),
            },
            Transfer {
                end_to_end_id: "op-3-éèà-35-chars-long-xxxxxxxxxxxx".into(),
                account: "acct/with spaces inside".into(),
                amount: amount("7"),
            },
        ],
    }
}

fn status_report() -> StatusReport {
    StatusReport {
        msg_id: "PAIN002-1".into(),
        created: datetime!(2024-05-01 10:15:00 +02:00),
        original_msg_id: "MSG-2024-05-01-0001".into(),
        original_direction: Direction::Debit,
        transactions: vec![
            TxReport {
                original_end_to_end_id: "op-1".into(),
                status: TxStatus::Accepted,
            },
            TxReport {
                original_end_to_end_id: "op-2".into(),
                status: TxStatus::Pending,
            },
            TxReport {
                original_end_to_end_id: "op-3".into(),
                status: TxStatus::Rejected(Reason::InsufficientFunds),
            },
            TxReport {
                original_end_to_end_id: "op-4".into(),
                status: TxStatus::Rejected(Reason::ClosedAccount),
            },
        ],
    }
}

fn entries() -> Vec<BookedEntry> {
    vec![
        BookedEntry {
            end_to_end_id: "op-1".into(),
            amount: amount("0.01"),
            side: Side::Credit,
            booked: date!(2024 - 05 - 03),
        },
        BookedEntry {
            end_to_end_id: "op-2".into(),
            amount: amount("12345678.90"),
            side: Side::Debit,
            booked: date!(2024 - 05 - 03),
        },
        BookedEntry {
            end_to_end_id: "op-1".into(),
            amount: amount("0.01"),
            side: Side::Debit,
            booked: date!(2024 - 05 - 04),
        },
    ]
}

fn notification() -> Notification {
    Notification {
        msg_id: "CAMT054-1".into(),
        created: datetime!(2024-05-03 18:00:00 UTC),
        notification_id: "NTF-1".into(),
        sequence: 42,
        account: "DE89370400440532013000".into(),
        currency: "EUR".into(),
        entries: entries(),
    }
}

fn statement() -> Statement {
    Statement {
        msg_id: "CAMT053-1".into(),
        created: datetime!(2024-05-03 23:00:00 UTC),
        statement_id: "STMT-2024-05-03".into(),
        account: "SETTLEMENT-ACCOUNT".into(),
        currency: "EUR".into(),
        date: date!(2024 - 05 - 03),
        opening: Amount::parse("100.00").expect("amount").checked_neg(),
        closing: Amount::ZERO,
        entries: entries(),
    }
}

/// Every reader, for the fuzz and for the refusals that apply to all of them.
fn read_all(bytes: &[u8]) -> [Result<(), XmlError>; 4] {
    [
        Initiation::from_xml(bytes).map(|_| ()),
        StatusReport::from_xml(bytes).map(|_| ()),
        Notification::from_xml(bytes).map(|_| ()),
        Statement::from_xml(bytes).map(|_| ()),
    ]
}

/// A valid message of every kind, written once.
fn samples() -> &'static [String] {
    static SAMPLES: OnceLock<Vec<String>> = OnceLock::new();
    SAMPLES.get_or_init(|| {
        vec![
            initiation(Direction::Credit).to_xml().expect("pain.001"),
            initiation(Direction::Debit).to_xml().expect("pain.008"),
            status_report().to_xml().expect("pain.002"),
            notification().to_xml().expect("camt.054"),
            statement().to_xml().expect("camt.053"),
        ]
    })
}

fn credit_xml() -> String {
    samples()[0].clone()
}

// ---------------------------------------------------------------------------------------------
// Round trips.
// ---------------------------------------------------------------------------------------------

#[test]
fn round_trip_pain001() {
    let msg = initiation(Direction::Credit);
    let xml = msg.to_xml().expect("write");
    assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Document xmlns=\""));
    assert!(xml.contains(PAIN_001));
    assert!(xml.contains("<CstmrCdtTrfInitn>"));
    assert_eq!(Initiation::from_xml(xml.as_bytes()), Ok(msg));
}

#[test]
fn round_trip_pain008() {
    let msg = initiation(Direction::Debit);
    let xml = msg.to_xml().expect("write");
    assert!(xml.contains(PAIN_008));
    assert!(xml.contains("<CstmrDrctDbtInitn>"));
    assert_eq!(Initiation::from_xml(xml.as_bytes()), Ok(msg));
}

#[test]
fn round_trip_pain008_other_currency_single_transfer() {
    let mut msg = initiation(Direction::Debit);
    msg.currency = "CHF".into();
    msg.transfers.truncate(1);
    let xml = msg.to_xml().expect("write");
    assert!(!xml.contains("SvcLvl"), "SEPA only in euro:\n{xml}");
    assert_eq!(Initiation::from_xml(xml.as_bytes()), Ok(msg));
}

#[test]
fn round_trip_pain002() {
    let msg = status_report();
    let xml = msg.to_xml().expect("write");
    let back = StatusReport::from_xml(xml.as_bytes()).expect("read");
    assert_eq!(back, msg);
    // Written in UTC.
    assert!(xml.contains("2024-05-01T08:15:00Z"), "{xml}");
    let mut credit = msg;
    credit.original_direction = Direction::Credit;
    let xml = credit.to_xml().expect("write");
    assert_eq!(StatusReport::from_xml(xml.as_bytes()), Ok(credit));
}

#[test]
fn round_trip_camt054() {
    let msg = notification();
    let xml = msg.to_xml().expect("write");
    assert_eq!(Notification::from_xml(xml.as_bytes()), Ok(msg.clone()));
    let empty = Notification {
        entries: vec![],
        sequence: 999_999_999_999_999_999,
        ..msg
    };
    let xml = empty.to_xml().expect("write");
    assert_eq!(Notification::from_xml(xml.as_bytes()), Ok(empty));
}

#[test]
fn round_trip_camt053() {
    let msg = statement();
    let xml = msg.to_xml().expect("write");
    assert!(xml.contains("DBIT"));
    assert_eq!(Statement::from_xml(xml.as_bytes()), Ok(msg.clone()));
    let big = Statement {
        opening: Amount::parse("9999999999999999.99").expect("amount"),
        closing: Amount::parse("12345678.90").expect("amount").checked_neg(),
        entries: vec![],
        ..msg
    };
    let xml = big.to_xml().expect("write");
    assert_eq!(Statement::from_xml(xml.as_bytes()), Ok(big));
}

// ---------------------------------------------------------------------------------------------
// What is refused when writing.
// ---------------------------------------------------------------------------------------------

#[test]
fn writing_refuses_what_the_schema_would() {
    let base = initiation(Direction::Credit);
    let mut m = base.clone();
    m.msg_id = "x".repeat(36);
    assert!(matches!(
        m.to_xml(),
        Err(XmlError::BadId {
            field: "GrpHdr/MsgId",
            ..
        })
    ));
    let mut m = base.clone();
    m.transfers[0].end_to_end_id = String::new();
    assert!(matches!(m.to_xml(), Err(XmlError::BadId { .. })));
    let mut m = base.clone();
    m.transfers[1].end_to_end_id = "op-1".into();
    assert!(matches!(m.to_xml(), Err(XmlError::Duplicate(_))));
    let mut m = base.clone();
    m.transfers[0].amount = Amount::ZERO;
    assert!(matches!(m.to_xml(), Err(XmlError::BadAmount { .. })));
    let mut m = base.clone();
    m.transfers[0].amount = amount("5").checked_neg();
    assert!(matches!(
        m.to_xml(),
        Err(XmlError::BadAmount {
            reason: "negative",
            ..
        })
    ));
    let mut m = base.clone();
    m.transfers[0].amount = amount("10000000000000000");
    assert!(matches!(m.to_xml(), Err(XmlError::BadAmount { .. })));
    let mut m = base.clone();
    m.currency = "eur".into();
    assert!(matches!(m.to_xml(), Err(XmlError::BadCurrency(_))));
    let mut m = base.clone();
    m.transfers.clear();
    assert!(matches!(m.to_xml(), Err(XmlError::Missing(_))));
    let mut m = base;
    m.transfers[0].account = "x".repeat(35);
    assert!(matches!(m.to_xml(), Err(XmlError::BadId { .. })));
    let mut n = notification();
    n.sequence = u64::MAX;
    assert!(matches!(n.to_xml(), Err(XmlError::BadNumber { .. })));
}

// ---------------------------------------------------------------------------------------------
// What is refused when reading.
// ---------------------------------------------------------------------------------------------

fn replace_once(xml: &str, from: &str, to: &str) -> String {
    assert!(xml.contains(from), "{from:?} not in\n{xml}");
    xml.replacen(from, to, 1)
}

#[test]
fn refuses_wrong_namespace() {
    let xml = replace_once(
        &credit_xml(),
        PAIN_001,
        "urn:iso:std:iso:20022:tech:xsd:pain.001.001.03",
    );
    assert!(matches!(
        Initiation::from_xml(xml.as_bytes()),
        Err(XmlError::WrongNamespace { found, .. }) if found.ends_with("pain.001.001.03")
    ));
    // A status report is not an initiation, and no namespace at all is refused too.
    let report = &samples()[2];
    assert!(matches!(
        Initiation::from_xml(report.as_bytes()),
        Err(XmlError::WrongNamespace { .. })
    ));
    let xml = replace_once(&credit_xml(), &format!(" xmlns=\"{PAIN_001}\""), "");
    assert!(matches!(
        Initiation::from_xml(xml.as_bytes()),
        Err(XmlError::WrongNamespace { found, .. }) if found.is_empty()
    ));
    // An element moved to another namespace.
    let xml = replace_once(&credit_xml(), "<GrpHdr>", "<GrpHdr xmlns=\"urn:other\">");
    assert!(matches!(
        Initiation::from_xml(xml.as_bytes()),
        Err(XmlError::WrongNamespace { .. })
    ));
}

#[test]
fn refuses_wrong_message_and_root() {
    // pain.001 namespace with the pain.008 message element.
    let xml = credit_xml().replace("CstmrCdtTrfInitn>", "CstmrDrctDbtInitn>");
    assert!(matches!(
        Initiation::from_xml(xml.as_bytes()),
        Err(XmlError::WrongMessage { expected: "CstmrCdtTrfInitn", found }) if found == "CstmrDrctDbtInitn"
    ));
    let xml = credit_xml().replace("Document", "Doc");
    assert!(matches!(
        Initiation::from_xml(xml.as_bytes()),
        Err(XmlError::Root { found }) if found == "Doc"
    ));
    let xml = credit_xml()
        .replace("<Document xmlns=", "<p:Document xmlns:p=")
        .replace("</Document>", "</p:Document>");
    assert!(matches!(
        Initiation::from_xml(xml.as_bytes()),
        Err(XmlError::Root { .. })
    ));
}

#[test]
fn refuses_missing_fields() {
    let xml = replace_once(&credit_xml(), "<MsgId>MSG-2024-05-01-0001</MsgId>", "");
    assert_eq!(
        Initiation::from_xml(xml.as_bytes()),
        Err(XmlError::Missing("MsgId".into()))
    );
    let statement = &samples()[4];
    let start = statement.find("<Bal>").expect("Bal");
    let end = statement.find("</Bal>").expect("/Bal") + "</Bal>".len();
    let xml = format!("{}{}", &statement[..start], &statement[end..]);
    assert_eq!(
        Statement::from_xml(xml.as_bytes()),
        Err(XmlError::Missing("Stmt/Bal OPBD".into()))
    );
    let notification = &samples()[3];
    let xml = replace_once(notification, "<ElctrncSeqNb>42</ElctrncSeqNb>", "");
    assert_eq!(
        Notification::from_xml(xml.as_bytes()),
        Err(XmlError::Missing("Ntfctn/ElctrncSeqNb".into()))
    );
    let xml = replace_once(notification, "<Ccy>EUR</Ccy>", "");
    // Without Acct/Ccy the entries' currency is the message's.
    assert_eq!(
        Notification::from_xml(xml.as_bytes()).map(|n| n.currency),
        Ok("EUR".to_string())
    );
}

#[test]
fn refuses_duplicated_fields() {
    let xml = replace_once(
        &credit_xml(),
        "<MsgId>MSG-2024-05-01-0001</MsgId>",
        "<MsgId>MSG-2024-05-01-0001</MsgId><MsgId>OTHER</MsgId>",
    );
    assert_eq!(
        Initiation::from_xml(xml.as_bytes()),
        Err(XmlError::Duplicate(
            "Document/CstmrCdtTrfInitn/GrpHdr/MsgId".into()
        ))
    );
    let xml = replace_once(
        &credit_xml(),
        "<EndToEndId>op-2</EndToEndId>",
        "<EndToEndId>op-2</EndToEndId><EndToEndId>op-9</EndToEndId>",
    );
    assert!(matches!(
        Initiation::from_xml(xml.as_bytes()),
        Err(XmlError::Duplicate(p)) if p.ends_with("PmtId/EndToEndId")
    ));
    // Two transactions with one end-to-end id.
    let xml = replace_once(
        &credit_xml(),
        "<EndToEndId>op-2</EndToEndId>",
        "<EndToEndId>op-1</EndToEndId>",
    );
    assert!(matches!(
        Initiation::from_xml(xml.as_bytes()),
        Err(XmlError::Duplicate(p)) if p.contains("op-1")
    ));
    // A duplicated amount attribute.
    let xml = replace_once(
        &credit_xml(),
        "<InstdAmt Ccy=\"EUR\">",
        "<InstdAmt Ccy=\"EUR\" Ccy=\"USD\">",
    );
    assert!(matches!(
        Initiation::from_xml(xml.as_bytes()),
        Err(XmlError::Malformed(_) | XmlError::Duplicate(_))
    ));
    // A second message element.
    let report = &samples()[2];
    let xml = report.replace("</CstmrPmtStsRpt>", "</CstmrPmtStsRpt><CstmrPmtStsRpt/>");
    assert!(matches!(
        StatusReport::from_xml(xml.as_bytes()),
        Err(XmlError::Duplicate(_))
    ));
    let xml = replace_once(
        report,
        "<TxSts>ACSC</TxSts>",
        "<TxSts>ACSC</TxSts><TxSts>RJCT</TxSts>",
    );
    assert!(matches!(
        StatusReport::from_xml(xml.as_bytes()),
        Err(XmlError::Duplicate(p)) if p.ends_with("TxInfAndSts/TxSts")
    ));
    // Two statuses for one operation.
    let xml = replace_once(
        report,
        "<OrgnlEndToEndId>op-2</OrgnlEndToEndId>",
        "<OrgnlEndToEndId>op-1</OrgnlEndToEndId>",
    );
    assert!(matches!(
        StatusReport::from_xml(xml.as_bytes()),
        Err(XmlError::Duplicate(_))
    ));
    // Two balances of one type.
    let statement = &samples()[4];
    let xml = replace_once(statement, "<Cd>CLBD</Cd>", "<Cd>OPBD</Cd>");
    assert!(matches!(
        Statement::from_xml(xml.as_bytes()),
        Err(XmlError::Duplicate(_))
    ));
}

#[test]
fn refuses_unknown_status_and_reason_codes() {
    let report = &samples()[2];
    let xml = replace_once(report, "<TxSts>ACSC</TxSts>", "<TxSts>XXXX</TxSts>");
    assert_eq!(
        StatusReport::from_xml(xml.as_bytes()),
        Err(XmlError::UnknownCode {
            field: "TxInfAndSts/TxSts",
            code: "XXXX".into()
        })
    );
    let xml = replace_once(report, "<Cd>AM04</Cd>", "<Cd>AM99</Cd>");
    assert_eq!(
        StatusReport::from_xml(xml.as_bytes()),
        Err(XmlError::UnknownCode {
            field: "TxInfAndSts/StsRsnInf/Rsn/Cd",
            code: "AM99".into()
        })
    );
    // A rejection without a reason.
    let start = report.find("<StsRsnInf>").expect("StsRsnInf");
    let end = report.find("</StsRsnInf>").expect("/StsRsnInf") + "</StsRsnInf>".len();
    let xml = format!("{}{}", &report[..start], &report[end..]);
    assert!(matches!(
        StatusReport::from_xml(xml.as_bytes()),
        Err(XmlError::Missing(_))
    ));
    let xml = replace_once(report, "pain.008.001.08", "pain.008.001.02");
    assert!(matches!(
        StatusReport::from_xml(xml.as_bytes()),
        Err(XmlError::UnknownCode {
            field: "OrgnlGrpInfAndSts/OrgnlMsgNmId",
            ..
        })
    ));
    // Every pending and accepted code the node knows.
    for (code, status) in [
        ("ACCC", TxStatus::Accepted),
        ("RCVD", TxStatus::Pending),
        ("ACTC", TxStatus::Pending),
        ("ACCP", TxStatus::Pending),
        ("ACSP", TxStatus::Pending),
        ("ACWC", TxStatus::Pending),
    ] {
        let xml = replace_once(
            report,
            "<TxSts>ACSC</TxSts>",
            &format!("<TxSts>{code}</TxSts>"),
        );
        let r = StatusReport::from_xml(xml.as_bytes()).expect(code);
        assert_eq!(r.transactions[0].status, status, "{code}");
    }
    // Entries: only booked ones, credit or debit.
    let notification = &samples()[3];
    let xml = replace_once(notification, "<Cd>BOOK</Cd>", "<Cd>PDNG</Cd>");
    assert!(matches!(
        Notification::from_xml(xml.as_bytes()),
        Err(XmlError::UnknownCode {
            field: "Ntry/Sts/Cd",
            ..
        })
    ));
    let xml = replace_once(
        notification,
        "<CdtDbtInd>CRDT</CdtDbtInd>",
        "<CdtDbtInd>BOTH</CdtDbtInd>",
    );
    assert!(matches!(
        Notification::from_xml(xml.as_bytes()),
        Err(XmlError::UnknownCode {
            field: "Ntry/CdtDbtInd",
            ..
        })
    ));
}

#[test]
fn refuses_bad_amounts() {
    let reason = |from: &str, to: &str| match Initiation::from_xml(
        replace_once(&credit_xml(), from, to).as_bytes(),
    ) {
        Err(XmlError::BadAmount { reason, .. }) => reason,
        other => panic!("{to}: {other:?}"),
    };
    let from = "<InstdAmt Ccy=\"EUR\">0.01</InstdAmt>";
    assert_eq!(
        reason(from, "<InstdAmt Ccy=\"EUR\">0.015</InstdAmt>"),
        "more than two decimals"
    );
    assert_eq!(
        reason(from, "<InstdAmt Ccy=\"EUR\">-0.01</InstdAmt>"),
        "negative"
    );
    assert_eq!(
        reason(from, "<InstdAmt Ccy=\"EUR\">0.00</InstdAmt>"),
        "zero where a positive amount is required"
    );
    assert_eq!(
        reason(from, "<InstdAmt Ccy=\"EUR\">one</InstdAmt>"),
        "not a number with at most two decimals"
    );
    assert_eq!(
        reason(from, "<InstdAmt Ccy=\"EUR\"/>"),
        "not a number with at most two decimals"
    );
    // Another currency in the same message.
    let xml = replace_once(&credit_xml(), from, "<InstdAmt Ccy=\"USD\">0.01</InstdAmt>");
    assert_eq!(
        Initiation::from_xml(xml.as_bytes()),
        Err(XmlError::Currency {
            expected: "USD".into(),
            found: "EUR".into()
        })
    );
    let xml = replace_once(&credit_xml(), from, "<InstdAmt Ccy=\"usd\">0.01</InstdAmt>");
    assert!(matches!(
        Initiation::from_xml(xml.as_bytes()),
        Err(XmlError::BadCurrency(_))
    ));
    // A statement balance may be zero, an entry may not.
    let notification = &samples()[3];
    let xml = replace_once(notification, ">0.01</Amt>", ">0</Amt>");
    assert!(matches!(
        Notification::from_xml(xml.as_bytes()),
        Err(XmlError::BadAmount {
            field: "Ntry/Amt",
            ..
        })
    ));
}

#[test]
fn refuses_count_and_sum_mismatches() {
    let xml = replace_once(
        &credit_xml(),
        "<NbOfTxs>3</NbOfTxs>",
        "<NbOfTxs>4</NbOfTxs>",
    );
    assert_eq!(
        Initiation::from_xml(xml.as_bytes()),
        Err(XmlError::Count {
            field: "GrpHdr/NbOfTxs",
            declared: "4".into(),
            found: "3".into()
        })
    );
    let xml = replace_once(
        &credit_xml(),
        "<CtrlSum>12345685.91</CtrlSum>",
        "<CtrlSum>12345685.90</CtrlSum>",
    );
    assert!(matches!(
        Initiation::from_xml(xml.as_bytes()),
        Err(XmlError::Count {
            field: "GrpHdr/CtrlSum",
            ..
        })
    ));
    let xml = replace_once(
        &credit_xml(),
        "<NbOfTxs>3</NbOfTxs>",
        "<NbOfTxs>three</NbOfTxs>",
    );
    assert!(matches!(
        Initiation::from_xml(xml.as_bytes()),
        Err(XmlError::BadNumber { .. })
    ));
    let notification = &samples()[3];
    let xml = replace_once(
        notification,
        "<NbOfNtries>3</NbOfNtries>",
        "<NbOfNtries>2</NbOfNtries>",
    );
    assert!(matches!(
        Notification::from_xml(xml.as_bytes()),
        Err(XmlError::Count { .. })
    ));
}

#[test]
fn reads_batch_entries_one_per_transaction() {
    let notification = &samples()[3];
    // The first entry (0.01) becomes a batch of two transactions, 0.005 is not possible, so 12.34
    // = 10.00 + 2.34.
    let xml = replace_once(notification, ">0.01</Amt>", ">12.34</Amt>");
    let xml = replace_once(
        &xml,
        "<TxDtls>\n            <Refs>\n              <EndToEndId>op-1</EndToEndId>\n            </Refs>\n          </TxDtls>",
        "<TxDtls><Refs><EndToEndId>a</EndToEndId></Refs><Amt Ccy=\"EUR\">10.00</Amt></TxDtls>\
         <TxDtls><Refs><EndToEndId>b</EndToEndId></Refs><Amt Ccy=\"EUR\">2.34</Amt></TxDtls>",
    );
    let n = Notification::from_xml(xml.as_bytes()).expect("read");
    assert_eq!(n.entries.len(), 4);
    assert_eq!(n.entries[0].end_to_end_id, "a");
    assert_eq!(n.entries[0].amount, amount("10"));
    assert_eq!(n.entries[1].end_to_end_id, "b");
    assert_eq!(n.entries[1].amount, amount("2.34"));
    assert_eq!(n.entries[1].side, Side::Credit);
    let bad = xml.replace(">2.34</Amt>", ">2.33</Amt>");
    assert!(matches!(
        Notification::from_xml(bad.as_bytes()),
        Err(XmlError::Count {
            field: "Ntry/Amt",
            ..
        })
    ));
}

#[test]
fn refuses_doctype_billion_laughs() {
    let xml = credit_xml().replacen(
        "<Document",
        "<!DOCTYPE lolz [\n<!ENTITY lol \"lol\">\n<!ENTITY lol2 \"&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;\">\n\
         <!ENTITY lol3 \"&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;\">\n]>\n<Document",
        1,
    );
    let xml = xml.replace("OneCard Settlement Center", "&lol3;");
    for r in read_all(xml.as_bytes()) {
        assert_eq!(r, Err(XmlError::Doctype));
    }
}

#[test]
fn refuses_doctype_external_entity() {
    let xml = credit_xml().replacen(
        "<Document",
        "<!DOCTYPE Document [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]>\n<Document",
        1,
    );
    let xml = xml.replace("MSG-2024-05-01-0001", "&xxe;");
    for r in read_all(xml.as_bytes()) {
        assert_eq!(r, Err(XmlError::Doctype));
    }
    // Lower case, and a bare DOCTYPE with an external DTD.
    let xml = credit_xml().replacen(
        "<Document",
        "<!doctype Document SYSTEM \"http://attacker.example/x.dtd\">\n<Document",
        1,
    );
    assert_eq!(Initiation::from_xml(xml.as_bytes()), Err(XmlError::Doctype));
    // An undeclared entity is not expanded either.
    let xml = credit_xml().replace("MSG-2024-05-01-0001", "&xxe;");
    assert!(matches!(
        Initiation::from_xml(xml.as_bytes()),
        Err(XmlError::Malformed(_))
    ));
}

#[test]
fn refuses_oversized_input_before_parsing() {
    // Zeros are not even XML: the size is the only thing that can refuse them this fast.
    let big = vec![0u8; MAX_MESSAGE_BYTES + 1];
    let start = std::time::Instant::now();
    for r in read_all(&big) {
        assert_eq!(
            r,
            Err(XmlError::TooLarge {
                size: MAX_MESSAGE_BYTES + 1,
                limit: MAX_MESSAGE_BYTES
            })
        );
    }
    assert!(start.elapsed() < std::time::Duration::from_secs(1));
    // A valid message padded with spaces to the limit is still read.
    let mut xml = credit_xml().into_bytes();
    xml.resize(MAX_MESSAGE_BYTES, b' ');
    assert!(Initiation::from_xml(&xml).is_ok());
}

#[test]
fn refuses_non_utf8_and_other_encodings() {
    let mut bytes = credit_xml().into_bytes();
    let at = credit_xml().find("MSG-").expect("MsgId");
    bytes[at] = 0xFF;
    assert!(matches!(
        Initiation::from_xml(&bytes),
        Err(XmlError::Encoding(_))
    ));
    let xml = credit_xml().replace("encoding=\"UTF-8\"", "encoding=\"ISO-8859-1\"");
    assert!(matches!(
        Initiation::from_xml(xml.as_bytes()),
        Err(XmlError::Encoding(_))
    ));
    // UTF-16 (with its byte order mark) is not UTF-8.
    let utf16: Vec<u8> = [0xFF, 0xFE]
        .into_iter()
        .chain(credit_xml().encode_utf16().flat_map(u16::to_le_bytes))
        .collect();
    assert!(matches!(
        Initiation::from_xml(&utf16),
        Err(XmlError::Encoding(_))
    ));
    // A UTF-8 byte order mark is fine.
    let with_bom = format!("\u{FEFF}{}", credit_xml());
    assert!(Initiation::from_xml(with_bom.as_bytes()).is_ok());
}

#[test]
fn refuses_empty_and_truncated_input() {
    for empty in [&b""[..], b"   \n\t"] {
        for r in read_all(empty) {
            assert_eq!(r, Err(XmlError::Empty));
        }
    }
    let xml = credit_xml();
    let truncated = &xml.as_bytes()[..xml.len() / 2];
    assert!(matches!(
        Initiation::from_xml(truncated),
        Err(XmlError::Malformed(_))
    ));
    let decl_only = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>";
    assert!(matches!(
        Initiation::from_xml(decl_only),
        Err(XmlError::Missing(_))
    ));
    let no_message = format!("<Document xmlns=\"{PAIN_001}\"/>");
    assert!(matches!(
        Initiation::from_xml(no_message.as_bytes()),
        Err(XmlError::Missing(_))
    ));
    let trailing = format!("{xml}<Document/>");
    assert!(matches!(
        Initiation::from_xml(trailing.as_bytes()),
        Err(XmlError::Malformed(_))
    ));
}

#[test]
fn refuses_deep_nesting() {
    let mut xml = credit_xml();
    let deep = format!("{}{}", "<X>".repeat(100), "</X>".repeat(100));
    xml = replace_once(&xml, "<GrpHdr>", &format!("<GrpHdr>{deep}"));
    assert!(matches!(
        Initiation::from_xml(xml.as_bytes()),
        Err(XmlError::Malformed(m)) if m.contains("deeper")
    ));
}

#[test]
fn ignores_optional_elements_it_does_not_need() {
    // Real bank messages carry more than we write: those elements are skipped.
    let camt054 = &samples()[3];
    let xml = replace_once(
        camt054,
        "<CdtDbtInd>CRDT</CdtDbtInd>",
        "<CdtDbtInd>CRDT</CdtDbtInd><RvslInd>false</RvslInd>",
    );
    let xml = replace_once(
        &xml,
        "<EndToEndId>op-1</EndToEndId>",
        "<AcctSvcrRef>BANK-REF</AcctSvcrRef><EndToEndId>op-1</EndToEndId><TxId>T1</TxId>",
    );
    assert_eq!(Notification::from_xml(xml.as_bytes()), Ok(notification()));
    let with_comments = credit_xml().replace("<GrpHdr>", "<!-- header --><GrpHdr><?pi x?>");
    assert_eq!(
        Initiation::from_xml(with_comments.as_bytes()),
        Ok(initiation(Direction::Credit))
    );
}

// ---------------------------------------------------------------------------------------------
// Fuzz: no input makes a reader panic.
// ---------------------------------------------------------------------------------------------

/// 2,000 cases unless `PROPTEST_CASES` is set (proptest's own default reads it).
fn fuzz_config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 2_000;
    }
    config
}

/// Pieces of ISO 20022 XML, so that random input gets past the first checks more often.
const TOKENS: &[&str] = &[
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>",
    "<Document xmlns=\"urn:iso:std:iso:20022:tech:xsd:pain.001.001.09\">",
    "<Document xmlns=\"urn:iso:std:iso:20022:tech:xsd:pain.008.001.08\">",
    "<Document xmlns=\"urn:iso:std:iso:20022:tech:xsd:pain.002.001.12\">",
    "<Document xmlns=\"urn:iso:std:iso:20022:tech:xsd:camt.054.001.08\">",
    "<Document xmlns=\"urn:iso:std:iso:20022:tech:xsd:camt.053.001.08\">",
    "</Document>",
    "<CstmrCdtTrfInitn>",
    "</CstmrCdtTrfInitn>",
    "<CstmrDrctDbtInitn>",
    "<CstmrPmtStsRpt>",
    "<BkToCstmrDbtCdtNtfctn>",
    "<BkToCstmrStmt>",
    "<GrpHdr>",
    "</GrpHdr>",
    "<MsgId>",
    "</MsgId>",
    "<CreDtTm>2024-05-01T10:00:00Z</CreDtTm>",
    "<NbOfTxs>1</NbOfTxs>",
    "<PmtInf>",
    "</PmtInf>",
    "<Ntry>",
    "</Ntry>",
    "<Amt Ccy=\"EUR\">",
    "</Amt>",
    "<InstdAmt Ccy=\"EUR\">1.00</InstdAmt>",
    "<TxSts>RJCT</TxSts>",
    "<Cd>",
    "</Cd>",
    "<Id>",
    "</Id>",
    "<Othr>",
    "</Othr>",
    "<X/>",
    "12.34",
    "&amp;",
    "&#0;",
    "&#x110000;",
    "&lol;",
    "<![CDATA[x]]>",
    "<!-- c -->",
    "<!DOCTYPE",
    " ",
    "\"",
    "=",
];

fn mutated(sample: &str, edits: &[(usize, u8)], cut: usize) -> Vec<u8> {
    let mut bytes = sample.as_bytes().to_vec();
    for &(at, byte) in edits {
        let len = bytes.len();
        if len > 0 {
            bytes[at % len] = byte;
        }
    }
    bytes.truncate(bytes.len().saturating_sub(cut % 64));
    bytes
}

proptest! {
    #![proptest_config(fuzz_config())]

    #[test]
    fn fuzz_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = read_all(&bytes);
    }

    #[test]
    fn fuzz_token_soup_never_panics(picks in proptest::collection::vec(0..TOKENS.len(), 0..64)) {
        let text: String = picks.iter().map(|&i| TOKENS[i]).collect();
        let _ = read_all(text.as_bytes());
    }

    #[test]
    fn fuzz_mutated_messages_never_panic(
        which in 0usize..5,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        cut in any::<usize>(),
    ) {
        let bytes = mutated(&samples()[which], &edits, cut);
        let _ = read_all(&bytes);
    }

    #[test]
    fn fuzz_truncated_messages_never_panic(which in 0usize..5, keep in any::<usize>()) {
        let sample = samples()[which].as_bytes();
        let _ = read_all(&sample[..keep % (sample.len() + 1)]);
    }

    #[test]
    fn fuzz_spliced_text_never_panics(
        which in 0usize..5,
        at in any::<usize>(),
        insert in "[<>/&;=\"a-zA-Z0-9 !?\\-]{0,24}",
    ) {
        let sample = &samples()[which];
        let mut at = at % (sample.len() + 1);
        while !sample.is_char_boundary(at) {
            at -= 1;
        }
        let text = format!("{}{}{}", &sample[..at], insert, &sample[at..]);
        let _ = read_all(text.as_bytes());
    }

    #[test]
    fn round_trip_any_statement(
        opening in -999_999_999_999_999_999i64..=999_999_999_999_999_999,
        closing in -999_999_999_999_999_999i64..=999_999_999_999_999_999,
        amounts in proptest::collection::vec((1i64..=999_999_999_999_999_999, any::<bool>()), 0..6),
    ) {
        let mut s = statement();
        s.opening = Amount::from_cents(opening);
        s.closing = Amount::from_cents(closing);
        s.entries = amounts
            .iter()
            .enumerate()
            .map(|(i, &(cents, credit))| BookedEntry {
                end_to_end_id: format!("op-{i}"),
                amount: Amount::from_cents(cents),
                side: if credit { Side::Credit } else { Side::Debit },
                booked: date!(2024 - 05 - 03),
            })
            .collect();
        let xml = s.to_xml().expect("write");
        prop_assert_eq!(Statement::from_xml(xml.as_bytes()), Ok(s));
    }
}

// ---------------------------------------------------------------------------------------------
// XSD validation against the official schemas (scripts/iso20022-xsd.sh fetches them).
// ---------------------------------------------------------------------------------------------

/// Writes every kind of message we generate and validates it with the project's validator.
#[test]
fn xsd_valid_messages() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf();
    let out = std::process::Command::new(root.join("scripts/iso20022-xsd.sh"))
        .output()
        .expect("run scripts/iso20022-xsd.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let xsd_dir = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let validate = xsd_dir.parent().expect("cache dir").join("validate.py");
    let dir = tempfile::tempdir().expect("tempdir");

    let mut chf = initiation(Direction::Credit);
    chf.currency = "CHF".into();
    let mut chf_dd = initiation(Direction::Debit);
    chf_dd.currency = "CHF".into();
    chf_dd.transfers.truncate(1);
    let mut empty_statement = statement();
    empty_statement.entries.clear();
    let mut empty_notification = notification();
    empty_notification.entries.clear();
    let mut credit_report = status_report();
    credit_report.original_direction = Direction::Credit;
    let cases: Vec<(&str, &str, String)> = vec![
        (
            "pain.001.001.09",
            "pain001-eur",
            initiation(Direction::Credit).to_xml().expect("w"),
        ),
        ("pain.001.001.09", "pain001-chf", chf.to_xml().expect("w")),
        (
            "pain.008.001.08",
            "pain008-eur",
            initiation(Direction::Debit).to_xml().expect("w"),
        ),
        (
            "pain.008.001.08",
            "pain008-chf",
            chf_dd.to_xml().expect("w"),
        ),
        (
            "pain.002.001.12",
            "pain002-debit",
            status_report().to_xml().expect("w"),
        ),
        (
            "pain.002.001.12",
            "pain002-credit",
            credit_report.to_xml().expect("w"),
        ),
        (
            "camt.054.001.08",
            "camt054",
            notification().to_xml().expect("w"),
        ),
        (
            "camt.054.001.08",
            "camt054-empty",
            empty_notification.to_xml().expect("w"),
        ),
        (
            "camt.053.001.08",
            "camt053",
            statement().to_xml().expect("w"),
        ),
        (
            "camt.053.001.08",
            "camt053-empty",
            empty_statement.to_xml().expect("w"),
        ),
    ];
    for (schema, name, xml) in cases {
        let file = dir.path().join(format!("{name}.xml"));
        std::fs::write(&file, &xml).expect("write sample");
        let out = std::process::Command::new(&validate)
            .arg(xsd_dir.join(format!("{schema}.xsd")))
            .arg(&file)
            .output()
            .expect("run validate.py");
        assert!(
            out.status.success(),
            "{name} is not valid against {schema}:\n{}{}\n{xml}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprint!("{}", String::from_utf8_lossy(&out.stdout));
    }
}
