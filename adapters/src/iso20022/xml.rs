//! ISO 20022 XML for the messages of [`super`]: written through quick-xml's serde serializer,
//! read strictly.
//!
//! Writing: the domain value is checked first (ids, amounts, dates, currency), so that nothing
//! the schemas would refuse ever leaves the node; then private serde structs that mirror the XSD
//! elements, in the XSD's order, are serialized under one fixed XML declaration.
//!
//! Reading (`from_xml`), in this order, so that hostile input is refused as early and as cheaply
//! as possible:
//! 1. size: over [`MAX_MESSAGE_BYTES`] is refused before anything else;
//! 2. any `<!DOCTYPE` or `<!ENTITY` (any case) is refused: no entity can be declared, so neither
//!    external entities (XXE) nor entity expansion (billion laughs) can happen;
//! 3. UTF-8 only (the declaration may not name another encoding);
//! 4. one streaming pass with quick-xml's namespace-aware reader: well-formedness, an unprefixed
//!    root `Document` in exactly the expected namespace, exactly one child of the expected message,
//!    every element in that namespace, nesting at most [`MAX_DEPTH`] deep;
//! 5. quick-xml's serde deserializer into the same structs (a repeated single-valued element is
//!    an error there: [`XmlError::Duplicate`]);
//! 6. the values: ids `Max35Text`, amounts positive with at most two decimals, one currency per
//!    message, `NbOfTxs`/`CtrlSum` against the transactions, known status, reason and entry codes.
//!
//! Elements the node does not need (addresses, remittance information, charges...) are ignored
//! when read, so that real bank messages with their optional extras are accepted.

use std::collections::HashSet;

use onecard_engine::money::{Amount, AmountError};
use quick_xml::de::DeError;
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::UtcOffset;

use super::{
    BookedEntry, Date, DateTime, Direction, Initiation, Notification, Reason, Side, Statement,
    StatusReport, Transfer, TxReport, TxStatus, CAMT_053, CAMT_054, PAIN_001, PAIN_002, PAIN_008,
};

/// The largest message `from_xml` reads. Callers cap their reads (the HTTP body) at this size.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The deepest element nesting accepted. ISO 20022 messages stay under 20; the limit keeps
/// pathological nesting from costing anything.
pub const MAX_DEPTH: usize = 64;

/// The one line of XML written as a string: everything else goes through the serializer.
const XML_DECLARATION: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";

/// ISO amounts and `DecimalNumber` have `totalDigits` 18; with our two decimals that is at most
/// 10^18 - 1 cents.
const MAX_CENTS: i128 = 999_999_999_999_999_999;

/// `ElctrncSeqNb` is a `Number`: `totalDigits` 18, no fraction.
const MAX_SEQUENCE: u64 = 999_999_999_999_999_999;

/// The namespaces an [`Initiation`] may come in, for [`XmlError::WrongNamespace`].
const INITIATION_NAMESPACES: &str =
    "urn:iso:std:iso:20022:tech:xsd:pain.001.001.09 or urn:iso:std:iso:20022:tech:xsd:pain.008.001.08";

const PAIN_001_NAME: &str = "pain.001.001.09";
const PAIN_008_NAME: &str = "pain.008.001.08";

/// Error values quote the input, clipped to this many characters so that a 16 MiB field does
/// not become a 16 MiB error message.
const QUOTE_CHARS: usize = 80;

const DATE_FORMAT: &[BorrowedFormatItem<'static>] = format_description!("[year]-[month]-[day]");

/// Why a message cannot be written or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    #[error("the message is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("the message is empty")]
    Empty,
    #[error("the message is not UTF-8: {0}")]
    Encoding(String),
    #[error("DOCTYPE and entity declarations are refused")]
    Doctype,
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("the root element is <{found}>, expected an unprefixed <Document>")]
    Root { found: String },
    #[error("namespace {found:?}, expected {expected}")]
    WrongNamespace {
        expected: &'static str,
        found: String,
    },
    #[error("message <{found}>, expected <{expected}>")]
    WrongMessage {
        expected: &'static str,
        found: String,
    },
    #[error("missing {0}")]
    Missing(String),
    #[error("{0} appears more than once")]
    Duplicate(String),
    #[error("bad amount {value:?} in {field}: {reason}")]
    BadAmount {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("bad date: {0}")]
    BadDate(String),
    #[error("bad {field} {value:?}: expected 1 to {max} characters, no control characters, no leading or trailing space")]
    BadId {
        field: &'static str,
        value: String,
        max: usize,
    },
    #[error("unknown code {code:?} in {field}")]
    UnknownCode { field: &'static str, code: String },
    #[error("bad currency code {0:?}: expected three capital letters")]
    BadCurrency(String),
    #[error("currency {found}, expected {expected} as in the rest of the message")]
    Currency { expected: String, found: String },
    #[error("bad number {value:?} in {field}")]
    BadNumber { field: &'static str, value: String },
    #[error("{field} says {declared}, the message has {found}")]
    Count {
        field: &'static str,
        declared: String,
        found: String,
    },
    #[error("cannot write the message: {0}")]
    Write(String),
}

// ---------------------------------------------------------------------------------------------
// The XSD elements, as serde structs. Field order is the XSD's sequence order; optional elements
// are `Option`s skipped when absent, repeated ones `Vec`s that default to empty.
// ---------------------------------------------------------------------------------------------

/// `ActiveOrHistoricCurrencyAndAmount`: `<InstdAmt Ccy="EUR">12.34</InstdAmt>`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct CcyAmount {
    #[serde(rename = "@Ccy")]
    ccy: String,
    /// Defaulted so that an empty element is a bad amount rather than a missing field.
    #[serde(rename = "$text", default)]
    value: String,
}

/// Every `...Choice` of a code or a proprietary value (`Cd` | `Prtry`).
#[derive(Debug, Default, Serialize, Deserialize)]
struct CodeOrPrtry {
    #[serde(rename = "Cd", default, skip_serializing_if = "Option::is_none")]
    cd: Option<String>,
    #[serde(rename = "Prtry", default, skip_serializing_if = "Option::is_none")]
    prtry: Option<String>,
}

/// `GenericOrganisationIdentification1` / `GenericPersonIdentification1`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct GenericId {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "SchmeNm", default, skip_serializing_if = "Option::is_none")]
    schme_nm: Option<CodeOrPrtry>,
}

/// `OrganisationIdentification29` / `PersonIdentification13`: only their `Othr` list is used.
#[derive(Debug, Default, Serialize, Deserialize)]
struct OtherIds {
    #[serde(rename = "Othr", default, skip_serializing_if = "Vec::is_empty")]
    othr: Vec<GenericId>,
}

/// `Party38Choice`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct PartyId {
    #[serde(rename = "OrgId", default, skip_serializing_if = "Option::is_none")]
    org_id: Option<OtherIds>,
    #[serde(rename = "PrvtId", default, skip_serializing_if = "Option::is_none")]
    prvt_id: Option<OtherIds>,
}

/// `PartyIdentification135`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Party {
    #[serde(rename = "Nm", default, skip_serializing_if = "Option::is_none")]
    nm: Option<String>,
    #[serde(rename = "Id", default, skip_serializing_if = "Option::is_none")]
    id: Option<PartyId>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct IdOnly {
    #[serde(rename = "Id")]
    id: String,
}

/// `AccountIdentification4Choice`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct AccountId {
    #[serde(rename = "IBAN", default, skip_serializing_if = "Option::is_none")]
    iban: Option<String>,
    #[serde(rename = "Othr", default, skip_serializing_if = "Option::is_none")]
    othr: Option<IdOnly>,
}

/// `CashAccount38` / `CashAccount39`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Account {
    #[serde(rename = "Id")]
    id: AccountId,
    #[serde(rename = "Ccy", default, skip_serializing_if = "Option::is_none")]
    ccy: Option<String>,
}

/// `FinancialInstitutionIdentification18`: we write `Othr/Id` `NOTPROVIDED` (no BIC needed).
#[derive(Debug, Default, Serialize, Deserialize)]
struct FinInstnId {
    #[serde(rename = "BICFI", default, skip_serializing_if = "Option::is_none")]
    bicfi: Option<String>,
    #[serde(rename = "Othr", default, skip_serializing_if = "Option::is_none")]
    othr: Option<IdOnly>,
}

/// `BranchAndFinancialInstitutionIdentification6`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Agent {
    #[serde(rename = "FinInstnId")]
    fin_instn_id: FinInstnId,
}

/// `DateAndDateTime2Choice`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct DateChoice {
    #[serde(rename = "Dt", default, skip_serializing_if = "Option::is_none")]
    dt: Option<String>,
    #[serde(rename = "DtTm", default, skip_serializing_if = "Option::is_none")]
    dt_tm: Option<String>,
}

/// `PaymentIdentification6`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct PmtId {
    #[serde(rename = "InstrId", default, skip_serializing_if = "Option::is_none")]
    instr_id: Option<String>,
    #[serde(rename = "EndToEndId")]
    end_to_end_id: String,
}

/// `PaymentTypeInformation26` (pain.001, no `SeqTp`) and `...29` (pain.008).
#[derive(Debug, Default, Serialize, Deserialize)]
struct PmtTpInf {
    #[serde(rename = "SvcLvl", default, skip_serializing_if = "Vec::is_empty")]
    svc_lvl: Vec<CodeOrPrtry>,
    #[serde(rename = "LclInstrm", default, skip_serializing_if = "Option::is_none")]
    lcl_instrm: Option<CodeOrPrtry>,
    #[serde(rename = "SeqTp", default, skip_serializing_if = "Option::is_none")]
    seq_tp: Option<String>,
}

/// `GroupHeader85` (pain.001) and `GroupHeader83` (pain.008).
#[derive(Debug, Default, Serialize, Deserialize)]
struct InitGrpHdr {
    #[serde(rename = "MsgId")]
    msg_id: String,
    #[serde(rename = "CreDtTm")]
    cre_dt_tm: String,
    #[serde(rename = "NbOfTxs")]
    nb_of_txs: String,
    #[serde(rename = "CtrlSum", default, skip_serializing_if = "Option::is_none")]
    ctrl_sum: Option<String>,
    #[serde(rename = "InitgPty")]
    initg_pty: Party,
}

#[derive(Debug, Serialize, Deserialize)]
struct Pain001Doc {
    #[serde(rename = "@xmlns", default)]
    xmlns: String,
    #[serde(rename = "CstmrCdtTrfInitn")]
    body: Pain001,
}

/// `CustomerCreditTransferInitiationV09`.
#[derive(Debug, Serialize, Deserialize)]
struct Pain001 {
    #[serde(rename = "GrpHdr")]
    grp_hdr: InitGrpHdr,
    #[serde(rename = "PmtInf", default)]
    pmt_inf: Vec<Pain001PmtInf>,
}

