//! Account management through the consumer API (SPEC F5): the consumer's bank accounts (link
//! more, designate the one that tops the wallet up), transfers between them and into the
//! wallet, and standing transfer rules. Accounts are named by their id: the node's stored name
//! of the account (with a data key a reference, `bk-…`, never the number, I10); numbers are
//! shown masked to their last four.
//!
//! Linking takes the account's number from a consumer signed in with card and PIN; a bank's
//! mandate for debiting it is the bank adapter's concern, not this API's.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use onecard_engine::Amount;
use onecard_protocol::mask_card_number as mask;
use serde::{Deserialize, Serialize};

use super::idem::Reply;
use super::merchant::MAX_ORDER_CENTS;
use super::recharge::key_required;
use super::{consumer_of, parse_json, ApiError};
use crate::records;
use crate::state::Node;
use crate::store;
use crate::transfers::{self, TransferRule, WALLET};

/// One of the consumer's bank accounts as the API shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct BankAccountView {
    /// How the consumer names it in transfers and rules.
    pub id: String,
    /// The account number, masked to its last four characters.
    pub account: String,
    /// Whether top-ups come from it (and overflows go to it).
    pub designated: bool,
}

/// The auto top-up: the engine's standing rule, shown beside the consumer's own.
#[derive(Debug, Serialize, Deserialize)]
pub struct AutoTopUp {
    /// The designated account's id.
    pub from: String,
    /// Below this the wallet is topped up …
    pub threshold: String,
    /// … back to exactly this.
    pub cap: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RuleView {
    pub id: String,
    #[serde(flatten)]
    pub rule: TransferRule,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct BankAccounts {
    pub accounts: Vec<BankAccountView>,
    pub auto_top_up: AutoTopUp,
    pub transfer_rules: Vec<RuleView>,
}

fn accounts(node: &Node, consumer: &str) -> Result<Vec<BankAccountView>, ApiError> {
    let ids = node
        .engine
        .bank_accounts(consumer)?
        .ok_or_else(|| ApiError::not_found("unknown_consumer", "the account no longer exists"))?;
    ids.into_iter()
        .enumerate()
        .map(|(i, id)| {
            let number = node.engine.real_bank_account(&id)?;
            Ok(BankAccountView {
                id,
                account: mask(&number),
                designated: i == 0,
            })
        })
        .collect()
}

/// The longest list of rules shown (a consumer's rules are few).
const MAX_RULES: usize = 100;

fn rules(node: &Node, consumer: &str) -> Result<Vec<RuleView>, ApiError> {
    let prefix = records::transfer_rules_prefix(consumer);
    let mut out = Vec::new();
    for (key, rule) in node.store.scan::<TransferRule>(&prefix, None, MAX_RULES)? {
        let id = records::unseg(key.strip_prefix(&prefix).unwrap_or(&key));
        out.push(RuleView { id, rule });
    }
    Ok(out)
}

pub async fn list(req: HttpRequest, node: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    let consumer = consumer_of(&node, &req)?;
    let accounts = accounts(&node, &consumer)?;
    let rules_ = node.engine.rules();
    let auto_top_up = AutoTopUp {
        from: accounts.first().map(|a| a.id.clone()).unwrap_or_default(),
        threshold: rules_.topup_threshold.to_string(),
        cap: rules_.wallet_cap.to_string(),
    };
    Ok(HttpResponse::Ok().json(BankAccounts {
        accounts,
        auto_top_up,
        transfer_rules: rules(&node, &consumer)?,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkBody {
    pub account: String,
}

/// `POST`: links another account; 201 with its id. Linking one the consumer has already is
/// the same answer; another consumer's is a conflict.
pub async fn link(
    req: HttpRequest,
    node: web::Data<Node>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let consumer = consumer_of(&node, &req)?;
    let (idem, body) = begin_idempotent!(node, req, payload, format!("c:{consumer}"));
    let b: LinkBody = match parse_json(&body) {
        Ok(b) => b,
        Err(e) => return idem.finish(Reply::error(&e)).await,
    };
    let reply = match node
        .engine
        .link_bank(&consumer, &b.account, node.now())
        .await?
    {
        Ok(id) => {
            let designated = node
                .engine
                .bank_accounts(&consumer)?
                .and_then(|a| a.into_iter().next())
                .is_some_and(|d| d == id);
            Reply::new(
                StatusCode::CREATED,
                &BankAccountView {
                    id,
                    account: mask(&b.account),
                    designated,
                },
            )
        }
        Err(r) => Reply::error(&ApiError::refusal(&r)),
    };
    idem.finish(reply).await
}

/// `POST …/{bank}/designate`: top-ups come from this account from now on.
pub async fn designate(
    req: HttpRequest,
    node: web::Data<Node>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let consumer = consumer_of(&node, &req)?;
    let (idem, _body) = begin_idempotent!(node, req, payload, format!("c:{consumer}"));
    let bank = path.into_inner();
    let reply = match node
        .engine
        .designate_bank(&consumer, &bank, node.now())
        .await?
    {
        Ok(_) => Reply::new(StatusCode::OK, &accounts(&node, &consumer)?),
        Err(r) => Reply::error(&ApiError::refusal(&r)),
    };
    idem.finish(reply).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferBody {
    pub from: String,
    /// Another account's id, or `wallet`.
    pub to: String,
    pub amount: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TransferView {
    /// The engine's id of the transfer.
    pub id: String,
    pub from: String,
    pub to: String,
    pub amount: String,
    pub currency: String,
}

fn parse_amount(text: &str) -> Result<Amount, ApiError> {
    match Amount::parse_positive(text) {
        Ok(a) if a.cents() <= MAX_ORDER_CENTS => Ok(a),
        Ok(_) => Err(ApiError::invalid("amount: at most 9999999999999999.99")),
        Err(e) => Err(ApiError::invalid(format!("amount: {e}"))),
    }
}

/// `POST /v1/consumer/transfers` (Idempotency-Key required: the transfer's id comes from it).
pub async fn transfer(
    req: HttpRequest,
    node: web::Data<Node>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let consumer = consumer_of(&node, &req)?;
    let (idem, body) = begin_idempotent!(node, req, payload, format!("c:{consumer}"));
    let Some(key) = idem.key().map(str::to_string) else {
        return Err(key_required("a transfer"));
    };
    let b: TransferBody = match parse_json(&body) {
        Ok(b) => b,
        Err(e) => return idem.finish(Reply::error(&e)).await,
    };
    let amount = match parse_amount(&b.amount) {
        Ok(a) => a,
        Err(e) => return idem.finish(Reply::error(&e)).await,
    };
    let id = transfers::request_transfer_id(&consumer, &key);
    let reply = match transfers::transfer(&node, &id, &consumer, &b.from, &b.to, amount).await? {
        Ok(_) => Reply::new(
            StatusCode::CREATED,
            &TransferView {
                id,
                from: b.from,
                to: b.to,
                amount: amount.to_string(),
                currency: node.currency.clone(),
            },
        ),
        Err(r) => Reply::error(&ApiError::refusal(&r)),
    };
    node.outbox_wake.notify_one();
    idem.finish(reply).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleBody {
    pub from: String,
    pub to: String,
    pub amount: String,
    pub day: u8,
    /// When it runs first (unix seconds); by default the next `day` of a month. Its later
    /// runs are on `day` of every month after it.
    #[serde(default)]
    pub first_run: Option<u64>,
}

/// A rule's id in the path: 1 to 64 of `A-Za-z0-9._-`.
fn check_rule_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "a rule's id is 1 to 64 letters, digits, '.', '_' or '-'",
        ))
    }
}

/// `PUT /v1/consumer/transfer-rules/{rule}`: sets a standing rule (replacing one of that id).
pub async fn put_rule(
    req: HttpRequest,
    node: web::Data<Node>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let consumer = consumer_of(&node, &req)?;
    let (idem, body) = begin_idempotent!(node, req, payload, format!("c:{consumer}"));
    let name = path.into_inner();
    let checked = (|| {
        check_rule_id(&name)?;
        let b: RuleBody = parse_json(&body)?;
        let first_run = b.first_run;
        let rule = TransferRule {
            from: b.from,
            to: b.to,
            amount: parse_amount(&b.amount)?,
            day: b.day,
            last_run: None,
            next_due: 0,
        };
        transfers::check_rule(&rule).map_err(ApiError::invalid)?;
        let mine = accounts(&node, &consumer)?;
        let known = |id: &str| mine.iter().any(|a| a.id == id);
        if !known(&rule.from) || !(rule.to == WALLET || known(&rule.to)) {
            return Err(ApiError::not_found(
                "unknown_bank_account",
                "from must be one of your bank accounts' ids, and to another or \"wallet\"",
            ));
        }
        Ok((rule, first_run))
    })();
    let (rule, first_run) = match checked {
        Ok(r) => r,
        Err(e) => return idem.finish(Reply::error(&e)).await,
    };
    let key = records::transfer_rule_key(&consumer, &name);
    let before = node.store.get::<TransferRule>(&key)?;
    let (rule, writes) = transfers::store_rule(
        &consumer,
        &name,
        rule,
        before.as_ref(),
        first_run,
        node.now(),
    );
    let view = RuleView { id: name, rule };
    idem.finish(Reply::new(StatusCode::OK, &view).with_writes(writes))
        .await
}

/// `DELETE /v1/consumer/transfer-rules/{rule}`: the rule runs no more. 404 if there is none
/// (a repeat with the same Idempotency-Key gets the first answer).
pub async fn delete_rule(
    req: HttpRequest,
    node: web::Data<Node>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let consumer = consumer_of(&node, &req)?;
    let (idem, _body) = begin_idempotent!(node, req, payload, format!("c:{consumer}"));
    let name = path.into_inner();
    let key = records::transfer_rule_key(&consumer, &name);
    let Some(rule) = node.store.get::<TransferRule>(&key)? else {
        let e = ApiError::not_found(
            "unknown_transfer_rule",
            format!("no transfer rule {name:?}"),
        );
        return idem.finish(Reply::error(&e)).await;
    };
    let writes = vec![
        store::remove(key),
        store::remove(records::transfer_due_key(rule.next_due, &consumer, &name)),
    ];
    let gone = serde_json::json!({ "deleted": name });
    idem.finish(Reply::new(StatusCode::OK, &gone).with_writes(writes))
        .await
}