/// `PaymentInstruction30`.
#[derive(Debug, Serialize, Deserialize)]
struct Pain001PmtInf {
    #[serde(rename = "PmtInfId")]
    pmt_inf_id: String,
    #[serde(rename = "PmtMtd")]
    pmt_mtd: String,
    #[serde(rename = "BtchBookg", default, skip_serializing_if = "Option::is_none")]
    btch_bookg: Option<String>,
    #[serde(rename = "NbOfTxs", default, skip_serializing_if = "Option::is_none")]
    nb_of_txs: Option<String>,
    #[serde(rename = "CtrlSum", default, skip_serializing_if = "Option::is_none")]
    ctrl_sum: Option<String>,
    #[serde(rename = "PmtTpInf", default, skip_serializing_if = "Option::is_none")]
    pmt_tp_inf: Option<PmtTpInf>,
    #[serde(rename = "ReqdExctnDt")]
    reqd_exctn_dt: DateChoice,
    #[serde(rename = "Dbtr")]
    dbtr: Party,
    #[serde(rename = "DbtrAcct")]
    dbtr_acct: Account,
    #[serde(rename = "DbtrAgt", default, skip_serializing_if = "Option::is_none")]
    dbtr_agt: Option<Agent>,
    #[serde(rename = "ChrgBr", default, skip_serializing_if = "Option::is_none")]
    chrg_br: Option<String>,
    #[serde(rename = "CdtTrfTxInf", default)]
    cdt_trf_tx_inf: Vec<CdtTrfTxInf>,
}

/// `CreditTransferTransaction34`.
#[derive(Debug, Serialize, Deserialize)]
struct CdtTrfTxInf {
    #[serde(rename = "PmtId")]
    pmt_id: PmtId,
    #[serde(rename = "Amt")]
    amt: AmountChoice,
    #[serde(rename = "CdtrAcct", default, skip_serializing_if = "Option::is_none")]
    cdtr_acct: Option<Account>,
}

/// `AmountType4Choice`: only `InstdAmt` is understood (`EqvtAmt` would need an exchange).
#[derive(Debug, Default, Serialize, Deserialize)]
struct AmountChoice {
    #[serde(rename = "InstdAmt", default, skip_serializing_if = "Option::is_none")]
    instd_amt: Option<CcyAmount>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Pain008Doc {
    #[serde(rename = "@xmlns", default)]
    xmlns: String,
    #[serde(rename = "CstmrDrctDbtInitn")]
    body: Pain008,
}

/// `CustomerDirectDebitInitiationV08`.
#[derive(Debug, Serialize, Deserialize)]
struct Pain008 {
    #[serde(rename = "GrpHdr")]
    grp_hdr: InitGrpHdr,
    #[serde(rename = "PmtInf", default)]
    pmt_inf: Vec<Pain008PmtInf>,
}

/// `PaymentInstruction29`.
#[derive(Debug, Serialize, Deserialize)]
struct Pain008PmtInf {
    #[serde(rename = "PmtInfId")]
    pmt_inf_id: String,
    #[serde(rename = "PmtMtd")]
    pmt_mtd: String,
    #[serde(rename = "BtchBookg", default, skip_serializing_if = "Option::is_none")]
    btch_bookg: Option<String>,
    #[serde(rename = "NbOfTxs", default, skip_serializing_if = "Option::is_none")]
    nb_of_txs: Option<String>,
    #[serde(rename = "CtrlSum", default, skip_serializing_if = "Option::is_none")]
    ctrl_sum: Option<String>,
    #[serde(rename = "PmtTpInf", default, skip_serializing_if = "Option::is_none")]
    pmt_tp_inf: Option<PmtTpInf>,
    #[serde(rename = "ReqdColltnDt")]
    reqd_colltn_dt: String,
    #[serde(rename = "Cdtr")]
    cdtr: Party,
    #[serde(rename = "CdtrAcct")]
    cdtr_acct: Account,
    #[serde(rename = "CdtrAgt", default, skip_serializing_if = "Option::is_none")]
    cdtr_agt: Option<Agent>,
    #[serde(rename = "ChrgBr", default, skip_serializing_if = "Option::is_none")]
    chrg_br: Option<String>,
    #[serde(
        rename = "CdtrSchmeId",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    cdtr_schme_id: Option<Party>,
    #[serde(rename = "DrctDbtTxInf", default)]
    drct_dbt_tx_inf: Vec<DrctDbtTxInf>,
}

/// `DirectDebitTransactionInformation23`.
#[derive(Debug, Serialize, Deserialize)]
struct DrctDbtTxInf {
    #[serde(rename = "PmtId")]
    pmt_id: PmtId,
    #[serde(rename = "InstdAmt")]
    instd_amt: CcyAmount,
    #[serde(rename = "DrctDbtTx", default, skip_serializing_if = "Option::is_none")]
    drct_dbt_tx: Option<DrctDbtTx>,
    #[serde(rename = "DbtrAgt", default, skip_serializing_if = "Option::is_none")]
    dbtr_agt: Option<Agent>,
    #[serde(rename = "Dbtr", default, skip_serializing_if = "Option::is_none")]
    dbtr: Option<Party>,
    #[serde(rename = "DbtrAcct")]
    dbtr_acct: Account,
}

/// `DirectDebitTransaction10`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct DrctDbtTx {
    #[serde(
        rename = "MndtRltdInf",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    mndt_rltd_inf: Option<Mandate>,
}

/// `MandateRelatedInformation14`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Mandate {
    #[serde(rename = "MndtId", default, skip_serializing_if = "Option::is_none")]
    mndt_id: Option<String>,
    #[serde(rename = "DtOfSgntr", default, skip_serializing_if = "Option::is_none")]
    dt_of_sgntr: Option<String>,
}

/// `GroupHeader86` (pain.002) and `GroupHeader81` (camt): only the id and the time are used.
#[derive(Debug, Default, Serialize, Deserialize)]
struct GrpHdr {
    #[serde(rename = "MsgId")]
    msg_id: String,
    #[serde(rename = "CreDtTm")]
    cre_dt_tm: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Pain002Doc {
    #[serde(rename = "@xmlns", default)]
    xmlns: String,
    #[serde(rename = "CstmrPmtStsRpt")]
    body: Pain002,
}

/// `CustomerPaymentStatusReportV12`.
#[derive(Debug, Serialize, Deserialize)]
struct Pain002 {
    #[serde(rename = "GrpHdr")]
    grp_hdr: GrpHdr,
    #[serde(rename = "OrgnlGrpInfAndSts")]
    orgnl_grp_inf_and_sts: OrgnlGrpInfAndSts,
    #[serde(
        rename = "OrgnlPmtInfAndSts",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    orgnl_pmt_inf_and_sts: Vec<OrgnlPmtInfAndSts>,
}

/// `OriginalGroupHeader17`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct OrgnlGrpInfAndSts {
    #[serde(rename = "OrgnlMsgId")]
    orgnl_msg_id: String,
    #[serde(rename = "OrgnlMsgNmId")]
    orgnl_msg_nm_id: String,
}

/// `OriginalPaymentInstruction40`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct OrgnlPmtInfAndSts {
    #[serde(rename = "OrgnlPmtInfId")]
    orgnl_pmt_inf_id: String,
    #[serde(rename = "TxInfAndSts", default, skip_serializing_if = "Vec::is_empty")]
    tx_inf_and_sts: Vec<TxInfAndSts>,
}

/// `PaymentTransaction129`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct TxInfAndSts {
    #[serde(
        rename = "OrgnlEndToEndId",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    orgnl_end_to_end_id: Option<String>,
    #[serde(rename = "TxSts", default, skip_serializing_if = "Option::is_none")]
    tx_sts: Option<String>,
    #[serde(rename = "StsRsnInf", default, skip_serializing_if = "Vec::is_empty")]
    sts_rsn_inf: Vec<StsRsnInf>,
}

/// `StatusReasonInformation12`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct StsRsnInf {
    #[serde(rename = "Rsn", default, skip_serializing_if = "Option::is_none")]
    rsn: Option<CodeOrPrtry>,
    #[serde(rename = "AddtlInf", default, skip_serializing_if = "Vec::is_empty")]
    addtl_inf: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Camt054Doc {
    #[serde(rename = "@xmlns", default)]
    xmlns: String,
    #[serde(rename = "BkToCstmrDbtCdtNtfctn")]
    body: Camt054,
}

/// `BankToCustomerDebitCreditNotificationV08`.
#[derive(Debug, Serialize, Deserialize)]
struct Camt054 {
    #[serde(rename = "GrpHdr")]
    grp_hdr: GrpHdr,
    #[serde(rename = "Ntfctn", default)]
    ntfctn: Vec<Ntfctn>,
}

/// `AccountNotification17`.
#[derive(Debug, Serialize, Deserialize)]
struct Ntfctn {
    #[serde(rename = "Id")]
    id: String,
    #[serde(
        rename = "ElctrncSeqNb",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    elctrnc_seq_nb: Option<String>,
    #[serde(rename = "CreDtTm", default, skip_serializing_if = "Option::is_none")]
    cre_dt_tm: Option<String>,
    #[serde(rename = "Acct")]
    acct: Account,
    #[serde(rename = "TxsSummry", default, skip_serializing_if = "Option::is_none")]
    txs_summry: Option<TxsSummry>,
    #[serde(rename = "Ntry", default, skip_serializing_if = "Vec::is_empty")]
    ntry: Vec<Ntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Camt053Doc {
    #[serde(rename = "@xmlns", default)]
    xmlns: String,
    #[serde(rename = "BkToCstmrStmt")]
    body: Camt053,
}

/// `BankToCustomerStatementV08`.
#[derive(Debug, Serialize, Deserialize)]
struct Camt053 {
    #[serde(rename = "GrpHdr")]
    grp_hdr: GrpHdr,
    #[serde(rename = "Stmt", default)]
    stmt: Vec<Stmt>,
}

/// `AccountStatement9`.
#[derive(Debug, Serialize, Deserialize)]
struct Stmt {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "CreDtTm", default, skip_serializing_if = "Option::is_none")]
    cre_dt_tm: Option<String>,
    #[serde(rename = "Acct")]
    acct: Account,
    #[serde(rename = "Bal", default)]
    bal: Vec<Bal>,
    #[serde(rename = "TxsSummry", default, skip_serializing_if = "Option::is_none")]
    txs_summry: Option<TxsSummry>,
    #[serde(rename = "Ntry", default, skip_serializing_if = "Vec::is_empty")]
    ntry: Vec<Ntry>,
}

/// `CashBalance8`.
#[derive(Debug, Serialize, Deserialize)]
struct Bal {
    #[serde(rename = "Tp")]
    tp: BalTp,
    #[serde(rename = "Amt")]
    amt: CcyAmount,
    #[serde(rename = "CdtDbtInd")]
    cdt_dbt_ind: String,
    #[serde(rename = "Dt")]
    dt: DateChoice,
}

/// `BalanceType13`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct BalTp {
    #[serde(rename = "CdOrPrtry")]
    cd_or_prtry: CodeOrPrtry,
}

/// `TotalTransactions6`: only the number of entries is checked.
#[derive(Debug, Default, Serialize, Deserialize)]
struct TxsSummry {
    #[serde(rename = "TtlNtries", default, skip_serializing_if = "Option::is_none")]
    ttl_ntries: Option<TtlNtries>,
}

/// `NumberAndSumOfTransactions4`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct TtlNtries {
    #[serde(
        rename = "NbOfNtries",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    nb_of_ntries: Option<String>,
}

/// `ReportEntry10`.
#[derive(Debug, Serialize, Deserialize)]
struct Ntry {
    #[serde(rename = "Amt")]
    amt: CcyAmount,
    #[serde(rename = "CdtDbtInd")]
    cdt_dbt_ind: String,
    #[serde(rename = "Sts")]
    sts: CodeOrPrtry,
    #[serde(rename = "BookgDt", default, skip_serializing_if = "Option::is_none")]
    bookg_dt: Option<DateChoice>,
    #[serde(rename = "BkTxCd")]
    bk_tx_cd: BkTxCd,
    #[serde(rename = "NtryDtls", default, skip_serializing_if = "Vec::is_empty")]
    ntry_dtls: Vec<NtryDtls>,
}

/// `BankTransactionCodeStructure4`: mandatory in .08; either part is accepted when read.
#[derive(Debug, Default, Serialize, Deserialize)]
struct BkTxCd {
    #[serde(rename = "Domn", default, skip_serializing_if = "Option::is_none")]
    domn: Option<Domn>,
    #[serde(rename = "Prtry", default, skip_serializing_if = "Option::is_none")]
    prtry: Option<IdLikeCode>,
}

/// `BankTransactionCodeStructure5`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Domn {
    #[serde(rename = "Cd")]
    cd: String,
    #[serde(rename = "Fmly")]
    fmly: Fmly,
}

/// `BankTransactionCodeStructure6`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Fmly {
    #[serde(rename = "Cd")]
    cd: String,
    #[serde(rename = "SubFmlyCd")]
    sub_fmly_cd: String,
}

/// `ProprietaryBankTransactionCodeStructure1`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct IdLikeCode {
    #[serde(rename = "Cd")]
    cd: String,
}

/// `EntryDetails9`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct NtryDtls {
    #[serde(rename = "TxDtls", default, skip_serializing_if = "Vec::is_empty")]
    tx_dtls: Vec<TxDtls>,
}

/// `EntryTransaction10`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct TxDtls {
    #[serde(rename = "Refs", default, skip_serializing_if = "Option::is_none")]
    refs: Option<Refs>,
    #[serde(rename = "Amt", default, skip_serializing_if = "Option::is_none")]
    amt: Option<CcyAmount>,
    #[serde(rename = "CdtDbtInd", default, skip_serializing_if = "Option::is_none")]
    cdt_dbt_ind: Option<String>,
}

/// `TransactionReferences6`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Refs {
    #[serde(
        rename = "EndToEndId",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    end_to_end_id: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Initiation: pain.001.001.09 (Credit) and pain.008.001.08 (Debit).
// ---------------------------------------------------------------------------------------------

impl Initiation {
    /// pain.001.001.09 for [`Direction::Credit`], pain.008.001.08 for [`Direction::Debit`]: one
    /// payment information block, one transaction per transfer, booked one by one
    /// (`BtchBookg` false) so that each shows as its own entry in camt.054 and camt.053.
    pub fn to_xml(&self) -> Result<String, XmlError> {
        check_id("GrpHdr/MsgId", &self.msg_id)?;
        check_text("InitgPty/Nm", &self.initiator_name, 140)?;
        check_id("CdtrSchmeId", &self.creditor_id)?;
        check_currency(&self.currency)?;
        let own_account = account_to_xml("own account", &self.own_account)?;
        let created = datetime_to_xml("GrpHdr/CreDtTm", self.created)?;
        let requested = date_to_xml("requested date", self.requested)?;
        if self.transfers.is_empty() {
            return Err(XmlError::Missing("transfers: at least one".into()));
        }
        let mut seen = HashSet::new();
        let mut sum: i128 = 0;
        for t in &self.transfers {
            check_id("EndToEndId", &t.end_to_end_id)?;
            if !seen.insert(t.end_to_end_id.as_str()) {
                return Err(XmlError::Duplicate(format!(
                    "EndToEndId {}",
                    quote(&t.end_to_end_id)
                )));
            }
            check_account("transfer account", &t.account)?;
            positive_to_xml("InstdAmt", t.amount)?;
            sum = sum.saturating_add(t.amount.cents());
        }
        let ctrl_sum = sum_to_xml("CtrlSum", sum)?;
        let nb_of_txs = self.transfers.len().to_string();
        let grp_hdr = |id: Option<PartyId>| InitGrpHdr {
            msg_id: self.msg_id.clone(),
            cre_dt_tm: created.clone(),
            nb_of_txs: nb_of_txs.clone(),
            ctrl_sum: Some(ctrl_sum.clone()),
            initg_pty: Party {
                nm: Some(self.initiator_name.clone()),
                id,
            },
        };
        let sepa = self.currency == "EUR";
        let svc_lvl = || {
            if sepa {
                vec![code("SEPA")]
            } else {
                Vec::new()
            }
        };
        match self.direction {
            Direction::Credit => {
                let mut txs = Vec::with_capacity(self.transfers.len());
                for t in &self.transfers {
                    txs.push(CdtTrfTxInf {
                        pmt_id: PmtId {
                            instr_id: None,
                            end_to_end_id: t.end_to_end_id.clone(),
                        },
                        amt: AmountChoice {
                            instd_amt: Some(self.amount_xml(t.amount)),
                        },
                        cdtr_acct: Some(account_to_xml("transfer account", &t.account)?),
                    });
                }
                let doc = Pain001Doc {
                    xmlns: PAIN_001.into(),
                    body: Pain001 {
                        // The creditor id travels in the initiating party's id (there is no
                        // creditor scheme id in a credit transfer), so that it reads back.
                        grp_hdr: grp_hdr(Some(PartyId {
                            org_id: Some(OtherIds {
                                othr: vec![GenericId {
                                    id: self.creditor_id.clone(),
                                    schme_nm: Some(prtry("SEPA")),
                                }],
                            }),
                            prvt_id: None,
                        })),
                        pmt_inf: vec![Pain001PmtInf {
                            pmt_inf_id: self.msg_id.clone(),
                            pmt_mtd: "TRF".into(),
                            btch_bookg: Some("false".into()),
                            nb_of_txs: Some(nb_of_txs.clone()),
                            ctrl_sum: Some(ctrl_sum.clone()),
                            pmt_tp_inf: sepa.then(|| PmtTpInf {
                                svc_lvl: svc_lvl(),
                                lcl_instrm: None,
                                seq_tp: None,
                            }),
                            reqd_exctn_dt: DateChoice {
                                dt: Some(requested.clone()),
                                dt_tm: None,
                            },
                            dbtr: Party {
                                nm: Some(self.initiator_name.clone()),
                                id: None,
                            },
                            dbtr_acct: own_account,
                            dbtr_agt: Some(agent_not_provided()),
                            chrg_br: Some("SLEV".into()),
                            cdt_trf_tx_inf: txs,
                        }],
                    },
                };
                write_document(&doc)
            }
            Direction::Debit => {
                let mut txs = Vec::with_capacity(self.transfers.len());
                for t in &self.transfers {
                    txs.push(DrctDbtTxInf {
                        pmt_id: PmtId {
                            instr_id: None,
                            end_to_end_id: t.end_to_end_id.clone(),
                        },
                        instd_amt: self.amount_xml(t.amount),
                        // The mandate is identified by the debtor's account and dated on the
                        // collection date: both known to the bank, nothing secret.
                        drct_dbt_tx: Some(DrctDbtTx {
                            mndt_rltd_inf: Some(Mandate {
                                mndt_id: Some(t.account.clone()),
                                dt_of_sgntr: Some(requested.clone()),
                            }),
                        }),
                        dbtr_agt: Some(agent_not_provided()),
                        dbtr: Some(Party::default()),
                        dbtr_acct: account_to_xml("transfer account", &t.account)?,
                    });
                }
                let doc = Pain008Doc {
                    xmlns: PAIN_008.into(),
                    body: Pain008 {
                        grp_hdr: grp_hdr(None),
                        pmt_inf: vec![Pain008PmtInf {
                            pmt_inf_id: self.msg_id.clone(),
                            pmt_mtd: "DD".into(),
                            btch_bookg: Some("false".into()),
                            nb_of_txs: Some(nb_of_txs.clone()),
                            ctrl_sum: Some(ctrl_sum.clone()),
                            pmt_tp_inf: Some(PmtTpInf {
                                svc_lvl: svc_lvl(),
                                lcl_instrm: Some(code("CORE")),
                                seq_tp: Some("RCUR".into()),
                            }),
                            reqd_colltn_dt: requested.clone(),
                            cdtr: Party {
                                nm: Some(self.initiator_name.clone()),
                                id: None,
                            },
                            cdtr_acct: own_account,
                            cdtr_agt: Some(agent_not_provided()),
                            chrg_br: Some("SLEV".into()),
                            cdtr_schme_id: Some(Party {
                                nm: None,
                                id: Some(PartyId {
                                    org_id: None,
                                    prvt_id: Some(OtherIds {
                                        othr: vec![GenericId {
                                            id: self.creditor_id.clone(),
                                            schme_nm: Some(prtry("SEPA")),
                                        }],
                                    }),
                                }),
                            }),
                            drct_dbt_tx_inf: txs,
                        }],
                    },
                };
                write_document(&doc)
            }
        }
    }

    /// Reads a pain.001.001.09 (sets [`Direction::Credit`]) or a pain.008.001.08
    /// ([`Direction::Debit`]), chosen by the root's namespace and its message element. Exactly
    /// one payment information block is accepted: the domain value has one requested date and
    /// one own account.
    pub fn from_xml(bytes: &[u8]) -> Result<Initiation, XmlError> {
        let (text, which) = open(
            bytes,
            &[
                (PAIN_001, "CstmrCdtTrfInitn"),
                (PAIN_008, "CstmrDrctDbtInitn"),
            ],
            INITIATION_NAMESPACES,
        )?;
        if which == 0 {
            let doc: Pain001Doc = deserialize(text)?;
            Self::from_pain001(doc.body)
        } else {
            let doc: Pain008Doc = deserialize(text)?;
            Self::from_pain008(doc.body)
        }
    }

    fn amount_xml(&self, amount: Amount) -> CcyAmount {
        CcyAmount {
            ccy: self.currency.clone(),
            value: amount.to_string(),
        }
    }

    fn from_pain001(body: Pain001) -> Result<Initiation, XmlError> {
        let hdr = body.grp_hdr;
        let pmt = single(body.pmt_inf, "PmtInf")?;
        if pmt.pmt_mtd != "TRF" {
            return Err(unknown("PmtInf/PmtMtd", &pmt.pmt_mtd));
        }
        let creditor_id = hdr
            .initg_pty
            .id
            .as_ref()
            .and_then(first_other_id)
            .ok_or_else(|| XmlError::Missing("GrpHdr/InitgPty/Id/OrgId/Othr/Id".into()))?;
        let requested = date_choice("PmtInf/ReqdExctnDt", &pmt.reqd_exctn_dt)?;
        let own_account = account_from_xml("PmtInf/DbtrAcct", &pmt.dbtr_acct)?;
        if pmt.cdt_trf_tx_inf.is_empty() {
            return Err(XmlError::Missing("PmtInf/CdtTrfTxInf".into()));
        }
        let mut raw = Vec::with_capacity(pmt.cdt_trf_tx_inf.len());
        for tx in &pmt.cdt_trf_tx_inf {
            let amount = tx
                .amt
                .instd_amt
                .as_ref()
                .ok_or_else(|| XmlError::Missing("CdtTrfTxInf/Amt/InstdAmt".into()))?;
            let account = tx
                .cdtr_acct
                .as_ref()
                .ok_or_else(|| XmlError::Missing("CdtTrfTxInf/CdtrAcct".into()))?;
            raw.push((&tx.pmt_id, amount, account, "CdtTrfTxInf/CdtrAcct"));
        }
        let (transfers, currency) = transfers_from_xml(&raw)?;
        check_totals(
            &hdr,
            pmt.nb_of_txs.as_deref(),
            pmt.ctrl_sum.as_deref(),
            &transfers,
        )?;
        Ok(Initiation {
            direction: Direction::Credit,
            msg_id: id_from_xml("GrpHdr/MsgId", hdr.msg_id)?,
            created: datetime_from_xml("GrpHdr/CreDtTm", &hdr.cre_dt_tm)?,
            initiator_name: name_from_xml(hdr.initg_pty.nm)?,
            creditor_id: id_from_xml("GrpHdr/InitgPty/Id/OrgId/Othr/Id", creditor_id)?,
            own_account,
            currency,
            requested,
            transfers,
        })
    }

    fn from_pain008(body: Pain008) -> Result<Initiation, XmlError> {
        let hdr = body.grp_hdr;
        let pmt = single(body.pmt_inf, "PmtInf")?;
        if pmt.pmt_mtd != "DD" {
            return Err(unknown("PmtInf/PmtMtd", &pmt.pmt_mtd));
        }
        let creditor_id = pmt
            .cdtr_schme_id
            .as_ref()
            .and_then(|p| p.id.as_ref())
            .and_then(first_other_id)
            .ok_or_else(|| XmlError::Missing("PmtInf/CdtrSchmeId/Id/PrvtId/Othr/Id".into()))?;
        let requested = date_from_xml("PmtInf/ReqdColltnDt", &pmt.reqd_colltn_dt)?;
        let own_account = account_from_xml("PmtInf/CdtrAcct", &pmt.cdtr_acct)?;
        if pmt.drct_dbt_tx_inf.is_empty() {
            return Err(XmlError::Missing("PmtInf/DrctDbtTxInf".into()));
        }
        let raw: Vec<_> = pmt
            .drct_dbt_tx_inf
            .iter()
            .map(|tx| {
                (
                    &tx.pmt_id,
                    &tx.instd_amt,
                    &tx.dbtr_acct,
                    "DrctDbtTxInf/DbtrAcct",
                )
            })
            .collect();
        let (transfers, currency) = transfers_from_xml(&raw)?;
        check_totals(
            &hdr,
            pmt.nb_of_txs.as_deref(),
            pmt.ctrl_sum.as_deref(),
            &transfers,
        )?;
        Ok(Initiation {
            direction: Direction::Debit,
            msg_id: id_from_xml("GrpHdr/MsgId", hdr.msg_id)?,
            created: datetime_from_xml("GrpHdr/CreDtTm", &hdr.cre_dt_tm)?,
            initiator_name: name_from_xml(hdr.initg_pty.nm)?,
            creditor_id: id_from_xml("PmtInf/CdtrSchmeId/Id/PrvtId/Othr/Id", creditor_id)?,
            own_account,
            currency,
            requested,
            transfers,
        })
    }
}

/// The first `Othr/Id` of a party's organisation or private identification.
fn first_other_id(id: &PartyId) -> Option<String> {
    id.prvt_id
        .iter()
        .chain(id.org_id.iter())
        .flat_map(|o| o.othr.first())
        .map(|g| g.id.clone())
        .next()
}

fn name_from_xml(nm: Option<String>) -> Result<String, XmlError> {
    let nm = nm.ok_or_else(|| XmlError::Missing("GrpHdr/InitgPty/Nm".into()))?;
    check_text("GrpHdr/InitgPty/Nm", &nm, 140)?;
    Ok(nm)
}

/// The transfers of an initiation and their one currency; end-to-end ids are unique.
fn transfers_from_xml(
    raw: &[(&PmtId, &CcyAmount, &Account, &'static str)],
) -> Result<(Vec<Transfer>, String), XmlError> {
    let mut transfers = Vec::with_capacity(raw.len());
    let mut currency: Option<&str> = None;
    let mut seen = HashSet::new();
    for (pmt_id, amount, account, account_field) in raw {
        check_id("EndToEndId", &pmt_id.end_to_end_id)?;
        if !seen.insert(pmt_id.end_to_end_id.as_str()) {
            return Err(XmlError::Duplicate(format!(
                "EndToEndId {}",
                quote(&pmt_id.end_to_end_id)
            )));
        }
        same_currency(&mut currency, &amount.ccy)?;
        transfers.push(Transfer {
            end_to_end_id: pmt_id.end_to_end_id.clone(),
            account: account_from_xml(account_field, account)?,
            amount: positive_from_xml("InstdAmt", &amount.value)?,
        });
    }
    let currency = currency
        .ok_or_else(|| XmlError::Missing("InstdAmt/@Ccy".into()))?
        .to_string();
    Ok((transfers, currency))
}

/// `NbOfTxs` and `CtrlSum` of the group header and of the payment information block, where
/// present, against the transfers read.
fn check_totals(
    hdr: &InitGrpHdr,
    pmt_nb: Option<&str>,
    pmt_sum: Option<&str>,
    transfers: &[Transfer],
) -> Result<(), XmlError> {
    let count = transfers.len() as u64;
    let sum: i128 = transfers
        .iter()
        .fold(0i128, |s, t| s.saturating_add(t.amount.cents()));
    check_count("GrpHdr/NbOfTxs", &hdr.nb_of_txs, count)?;
    if let Some(n) = pmt_nb {
        check_count("PmtInf/NbOfTxs", n, count)?;
    }
    if let Some(s) = hdr.ctrl_sum.as_deref() {
        check_sum("GrpHdr/CtrlSum", s, sum)?;
    }
    if let Some(s) = pmt_sum {
        check_sum("PmtInf/CtrlSum", s, sum)?;
    }
    Ok(())
}

fn check_count(field: &'static str, declared: &str, found: u64) -> Result<(), XmlError> {
    let n = number_from_xml(field, declared, 15)?;
    if n != found {
        return Err(XmlError::Count {
            field,
            declared: declared.to_string(),
            found: found.to_string(),
        });
    }
    Ok(())
}

fn check_sum(field: &'static str, declared: &str, cents: i128) -> Result<(), XmlError> {
    let d = amount_from_xml(field, declared, true)?;
    if d.cents() != cents {
        return Err(XmlError::Count {
            field,
            declared: quote(declared),
            found: cents_text(cents),
        });
    }
    Ok(())
}

fn agent_not_provided() -> Agent {
    Agent {
        fin_instn_id: FinInstnId {
            bicfi: None,
            othr: Some(IdOnly {
                id: "NOTPROVIDED".into(),
            }),
        },
    }
}

fn code(cd: &str) -> CodeOrPrtry {
    CodeOrPrtry {
        cd: Some(cd.into()),
        prtry: None,
    }
}

fn prtry(p: &str) -> CodeOrPrtry {
    CodeOrPrtry {
        cd: None,
        prtry: Some(p.into()),
    }
}

// ---------------------------------------------------------------------------------------------
// StatusReport: pain.002.001.12.
// ---------------------------------------------------------------------------------------------

impl StatusReport {
    /// One `OrgnlPmtInfAndSts` (our initiations have one payment information block, whose id is
    /// the message id) with one `TxInfAndSts` per operation. Accepted is written `ACSC`, pending
    /// `PDNG`, rejected `RJCT` with its reason code.
    pub fn to_xml(&self) -> Result<String, XmlError> {
        check_id("GrpHdr/MsgId", &self.msg_id)?;
        check_id("OrgnlGrpInfAndSts/OrgnlMsgId", &self.original_msg_id)?;
        let created = datetime_to_xml("GrpHdr/CreDtTm", self.created)?;
        if self.transactions.is_empty() {
            return Err(XmlError::Missing("transactions: at least one".into()));
        }
        let mut seen = HashSet::new();
        let mut txs = Vec::with_capacity(self.transactions.len());
        for t in &self.transactions {
            check_id("OrgnlEndToEndId", &t.original_end_to_end_id)?;
            if !seen.insert(t.original_end_to_end_id.as_str()) {
                return Err(XmlError::Duplicate(format!(
                    "OrgnlEndToEndId {}",
                    quote(&t.original_end_to_end_id)
                )));
            }
            let (sts, reason) = match &t.status {
                TxStatus::Accepted => ("ACSC", None),
                TxStatus::Pending => ("PDNG", None),
                TxStatus::Rejected(r) => ("RJCT", Some(*r)),
            };
            txs.push(TxInfAndSts {
                orgnl_end_to_end_id: Some(t.original_end_to_end_id.clone()),
                tx_sts: Some(sts.into()),
                sts_rsn_inf: reason
                    .map(|r| StsRsnInf {
                        rsn: Some(code(r.code())),
                        addtl_inf: vec![r.describe().into()],
                    })
                    .into_iter()
                    .collect(),
            });
        }
        let doc = Pain002Doc {
            xmlns: PAIN_002.into(),
            body: Pain002 {
                grp_hdr: GrpHdr {
                    msg_id: self.msg_id.clone(),
                    cre_dt_tm: created,
                },
                orgnl_grp_inf_and_sts: OrgnlGrpInfAndSts {
                    orgnl_msg_id: self.original_msg_id.clone(),
                    orgnl_msg_nm_id: match self.original_direction {
                        Direction::Credit => PAIN_001_NAME,
                        Direction::Debit => PAIN_008_NAME,
                    }
                    .into(),
                },
                orgnl_pmt_inf_and_sts: vec![OrgnlPmtInfAndSts {
                    orgnl_pmt_inf_id: self.original_msg_id.clone(),
                    tx_inf_and_sts: txs,
                }],
            },
        };
        write_document(&doc)
    }

    /// Reads a pain.002.001.12. Every `TxInfAndSts` of every `OrgnlPmtInfAndSts` must name its
    /// operation (`OrgnlEndToEndId`, once per report) and carry a known `TxSts`; a rejection
    /// must carry a reason code the node knows. A report with no transaction status at all
    /// (a group-level status only) is refused: it cannot say which operations it covers.
    pub fn from_xml(bytes: &[u8]) -> Result<StatusReport, XmlError> {
        let (text, _) = open(bytes, &[(PAIN_002, "CstmrPmtStsRpt")], PAIN_002)?;
        let doc: Pain002Doc = deserialize(text)?;
        let body = doc.body;
        let grp = body.orgnl_grp_inf_and_sts;
        let original_direction = match grp.orgnl_msg_nm_id.as_str() {
            PAIN_001_NAME => Direction::Credit,
            PAIN_008_NAME => Direction::Debit,
            other => return Err(unknown("OrgnlGrpInfAndSts/OrgnlMsgNmId", other)),
        };
        let mut transactions = Vec::new();
        let mut seen = HashSet::new();
        for pmt in body.orgnl_pmt_inf_and_sts {
            check_id("OrgnlPmtInfAndSts/OrgnlPmtInfId", &pmt.orgnl_pmt_inf_id)?;
            for tx in pmt.tx_inf_and_sts {
                let id = tx
                    .orgnl_end_to_end_id
                    .ok_or_else(|| XmlError::Missing("TxInfAndSts/OrgnlEndToEndId".into()))?;
                check_id("TxInfAndSts/OrgnlEndToEndId", &id)?;
                if !seen.insert(id.clone()) {
                    return Err(XmlError::Duplicate(format!(
                        "TxInfAndSts/OrgnlEndToEndId {}",
                        quote(&id)
                    )));
                }
                let sts = tx
                    .tx_sts
                    .ok_or_else(|| XmlError::Missing("TxInfAndSts/TxSts".into()))?;
                let status = match sts.as_str() {
                    "ACSC" | "ACCC" => TxStatus::Accepted,
                    "RCVD" | "PDNG" | "ACTC" | "ACCP" | "ACSP" | "ACWC" => TxStatus::Pending,
                    "RJCT" => TxStatus::Rejected(rejection_reason(&tx.sts_rsn_inf)?),
                    other => return Err(unknown("TxInfAndSts/TxSts", other)),
                };
                transactions.push(TxReport {
                    original_end_to_end_id: id,
                    status,
                });
            }
        }
        if transactions.is_empty() {
            return Err(XmlError::Missing("OrgnlPmtInfAndSts/TxInfAndSts".into()));
        }
        Ok(StatusReport {
            msg_id: id_from_xml("GrpHdr/MsgId", body.grp_hdr.msg_id)?,
            created: datetime_from_xml("GrpHdr/CreDtTm", &body.grp_hdr.cre_dt_tm)?,
            original_msg_id: id_from_xml("OrgnlGrpInfAndSts/OrgnlMsgId", grp.orgnl_msg_id)?,
            original_direction,
            transactions,
        })
    }
}

/// The reason of a rejection: the first `StsRsnInf/Rsn/Cd`, which must be a code the node
/// knows ([`Reason::from_code`]).
fn rejection_reason(info: &[StsRsnInf]) -> Result<Reason, XmlError> {
    let cd = info
        .iter()
        .filter_map(|i| i.rsn.as_ref())
        .find_map(|r| r.cd.as_deref())
        .ok_or_else(|| XmlError::Missing("TxInfAndSts/StsRsnInf/Rsn/Cd of a RJCT".into()))?;
    Reason::from_code(cd).ok_or_else(|| unknown("TxInfAndSts/StsRsnInf/Rsn/Cd", cd))
}

// ---------------------------------------------------------------------------------------------
// Notification: camt.054.001.08.
// ---------------------------------------------------------------------------------------------

impl Notification {
    /// One `Ntfctn` with its sequence number (`ElctrncSeqNb`) and one `Ntry` per booked entry.
    pub fn to_xml(&self) -> Result<String, XmlError> {
        check_id("GrpHdr/MsgId", &self.msg_id)?;
        check_id("Ntfctn/Id", &self.notification_id)?;
        check_currency(&self.currency)?;
        if self.sequence > MAX_SEQUENCE {
            return Err(XmlError::BadNumber {
                field: "Ntfctn/ElctrncSeqNb",
                value: self.sequence.to_string(),
            });
        }
        let created = datetime_to_xml("GrpHdr/CreDtTm", self.created)?;
        let mut acct = account_to_xml("Ntfctn/Acct", &self.account)?;
        acct.ccy = Some(self.currency.clone());
        let ntry = entries_to_xml(&self.entries, &self.currency)?;
        let doc = Camt054Doc {
            xmlns: CAMT_054.into(),
            body: Camt054 {
                grp_hdr: GrpHdr {
                    msg_id: self.msg_id.clone(),
                    cre_dt_tm: created.clone(),
                },
                ntfctn: vec![Ntfctn {
                    id: self.notification_id.clone(),
                    elctrnc_seq_nb: Some(self.sequence.to_string()),
                    cre_dt_tm: Some(created),
                    acct,
                    txs_summry: Some(summary(ntry.len())),
                    ntry,
                }],
            },
        };
        write_document(&doc)
    }

    /// Reads a camt.054.001.08 with exactly one `Ntfctn`, which must carry its `ElctrncSeqNb`.
    /// Entries: each `Ntry` `BOOK`ed, with `BookgDt`, `BkTxCd`, a positive amount in the message's
    /// currency and `NtryDtls/TxDtls/Refs/EndToEndId`; a batch entry (several `TxDtls`, each with
    /// its `Amt`, adding up to the entry's) becomes one entry per transaction.
    pub fn from_xml(bytes: &[u8]) -> Result<Notification, XmlError> {
        let (text, _) = open(bytes, &[(CAMT_054, "BkToCstmrDbtCdtNtfctn")], CAMT_054)?;
        let doc: Camt054Doc = deserialize(text)?;
        let body = doc.body;
        let n = single(body.ntfctn, "Ntfctn")?;
        let seq = n
            .elctrnc_seq_nb
            .as_deref()
            .ok_or_else(|| XmlError::Missing("Ntfctn/ElctrncSeqNb".into()))?;
        let sequence = number_from_xml("Ntfctn/ElctrncSeqNb", seq, 18)?;
        let account = account_from_xml("Ntfctn/Acct", &n.acct)?;
        let mut currency = account_currency(&n.acct)?;
        let entries = entries_from_xml(&n.ntry, &mut currency)?;
        check_summary(n.txs_summry.as_ref(), n.ntry.len())?;
        Ok(Notification {
            msg_id: id_from_xml("GrpHdr/MsgId", body.grp_hdr.msg_id)?,
            created: datetime_from_xml("GrpHdr/CreDtTm", &body.grp_hdr.cre_dt_tm)?,
            notification_id: id_from_xml("Ntfctn/Id", n.id)?,
            sequence,
            account,
            currency: currency
                .ok_or_else(|| XmlError::Missing("Ntfctn/Acct/Ccy".into()))?
                .to_string(),
            entries,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Statement: camt.053.001.08.
// ---------------------------------------------------------------------------------------------

impl Statement {
    /// One `Stmt` with its opening (`OPBD`) and closing (`CLBD`) booked balances, both dated on
    /// the statement's date (a negative balance is its absolute value with `DBIT`), and one `Ntry`
    /// per booked entry.
    pub fn to_xml(&self) -> Result<String, XmlError> {
        check_id("GrpHdr/MsgId", &self.msg_id)?;
        check_id("Stmt/Id", &self.statement_id)?;
        check_currency(&self.currency)?;
        let created = datetime_to_xml("GrpHdr/CreDtTm", self.created)?;
        let date = date_to_xml("Stmt/Bal/Dt", self.date)?;
        let mut acct = account_to_xml("Stmt/Acct", &self.account)?;
        acct.ccy = Some(self.currency.clone());
        let balance = |cd: &str, amount: Amount| -> Result<Bal, XmlError> {
            let (value, side) = balance_to_xml("Stmt/Bal/Amt", amount)?;
            Ok(Bal {
                tp: BalTp {
                    cd_or_prtry: code(cd),
                },
                amt: CcyAmount {
                    ccy: self.currency.clone(),
                    value,
                },
                cdt_dbt_ind: side.into(),
                dt: DateChoice {
                    dt: Some(date.clone()),
                    dt_tm: None,
                },
            })
        };
        let bal = vec![
            balance("OPBD", self.opening)?,
            balance("CLBD", self.closing)?,
        ];
        let ntry = entries_to_xml(&self.entries, &self.currency)?;
        let doc = Camt053Doc {
            xmlns: CAMT_053.into(),
            body: Camt053 {
                grp_hdr: GrpHdr {
                    msg_id: self.msg_id.clone(),
                    cre_dt_tm: created.clone(),
                },
                stmt: vec![Stmt {
                    id: self.statement_id.clone(),
                    cre_dt_tm: Some(created),
                    acct,
                    bal,
                    txs_summry: Some(summary(ntry.len())),
                    ntry,
                }],
            },
        };
        write_document(&doc)
    }

    /// Reads a camt.053.001.08 with exactly one `Stmt`. It needs exactly one `OPBD` and one
    /// `CLBD` balance (other balance types are ignored); the statement's date is the closing
    /// balance's. Entries: each `Ntry` `BOOK`ed, with `BookgDt`, `BkTxCd`, a positive amount in
    /// the message's currency and `NtryDtls/TxDtls/Refs/EndToEndId`; a batch entry (several
    /// `TxDtls`, each with its `Amt`, adding up to the entry's) becomes one entry per transaction.
    pub fn from_xml(bytes: &[u8]) -> Result<Statement, XmlError> {
        let (text, _) = open(bytes, &[(CAMT_053, "BkToCstmrStmt")], CAMT_053)?;
        let doc: Camt053Doc = deserialize(text)?;
        let body = doc.body;
        let s = single(body.stmt, "Stmt")?;
        let account = account_from_xml("Stmt/Acct", &s.acct)?;
        let mut currency = account_currency(&s.acct)?;
        let mut opening = None;
        let mut closing = None;
        for b in &s.bal {
            let slot = match b.tp.cd_or_prtry.cd.as_deref() {
                Some("OPBD") => &mut opening,
                Some("CLBD") => &mut closing,
                _ => continue,
            };
            if slot.is_some() {
                return Err(XmlError::Duplicate(format!(
                    "Stmt/Bal of type {}",
                    b.tp.cd_or_prtry.cd.as_deref().unwrap_or_default()
                )));
            }
            same_currency(&mut currency, &b.amt.ccy)?;
            let amount = amount_from_xml("Stmt/Bal/Amt", &b.amt.value, true)?;
            // A zero debit balance stays zero (no negative zero, which would print "-0.00").
            let amount = match side_from_xml("Stmt/Bal/CdtDbtInd", &b.cdt_dbt_ind)? {
                Side::Debit if !amount.is_zero() => amount.checked_neg(),
                _ => amount,
            };
            *slot = Some((amount, date_choice("Stmt/Bal/Dt", &b.dt)?));
        }
        let (opening, _) = opening.ok_or_else(|| XmlError::Missing("Stmt/Bal OPBD".into()))?;
        let (closing, date) = closing.ok_or_else(|| XmlError::Missing("Stmt/Bal CLBD".into()))?;
        let entries = entries_from_xml(&s.ntry, &mut currency)?;
        check_summary(s.txs_summry.as_ref(), s.ntry.len())?;
        Ok(Statement {
            msg_id: id_from_xml("GrpHdr/MsgId", body.grp_hdr.msg_id)?,
            created: datetime_from_xml("GrpHdr/CreDtTm", &body.grp_hdr.cre_dt_tm)?,
            statement_id: id_from_xml("Stmt/Id", s.id)?,
            account,
            currency: currency
                .ok_or_else(|| XmlError::Missing("Stmt/Acct/Ccy".into()))?
                .to_string(),
            date,
            opening,
            closing,
            entries,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Entries (camt.053 and camt.054).
// ---------------------------------------------------------------------------------------------

fn summary(entries: usize) -> TxsSummry {
    TxsSummry {
        ttl_ntries: Some(TtlNtries {
            nb_of_ntries: Some(entries.to_string()),
        }),
    }
}

fn check_summary(summary: Option<&TxsSummry>, entries: usize) -> Result<(), XmlError> {
    match summary
        .and_then(|s| s.ttl_ntries.as_ref())
        .and_then(|t| t.nb_of_ntries.as_deref())
    {
        Some(n) => check_count("TxsSummry/TtlNtries/NbOfNtries", n, entries as u64),
        None => Ok(()),
    }
}

/// One `Ntry` per entry, `BOOK`ed, with a bank transaction code that says only "miscellaneous
/// credit/debit operation" (`PMNT`/`MCOP`|`MDOP`/`OTHR`): the domain entry does not say which
/// instrument caused it.
fn entries_to_xml(entries: &[BookedEntry], currency: &str) -> Result<Vec<Ntry>, XmlError> {
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        check_id("Ntry/NtryDtls/TxDtls/Refs/EndToEndId", &e.end_to_end_id)?;
        let value = positive_to_xml("Ntry/Amt", e.amount)?;
        let (ind, family) = match e.side {
            Side::Credit => ("CRDT", "MCOP"),
            Side::Debit => ("DBIT", "MDOP"),
        };
        out.push(Ntry {
            amt: CcyAmount {
                ccy: currency.to_string(),
                value,
            },
            cdt_dbt_ind: ind.into(),
            sts: code("BOOK"),
            bookg_dt: Some(DateChoice {
                dt: Some(date_to_xml("Ntry/BookgDt", e.booked)?),
                dt_tm: None,
            }),
            bk_tx_cd: BkTxCd {
                domn: Some(Domn {
                    cd: "PMNT".into(),
                    fmly: Fmly {
                        cd: family.into(),
                        sub_fmly_cd: "OTHR".into(),
                    },
                }),
                prtry: None,
            },
            ntry_dtls: vec![NtryDtls {
                tx_dtls: vec![TxDtls {
                    refs: Some(Refs {
                        end_to_end_id: Some(e.end_to_end_id.clone()),
                    }),
                    amt: None,
                    cdt_dbt_ind: None,
                }],
            }],
        });
    }
    Ok(out)
}

/// The booked entries of a camt.053 or camt.054. Every `Ntry` must be `BOOK`ed, have a booking
/// date, a bank transaction code, a positive amount in the message's currency and its
/// operation's end-to-end id under `NtryDtls/TxDtls/Refs/EndToEndId`. A batch entry (several
/// `TxDtls`) becomes one entry per transaction, each with its own `Amt`, which must add up to
/// the `Ntry`'s amount.
fn entries_from_xml<'a>(
    ntries: &'a [Ntry],
    currency: &mut Option<&'a str>,
) -> Result<Vec<BookedEntry>, XmlError> {
    let mut out = Vec::with_capacity(ntries.len());
    for n in ntries {
        same_currency(currency, &n.amt.ccy)?;
        let amount = positive_from_xml("Ntry/Amt", &n.amt.value)?;
        let side = side_from_xml("Ntry/CdtDbtInd", &n.cdt_dbt_ind)?;
        match (n.sts.cd.as_deref(), n.sts.prtry.as_deref()) {
            (Some("BOOK"), None) => {}
            (Some(cd), _) => return Err(unknown("Ntry/Sts/Cd", cd)),
            (None, Some(p)) => return Err(unknown("Ntry/Sts/Prtry", p)),
            (None, None) => return Err(XmlError::Missing("Ntry/Sts/Cd".into())),
        }
        let booked = n
            .bookg_dt
            .as_ref()
            .ok_or_else(|| XmlError::Missing("Ntry/BookgDt".into()))?;
        let booked = date_choice("Ntry/BookgDt", booked)?;
        if n.bk_tx_cd.domn.is_none() && n.bk_tx_cd.prtry.is_none() {
            return Err(XmlError::Missing("Ntry/BkTxCd/Domn or Prtry".into()));
        }
        let txs: Vec<&TxDtls> = n.ntry_dtls.iter().flat_map(|d| &d.tx_dtls).collect();
        let e2e = |tx: &TxDtls| -> Result<String, XmlError> {
            let id = tx
                .refs
                .as_ref()
                .and_then(|r| r.end_to_end_id.clone())
                .ok_or_else(|| XmlError::Missing("Ntry/NtryDtls/TxDtls/Refs/EndToEndId".into()))?;
            check_id("Ntry/NtryDtls/TxDtls/Refs/EndToEndId", &id)?;
            Ok(id)
        };
        let tx_side = |tx: &TxDtls| -> Result<(), XmlError> {
            match tx.cdt_dbt_ind.as_deref() {
                None => Ok(()),
                Some(ind) if side_from_xml("TxDtls/CdtDbtInd", ind)? == side => Ok(()),
                Some(ind) => Err(XmlError::Count {
                    field: "TxDtls/CdtDbtInd",
                    declared: quote(ind),
                    found: quote(&n.cdt_dbt_ind),
                }),
            }
        };
        match txs.as_slice() {
            [] => {
                return Err(XmlError::Missing(
                    "Ntry/NtryDtls/TxDtls/Refs/EndToEndId".into(),
                ))
            }
            [tx] => {
                tx_side(tx)?;
                if let Some(a) = &tx.amt {
                    same_currency(currency, &a.ccy)?;
                    let tx_amount = positive_from_xml("TxDtls/Amt", &a.value)?;
                    if tx_amount != amount {
                        return Err(XmlError::Count {
                            field: "Ntry/Amt",
                            declared: amount.to_string(),
                            found: tx_amount.to_string(),
                        });
                    }
                }
                out.push(BookedEntry {
                    end_to_end_id: e2e(tx)?,
                    amount,
                    side,
                    booked,
                });
            }
            many => {
                let mut sum: i128 = 0;
                for tx in many {
                    tx_side(tx)?;
                    let a = tx.amt.as_ref().ok_or_else(|| {
                        XmlError::Missing("Ntry/NtryDtls/TxDtls/Amt of a batch entry".into())
                    })?;
                    same_currency(currency, &a.ccy)?;
                    let tx_amount = positive_from_xml("TxDtls/Amt", &a.value)?;
                    sum = sum.saturating_add(tx_amount.cents());
                    out.push(BookedEntry {
                        end_to_end_id: e2e(tx)?,
                        amount: tx_amount,
                        side,
                        booked,
                    });
                }
                if sum != amount.cents() {
                    return Err(XmlError::Count {
                        field: "Ntry/Amt",
                        declared: amount.to_string(),
                        found: cents_text(sum),
                    });
                }
            }
        }
    }
    Ok(out)
}

/// The account's currency, if given (`Acct/Ccy` is optional: the amounts then decide).
fn account_currency(acct: &Account) -> Result<Option<&str>, XmlError> {
    match acct.ccy.as_deref() {
        Some(c) => {
            check_currency(c)?;
            Ok(Some(c))
        }
        None => Ok(None),
    }
}

fn side_from_xml(field: &'static str, ind: &str) -> Result<Side, XmlError> {
    match ind {
        "CRDT" => Ok(Side::Credit),
        "DBIT" => Ok(Side::Debit),
        other => Err(unknown(field, other)),
    }
}

// ---------------------------------------------------------------------------------------------
// Values: ids, accounts, currencies, amounts, numbers, dates.
// ---------------------------------------------------------------------------------------------

/// `Max35Text`, the ids.
fn check_id(field: &'static str, value: &str) -> Result<(), XmlError> {
    check_text(field, value, 35)
}

fn id_from_xml(field: &'static str, value: String) -> Result<String, XmlError> {
    check_id(field, &value)?;
    Ok(value)
}

/// `MaxNText`: 1 to `max` characters. Control characters are refused (most cannot be written in
/// XML 1.0, and the others do not survive line-end normalisation), and so are leading and trailing
/// spaces, which readers trim: what is written must read back the same.
fn check_text(field: &'static str, value: &str, max: usize) -> Result<(), XmlError> {
    let mut count = 0usize;
    let mut ok = !value.starts_with(' ') && !value.ends_with(' ');
    for c in value.chars() {
        count += 1;
        if c.is_control() || c == '\u{FFFE}' || c == '\u{FFFF}' || count > max {
            ok = false;
            break;
        }
    }
    if !ok || count == 0 {
        return Err(XmlError::BadId {
            field,
            value: quote(value),
            max,
        });
    }
    Ok(())
}

/// `IBAN2007Identifier`: `[A-Z]{2}[0-9]{2}[a-zA-Z0-9]{1,30}`.
fn is_iban(value: &str) -> bool {
    let b = value.as_bytes();
    (5..=34).contains(&b.len())
        && b[..2].iter().all(u8::is_ascii_uppercase)
        && b[2..4].iter().all(u8::is_ascii_digit)
        && b[4..].iter().all(u8::is_ascii_alphanumeric)
}

/// An account is `Othr/Id`, a `Max34Text`.
fn check_account(field: &'static str, value: &str) -> Result<(), XmlError> {
    check_text(field, value, 34)
}

/// An IBAN-shaped account is written as `IBAN` (what SEPA banks expect), any other as
/// `Othr/Id`; both read back as the same string.
fn account_to_xml(field: &'static str, value: &str) -> Result<Account, XmlError> {
    check_account(field, value)?;
    let id = if is_iban(value) {
        AccountId {
            iban: Some(value.to_string()),
            othr: None,
        }
    } else {
        AccountId {
            iban: None,
            othr: Some(IdOnly {
                id: value.to_string(),
            }),
        }
    };
    Ok(Account { id, ccy: None })
}

fn account_from_xml(field: &'static str, a: &Account) -> Result<String, XmlError> {
    let value = match (&a.id.iban, &a.id.othr) {
        (Some(iban), None) => iban,
        (None, Some(o)) => &o.id,
        (Some(_), Some(_)) => return Err(XmlError::Duplicate(format!("{field}/Id choice"))),
        (None, None) => return Err(XmlError::Missing(format!("{field}/Id/IBAN or Othr/Id"))),
    };
    check_account(field, value)?;
    if let Some(c) = &a.ccy {
        check_currency(c)?;
    }
    Ok(value.clone())
}

/// `ActiveOrHistoricCurrencyCode`: `[A-Z]{3}`.
fn check_currency(value: &str) -> Result<(), XmlError> {
    if value.len() == 3 && value.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(XmlError::BadCurrency(quote(value)))
    }
}

/// Every amount of a message is in one currency: the first seen sets it.
fn same_currency<'a>(expected: &mut Option<&'a str>, found: &'a str) -> Result<(), XmlError> {
    check_currency(found)?;
    match expected {
        None => {
            *expected = Some(found);
            Ok(())
        }
        Some(e) if *e == found => Ok(()),
        Some(e) => Err(XmlError::Currency {
            expected: e.to_string(),
            found: found.to_string(),
        }),
    }
}

fn positive_to_xml(field: &'static str, amount: Amount) -> Result<String, XmlError> {
    let bad = |reason| XmlError::BadAmount {
        field,
        value: amount.to_string(),
        reason,
    };
    if amount.is_negative() {
        return Err(bad("negative"));
    }
    if amount.is_zero() {
        return Err(bad("zero where a positive amount is required"));
    }
    if amount.cents() > MAX_CENTS {
        return Err(bad("more than 18 digits"));
    }
    Ok(amount.to_string())
}

/// A balance: its absolute value and `CRDT` (zero or more) or `DBIT` (negative).
fn balance_to_xml(field: &'static str, amount: Amount) -> Result<(String, &'static str), XmlError> {
    let side = if amount.is_negative() { "DBIT" } else { "CRDT" };
    // Rebuilt from the cents, so that a negative zero is written "0.00".
    let cents = amount.cents().abs();
    let abs = Amount::from_cents_i128(cents)
        .ok()
        .filter(|_| cents <= MAX_CENTS);
    let Some(abs) = abs else {
        return Err(XmlError::BadAmount {
            field,
            value: amount.to_string(),
            reason: "more than 18 digits",
        });
    };
    Ok((abs.to_string(), side))
}

fn sum_to_xml(field: &'static str, cents: i128) -> Result<String, XmlError> {
    if cents > MAX_CENTS {
        return Err(XmlError::BadAmount {
            field,
            value: cents_text(cents),
            reason: "more than 18 digits",
        });
    }
    Ok(cents_text(cents))
}

/// Cents as an amount's text, for sums and error messages.
fn cents_text(cents: i128) -> String {
    match Amount::from_cents_i128(cents) {
        Ok(a) => a.to_string(),
        Err(_) => format!("{cents} cents"),
    }
}

fn positive_from_xml(field: &'static str, text: &str) -> Result<Amount, XmlError> {
    amount_from_xml(field, text, false)
}

/// An amount as ISO writes it, narrowed to our money: digits, at most two decimals (the XSD
/// allows five; a third decimal cannot be booked), no sign, at most 18 digits; zero only where
/// `zero_ok` (balances, sums).
fn amount_from_xml(field: &'static str, text: &str, zero_ok: bool) -> Result<Amount, XmlError> {
    let bad = |reason| XmlError::BadAmount {
        field,
        value: quote(text),
        reason,
    };
    if text.starts_with('-') {
        return Err(bad("negative"));
    }
    match Amount::parse(text) {
        Ok(a) if a.is_zero() && !zero_ok => Err(bad("zero where a positive amount is required")),
        Ok(a) if a.cents() > MAX_CENTS => Err(bad("more than 18 digits")),
        Ok(a) => Ok(a),
        Err(AmountError::Overflow) => Err(bad("more than 18 digits")),
        Err(_) => match text.split_once('.') {
            Some((i, f))
                if !i.is_empty()
                    && f.len() > 2
                    && i.bytes().all(|b| b.is_ascii_digit())
                    && f.bytes().all(|b| b.is_ascii_digit()) =>
            {
                Err(bad("more than two decimals"))
            }
            _ => Err(bad("not a number with at most two decimals")),
        },
    }
}

/// `Max15NumericText` (`max_digits` 15) or a `Number` (18): digits only.
fn number_from_xml(field: &'static str, text: &str, max_digits: usize) -> Result<u64, XmlError> {
    let bad = || XmlError::BadNumber {
        field,
        value: quote(text),
    };
    if text.is_empty() || text.len() > max_digits || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    text.parse().map_err(|_| bad())
}

/// ISO years are four digits; XSD 1.0 has no year 0.
fn check_year(
    field: &'static str,
    year: i32,
    text: &dyn std::fmt::Display,
) -> Result<(), XmlError> {
    if (1..=9999).contains(&year) {
        Ok(())
    } else {
        Err(XmlError::BadDate(format!(
            "{field} {text}: the year must be 0001 to 9999"
        )))
    }
}

fn date_to_xml(field: &'static str, date: Date) -> Result<String, XmlError> {
    check_year(field, date.year(), &date)?;
    date.format(DATE_FORMAT)
        .map_err(|e| XmlError::BadDate(format!("{field} {date}: {e}")))
}

/// `ISODate`: exactly `YYYY-MM-DD`, no time zone.
fn date_from_xml(field: &'static str, text: &str) -> Result<Date, XmlError> {
    let b = text.as_bytes();
    let shaped = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !shaped {
        return Err(XmlError::BadDate(format!(
            "{field} {}: expected YYYY-MM-DD",
            quote(text)
        )));
    }
    let date = Date::parse(text, DATE_FORMAT)
        .map_err(|e| XmlError::BadDate(format!("{field} {}: {e}", quote(text))))?;
    check_year(field, date.year(), &text)?;
    Ok(date)
}

/// `DateAndDateTime2Choice`: the date, or the date part of the date-time as written (in its
/// own offset: that is the bank's booking day).
fn date_choice(field: &'static str, c: &DateChoice) -> Result<Date, XmlError> {
    match (&c.dt, &c.dt_tm) {
        (Some(d), None) => date_from_xml(field, d),
        (None, Some(t)) => Ok(parse_datetime(field, t)?.date()),
        (Some(_), Some(_)) => Err(XmlError::Duplicate(format!("{field} Dt and DtTm"))),
        (None, None) => Err(XmlError::Missing(format!("{field}/Dt"))),
    }
}

/// `ISODateTime`, always written in UTC with a `Z`.
fn datetime_to_xml(field: &'static str, dt: DateTime) -> Result<String, XmlError> {
    let utc = dt
        .checked_to_offset(UtcOffset::UTC)
        .ok_or_else(|| XmlError::BadDate(format!("{field} {dt}: out of range in UTC")))?;
    check_year(field, utc.year(), &utc)?;
    utc.format(&Rfc3339)
        .map_err(|e| XmlError::BadDate(format!("{field} {utc}: {e}")))
}

fn parse_datetime(field: &'static str, text: &str) -> Result<DateTime, XmlError> {
    DateTime::parse(text, &Rfc3339).map_err(|e| {
        XmlError::BadDate(format!(
            "{field} {}: expected YYYY-MM-DDThh:mm:ss with Z or an offset ({e})",
            quote(text)
        ))
    })
}

/// `ISODateTime` read: it must carry `Z` or an offset (a local time without one is ambiguous);
/// the value is returned in UTC.
fn datetime_from_xml(field: &'static str, text: &str) -> Result<DateTime, XmlError> {
    let dt = parse_datetime(field, text)?;
    let utc = dt
        .checked_to_offset(UtcOffset::UTC)
        .ok_or_else(|| XmlError::BadDate(format!("{field} {}: out of range", quote(text))))?;
    check_year(field, utc.year(), &text)?;
    Ok(utc)
}

fn unknown(field: &'static str, code: &str) -> XmlError {
    XmlError::UnknownCode {
        field,
        code: quote(code),
    }
}

/// Exactly one element of a list the domain value has one of.
fn single<T>(items: Vec<T>, name: &str) -> Result<T, XmlError> {
    let mut it = items.into_iter();
    match (it.next(), it.next()) {
        (Some(one), None) => Ok(one),
        (None, _) => Err(XmlError::Missing(name.to_string())),
        (Some(_), Some(_)) => Err(XmlError::Duplicate(name.to_string())),
    }
}

/// Input quoted in an error, clipped to [`QUOTE_CHARS`] characters.
fn quote(s: &str) -> String {
    match s.char_indices().nth(QUOTE_CHARS) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Writing and reading documents.
// ---------------------------------------------------------------------------------------------

/// The XML declaration, then `doc` as `<Document xmlns="...">`, indented for people; refused
/// ([`XmlError::TooLarge`]) over [`MAX_MESSAGE_BYTES`].
fn write_document<T: Serialize>(doc: &T) -> Result<String, XmlError> {
    let mut out = String::from(XML_DECLARATION);
    let mut ser = quick_xml::se::Serializer::with_root(&mut out, Some("Document"))
        .map_err(|e| XmlError::Write(e.to_string()))?;
    ser.indent(' ', 2);
    doc.serialize(ser)
        .map_err(|e| XmlError::Write(e.to_string()))?;
    out.push('\n');
    // What we write must be readable, by us and by a bank with the same limit.
    if out.len() > MAX_MESSAGE_BYTES {
        return Err(XmlError::TooLarge {
            size: out.len(),
            limit: MAX_MESSAGE_BYTES,
        });
    }
    Ok(out)
}

/// serde into `T`, after [`open`] checked the document.
fn deserialize<T: DeserializeOwned>(text: &str) -> Result<T, XmlError> {
    quick_xml::de::from_str(text).map_err(|e| de_error(text, e))
}

/// serde's "missing field" and "duplicate field" become [`XmlError::Missing`] and
/// [`XmlError::Duplicate`] (the latter with the path of the repeated element); anything else is
/// [`XmlError::Malformed`].
fn de_error(text: &str, e: DeError) -> XmlError {
    if let DeError::Custom(msg) = &e {
        let named = |prefix: &str| {
            msg.strip_prefix(prefix)
                .and_then(|rest| rest.split('`').next())
                .map(|name| name.trim_start_matches('@').to_string())
        };
        if let Some(name) = named("missing field `") {
            return XmlError::Missing(name);
        }
        if let Some(name) = named("duplicate field `") {
            return XmlError::Duplicate(repeated_path(text, &name).unwrap_or(name));
        }
    }
    XmlError::Malformed(e.to_string())
}

/// The path of the first element named `name` whose parent has it twice, such as
/// `Document/CstmrCdtTrfInitn/GrpHdr/MsgId`.
fn repeated_path(text: &str, name: &str) -> Option<String> {
    let mut reader = NsReader::from_str(text);
    // (element name, whether a child `name` was seen)
    let mut stack: Vec<(String, bool)> = Vec::new();
    loop {
        let (empty, start) = match reader.read_event().ok()? {
            Event::Start(s) => (false, s),
            Event::Empty(s) => (true, s),
            Event::End(_) => {
                stack.pop();
                continue;
            }
            Event::Eof => return None,
            _ => continue,
        };
        let local = String::from_utf8_lossy(start.local_name().as_ref()).into_owned();
        if local == name {
            if let Some((_, seen)) = stack.last_mut() {
                if *seen {
                    let mut path: Vec<&str> = stack.iter().map(|(n, _)| n.as_str()).collect();
                    path.push(name);
                    return Some(path.join("/"));
                }
                *seen = true;
            }
        }
        if !empty {
            stack.push((local, false));
        }
    }
}

/// The checks before serde (see the module's documentation): size, no DOCTYPE or ENTITY, UTF-8,
/// then one pass over the events. `allowed` lists the (namespace, message element) pairs this
/// reader accepts; returns the text (without a byte order mark) and the index of the pair found.
fn open<'a>(
    bytes: &'a [u8],
    allowed: &[(&'static str, &'static str)],
    expected_ns: &'static str,
) -> Result<(&'a str, usize), XmlError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(XmlError::TooLarge {
            size: bytes.len(),
            limit: MAX_MESSAGE_BYTES,
        });
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(XmlError::Empty);
    }
    if has_declaration(bytes) {
        return Err(XmlError::Doctype);
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|e| XmlError::Encoding(format!("invalid UTF-8 at byte {}", e.valid_up_to())))?;
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    let which = scan(text, allowed, expected_ns)?;
    Ok((text, which))
}

/// Whether `<!DOCTYPE` or `<!ENTITY` occurs anywhere, in any case. Checked on the raw bytes so
/// that no parser ever sees a declaration (even inside a comment or CDATA it is refused: strict
/// and simple).
fn has_declaration(bytes: &[u8]) -> bool {
    bytes.windows(2).enumerate().any(|(i, w)| {
        w == b"<!" && {
            let rest = &bytes[i + 2..];
            starts_with_ignore_case(rest, b"DOCTYPE") || starts_with_ignore_case(rest, b"ENTITY")
        }
    })
}

fn starts_with_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.len() >= needle.len() && hay[..needle.len()].eq_ignore_ascii_case(needle)
}

/// One pass over the events with the namespace-aware reader: well-formed, an unprefixed root
/// `Document` in an allowed namespace, exactly one child (the allowed message element of that
/// namespace), every element in that namespace, at most [`MAX_DEPTH`] deep, no text outside the
/// root, and text and attributes that decode.
fn scan(
    text: &str,
    allowed: &[(&'static str, &'static str)],
    expected_ns: &'static str,
) -> Result<usize, XmlError> {
    let mut reader = NsReader::from_str(text);
    let mut path: Vec<String> = Vec::new();
    let mut which: Option<usize> = None;
    let mut root_done = false;
    let mut message_seen = false;
    let at = |path: &[String]| {
        if path.is_empty() {
            String::new()
        } else {
            format!(" in /{}", path.join("/"))
        }
    };
    loop {
        let position = reader.buffer_position();
        let (ns, event) = match reader.read_resolved_event() {
            Ok(x) => x,
            Err(e) => {
                return Err(XmlError::Malformed(format!(
                    "{e} at byte {}{}",
                    reader.error_position(),
                    at(&path)
                )))
            }
        };
        let (start, empty) = match event {
            Event::Start(s) => (s, false),
            Event::Empty(s) => (s, true),
            Event::End(_) => {
                path.pop();
                if path.is_empty() {
                    root_done = true;
                }
                continue;
            }
            Event::DocType(_) => return Err(XmlError::Doctype),
            Event::Decl(d) => {
                if let Some(enc) = d.encoding() {
                    let enc = enc.map_err(|e| XmlError::Malformed(e.to_string()))?;
                    if !enc.eq_ignore_ascii_case(b"UTF-8") {
                        return Err(XmlError::Encoding(format!(
                            "declared encoding {:?}, only UTF-8 is read",
                            quote(&String::from_utf8_lossy(&enc))
                        )));
                    }
                }
                continue;
            }
            Event::Text(t) => {
                if path.is_empty() {
                    if !t.iter().all(u8::is_ascii_whitespace) {
                        return Err(XmlError::Malformed(format!(
                            "text outside the root element at byte {position}"
                        )));
                    }
                } else if let Err(e) = t.unescape() {
                    return Err(XmlError::Malformed(format!(
                        "{e} at byte {position}{}",
                        at(&path)
                    )));
                }
                continue;
            }
            Event::CData(_) if path.is_empty() => {
                return Err(XmlError::Malformed(format!(
                    "CDATA outside the root element at byte {position}"
                )))
            }
            Event::Eof => break,
            _ => continue,
        };
        check_attributes(&start, position, &path)?;
        let local = String::from_utf8_lossy(start.local_name().as_ref()).into_owned();
        let namespace = match &ns {
            ResolveResult::Bound(n) => String::from_utf8_lossy(n.as_ref()).into_owned(),
            ResolveResult::Unbound => String::new(),
            ResolveResult::Unknown(p) => {
                return Err(XmlError::Malformed(format!(
                    "undeclared namespace prefix {:?} at byte {position}",
                    String::from_utf8_lossy(p)
                )))
            }
        };
        if path.is_empty() {
            if root_done || which.is_some() {
                return Err(XmlError::Malformed(format!(
                    "a second root element at byte {position}"
                )));
            }
            if start.name().as_ref() != b"Document" {
                return Err(XmlError::Root {
                    found: quote(&String::from_utf8_lossy(start.name().as_ref())),
                });
            }
            which = Some(
                allowed
                    .iter()
                    .position(|(n, _)| *n == namespace)
                    .ok_or_else(|| XmlError::WrongNamespace {
                        expected: expected_ns,
                        found: quote(&namespace),
                    })?,
            );
            if empty {
                root_done = true;
            }
        } else {
            let Some(w) = which else {
                return Err(XmlError::Malformed("content before the root".into()));
            };
            let (want_ns, want_message) = allowed[w];
            if namespace != want_ns {
                return Err(XmlError::WrongNamespace {
                    expected: want_ns,
                    found: format!("{}{}", quote(&namespace), at(&path)),
                });
            }
            if path.len() == 1 {
                if local != want_message {
                    return Err(XmlError::WrongMessage {
                        expected: want_message,
                        found: quote(&local),
                    });
                }
                if message_seen {
                    return Err(XmlError::Duplicate(format!("Document/{want_message}")));
                }
                message_seen = true;
            }
        }
        if !empty {
            if path.len() >= MAX_DEPTH {
                return Err(XmlError::Malformed(format!(
                    "elements nested deeper than {MAX_DEPTH} at byte {position}"
                )));
            }
            path.push(local);
        }
    }
    if !path.is_empty() {
        return Err(XmlError::Malformed(format!(
            "the message ends inside an element{}",
            at(&path)
        )));
    }
    let Some(w) = which else {
        return Err(XmlError::Missing("the root element Document".into()));
    };
    if !message_seen {
        return Err(XmlError::Missing(format!("Document/{}", allowed[w].1)));
    }
    Ok(w)
}

/// Attributes must parse and their values decode (entity references included).
fn check_attributes(
    start: &BytesStart<'_>,
    position: u64,
    path: &[String],
) -> Result<(), XmlError> {
    for attr in start.attributes() {
        let ok = attr
            .map_err(|e| e.to_string())
            .and_then(|a| a.unescape_value().map(|_| ()).map_err(|e| e.to_string()));
        if let Err(e) = ok {
            return Err(XmlError::Malformed(format!(
                "bad attribute at byte {position} in /{}: {e}",
                path.join("/")
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{date, datetime};

    #[test]
    fn initiation_namespaces_name_both_versions() {
        assert!(INITIATION_NAMESPACES.contains(PAIN_001));
        assert!(INITIATION_NAMESPACES.contains(PAIN_008));
    }

    #[test]
    fn declarations_are_found_in_any_case() {
        assert!(has_declaration(b"<!DOCTYPE x>"));
        assert!(has_declaration(b"  <!doctype x>"));
        assert!(has_declaration(b"<a><!EnTiTy x 'y'></a>"));
        assert!(!has_declaration(b"<a><!-- comment --></a>"));
        assert!(!has_declaration(b"<!"));
        assert!(!has_declaration(b""));
    }

    #[test]
    fn amounts_are_narrowed_to_two_decimals() {
        assert_eq!(
            amount_from_xml("f", "12.34", false).map(|a| a.cents()),
            Ok(1234)
        );
        assert_eq!(amount_from_xml("f", "7", false).map(|a| a.cents()), Ok(700));
        let reason = |t: &str, zero_ok| match amount_from_xml("f", t, zero_ok) {
            Err(XmlError::BadAmount { reason, .. }) => reason,
            other => panic!("{t}: {other:?}"),
        };
        assert_eq!(reason("12.345", false), "more than two decimals");
        assert_eq!(reason("12.340", false), "more than two decimals");
        assert_eq!(reason("-1.00", false), "negative");
        assert_eq!(
            reason("0.00", false),
            "zero where a positive amount is required"
        );
        assert_eq!(
            reason("1e3", false),
            "not a number with at most two decimals"
        );
        assert_eq!(reason("", false), "not a number with at most two decimals");
        assert_eq!(
            reason(".5", false),
            "not a number with at most two decimals"
        );
        assert_eq!(reason("10000000000000000.00", false), "more than 18 digits");
        assert_eq!(
            reason("9".repeat(40).as_str(), false),
            "more than 18 digits"
        );
        assert!(amount_from_xml("f", "0", true).is_ok());
        assert!(amount_from_xml("f", "9999999999999999.99", false).is_ok());
    }

    #[test]
    fn texts_are_checked_in_characters() {
        assert!(check_id("f", &"é".repeat(35)).is_ok());
        assert!(check_id("f", &"é".repeat(36)).is_err());
        assert!(check_id("f", "").is_err());
        assert!(check_id("f", " a").is_err());
        assert!(check_id("f", "a ").is_err());
        assert!(check_id("f", "a\nb").is_err());
        assert!(check_id("f", "a\u{0}b").is_err());
        assert!(check_id("f", "a b<&>\"'").is_ok());
    }

    #[test]
    fn ibans_are_recognised() {
        assert!(is_iban("DE89370400440532013000"));
        assert!(is_iban("FR7630006000011234567890189"));
        assert!(!is_iban("ACC-1"));
        assert!(!is_iban("de89370400440532013000"));
        assert!(!is_iban("DE8"));
    }

    #[test]
    fn dates_are_strict() {
        assert_eq!(date_from_xml("f", "2024-02-29"), Ok(date!(2024 - 02 - 29)));
        for bad in [
            "2023-02-29",
            "2024-2-29",
            "+2024-02-29",
            "2024-02-29Z",
            "0000-01-01",
            "",
        ] {
            assert!(
                matches!(date_from_xml("f", bad), Err(XmlError::BadDate(_))),
                "{bad}"
            );
        }
        assert_eq!(
            date_to_xml("f", date!(0999 - 01 - 02)).as_deref(),
            Ok("0999-01-02")
        );
    }

    #[test]
    fn date_times_are_written_in_utc_and_need_an_offset() {
        let dt = datetime!(2024-05-01 12:30:00 +02:00);
        let text = datetime_to_xml("f", dt);
        assert_eq!(text.as_deref(), Ok("2024-05-01T10:30:00Z"));
        assert_eq!(datetime_from_xml("f", "2024-05-01T12:30:00+02:00"), Ok(dt));
        assert!(matches!(
            datetime_from_xml("f", "2024-05-01T12:30:00"),
            Err(XmlError::BadDate(_))
        ));
        assert!(matches!(
            datetime_to_xml("f", datetime!(-0001-01-01 00:00 UTC)),
            Err(XmlError::BadDate(_))
        ));
    }

    #[test]
    fn numbers_are_digits_only() {
        assert_eq!(number_from_xml("f", "007", 15), Ok(7));
        assert!(number_from_xml("f", "+7", 15).is_err());
        assert!(number_from_xml("f", "7.0", 15).is_err());
        assert!(number_from_xml("f", "", 15).is_err());
        assert!(number_from_xml("f", &"9".repeat(16), 15).is_err());
        assert_eq!(number_from_xml("f", &"9".repeat(18), 18), Ok(MAX_SEQUENCE));
    }

    #[test]
    fn negative_zero_balances_are_plain_zero() {
        let minus_zero = Amount::ZERO.checked_neg();
        assert_eq!(
            balance_to_xml("f", minus_zero),
            Ok(("0.00".to_string(), "CRDT"))
        );
        assert_eq!(
            balance_to_xml("f", Amount::from_cents(-5)),
            Ok(("0.05".to_string(), "DBIT"))
        );
    }

    #[test]
    fn quotes_are_clipped() {
        assert_eq!(quote("abc"), "abc");
        let long = "x".repeat(1000);
        assert_eq!(quote(&long).chars().count(), QUOTE_CHARS + 1);
    }

    #[test]
    fn repeated_elements_are_located() {
        let xml = "<Document><A><B/><C>1</C><C>2</C></A></Document>";
        assert_eq!(repeated_path(xml, "C").as_deref(), Some("Document/A/C"));
        assert_eq!(repeated_path(xml, "B"), None);
    }
}
