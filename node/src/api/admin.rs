//! The admin API, for the operator (the administrator's token): bank accounts at the simulated
//! bank, consumers, merchants (with their API key, webhook and printer), cards, readers, and
//! unlocking cards. Card numbers and PINs travel only in bodies, never in paths or logs (I10).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use onecard_engine::cards::NewReader;
use onecard_engine::engine::IssueCard;
use onecard_engine::{Amount, OpenConsumer};
use serde::{Deserialize, Serialize};

use super::idem::Reply;
use super::merchant::validate_text;
use super::{parse_json, require_admin, ApiError};
use crate::records::{self, BillerKind, MerchantProfile};
use crate::state::Node;
use crate::store::{self, Write};
use onecard_protocol::wire::to_hex;

macro_rules! run {
    ($node:expr, $req:expr, $payload:expr, $ty:ty) => {{
        require_admin(&$node, &$req)?;
        let (idem, body) = begin_idempotent!($node, $req, $payload, "admin");
        match parse_json::<$ty>(&body) {
            Ok(b) => (idem, b),
            Err(e) => return idem.finish(Reply::error(&e)).await,
        }
    }};
}

fn refusal_reply(r: &onecard_engine::Refusal) -> Reply {
    Reply::error(&ApiError::refusal(r))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BankAccountBody {
    pub account: String,
    pub balance: String,
}

/// Opens an account at the simulated bank the node runs with; refused (409) with a real
/// bank, whose accounts are opened at the bank.
pub async fn open_bank_account(
    req: HttpRequest,
    node: web::Data<Node>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (idem, b) = run!(node, req, payload, BankAccountBody);
    let reply = match Amount::parse_non_negative(&b.balance) {
        Err(e) => Reply::error(&ApiError::invalid(format!("balance: {e}"))),
        Ok(balance) => match validate_text("account", &b.account, 64) {
            Err(e) => Reply::error(&e),
            Ok(()) => {
                let Some(bank) = node.bank.clone() else {
                    return idem
                        .finish(Reply::error(&ApiError::conflict(
                            "real_bank",
                            "the node works with a real bank ([bank] kind = \"iso20022\"): accounts are opened at the bank, not here",
                        )))
                        .await;
                };
                let account = b.account.clone();
                let opened =
                    tokio::task::spawn_blocking(move || bank.open_account(&account, balance))
                        .await
                        .map_err(|e| ApiError::internal(e.to_string()))?;
                match opened {
                    Ok(()) => Reply::new(
                        StatusCode::CREATED,
                        &serde_json::json!({"account": mask(&b.account), "balance": balance.to_string()}),
                    ),
                    Err(e) => Reply::error(&ApiError::conflict(
                        "bank_refused",
                        e.to_string().replace(&b.account, &mask(&b.account)),
                    )),
                }
            }
        },
    };
    idem.finish(reply).await
}

fn mask(s: &str) -> String {
    onecard_protocol::mask_card_number(s)
}

pub async fn open_consumer(
    req: HttpRequest,
    node: web::Data<Node>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (idem, mut b) = run!(node, req, payload, OpenConsumer);
    let normal = |a: &str| {
        Amount::parse_non_negative(a)
            .map(|a| a.to_string())
            .unwrap_or_else(|_| a.to_string())
    };
    // Under a dynamic credit policy (SPEC F10) the consumer opens with the policy's limit:
    // `deposit_multiple` from the wallet's deposit, `card_credit_line` from the given limit
    // as the card's provisional line. The engine refuses malformed amounts itself, in its
    // order, so a value that does not parse goes to it unchanged.
    let given = Amount::parse_non_negative(&b.credit_limit);
    let deposit = Amount::parse_non_negative(&b.wallet);
    let record = match (given, deposit) {
        (Ok(given), Ok(deposit)) => {
            let (limit, record) = node
                .credit
                .open(given, deposit)
                .map_err(|e| ApiError::internal(e.to_string()))?;
            b.credit_limit = limit.to_string();
            Some(record)
        }
        _ => None,
    };
    // The record is written with the answer, under the credit lock: the credit follower
    // cannot count the consumer's first events before it exists.
    let _credit = node.credit_lock.lock().await;
    let reply = match node.engine.open_consumer(b.clone(), node.now()).await? {
        Ok(_) => Reply::new(
            StatusCode::CREATED,
            &serde_json::json!({"consumer": b.consumer, "credit_limit": normal(&b.credit_limit), "wallet": normal(&b.wallet)}),
        )
        .with_writes(
            record
                .map(|r| store::json(crate::credit::record_key(&b.consumer), &r))
                .into_iter()
                .collect(),
        ),
        Err(r) => refusal_reply(&r),
    };
    idem.finish(reply).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MerchantBody {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub bank: Option<String>,
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// `host:port`; port 9100 when only a host is given.
    #[serde(default)]
    pub printer: Option<String>,
    /// What the merchant sells (`groceries`): a lowercase word, for the consumers' spending
    /// analysis ([`crate::analysis::validate_category`]).
    #[serde(default)]
    pub category: Option<String>,
}

/// A merchant as registered, with its API key and webhook secret: shown this once (a repeat
/// of the request gets them as null; `POST /v1/admin/merchants/{id}/api-key` issues a new key).
#[derive(Debug, Serialize, Deserialize)]
pub struct MerchantCreated {
    pub id: String,
    pub name: String,
    pub api_key: Option<String>,
    pub webhook_secret: Option<String>,
    pub webhook_url: Option<String>,
    pub printer: Option<String>,
    /// A biller's kind (absent for other merchants).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<BillerKind>,
    /// True for an employer (absent for other merchants).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub employer: bool,
    pub category: Option<String>,
}

/// A category as the API checks it: 422 with the reason.
fn check_category(c: &str) -> Result<(), ApiError> {
    crate::analysis::validate_category(c).map_err(|e| ApiError::invalid(format!("category: {e}")))
}

/// The longest webhook URL, in characters.
const MAX_URL_CHARS: usize = 2048;

pub fn check_url(url: &str) -> Result<(), ApiError> {
    if (url.starts_with("http://") || url.starts_with("https://"))
        && url.chars().count() <= MAX_URL_CHARS
    {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "webhook_url must be an http:// or https:// URL of at most {MAX_URL_CHARS} characters"
        )))
    }
}

/// `host:port`, with port 9100 (the raw printing port) when none is given; resolved once to
/// check it (off the HTTP worker: a name lookup may block).
async fn check_printer(p: String) -> Result<String, ApiError> {
    let with_port = if p
        .rsplit_once(':')
        .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
    {
        p.clone()
    } else {
        format!("{p}:{}", onecard_adapters::printer::DEFAULT_PORT)
    };
    let probe = with_port.clone();
    let resolved = web::block(move || {
        use std::net::ToSocketAddrs;
        probe.to_socket_addrs().map(|mut a| a.next().is_some())
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    match resolved {
        Ok(true) => Ok(with_port),
        _ => Err(ApiError::invalid(format!(
            "printer {p:?} is not a host:port this node can resolve"
        ))),
    }
}

/// A new API key for a merchant: the key (shown once), and the writes that make it the
/// merchant's only key (its hash stored, the previous one's removed).
fn new_api_key(node: &Node, profile: &mut MerchantProfile) -> (String, Vec<Write>) {
    let api_key = format!("ock_{}", records::random_hex(24));
    let hash = records::sha256_hex(api_key.as_bytes());
    let mut writes = vec![store::json(records::api_key_hash_key(&hash), &profile.id)];
    let previous = node
        .merchants
        .get(&profile.id)
        .and_then(|m| m.api_key_sha256.clone());
    if let Some(old) = previous {
        writes.push(store::remove(records::api_key_hash_key(&old)));
    }
    profile.api_key_sha256 = Some(hash);
    writes.push(store::json(records::merchant_key(&profile.id), &*profile));
    (api_key, writes)
}

/// Makes a profile (and its key) the one the API uses, once durable.
fn install(node: &Node, profile: MerchantProfile) {
    let previous = node
        .merchants
        .get(&profile.id)
        .and_then(|m| m.api_key_sha256.clone());
    if let Some(old) = previous {
        node.api_keys.remove(&old);
    }
    if let Some(h) = &profile.api_key_sha256 {
        node.api_keys.insert(h.clone(), profile.id.clone());
    }
    node.merchants.insert(profile.id.clone(), profile);
}

pub async fn open_merchant(
    req: HttpRequest,
    node: web::Data<Node>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (idem, b) = run!(node, req, payload, MerchantBody);
    register(&node, idem, b, Role::Merchant).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillerBody {
    pub id: String,
    pub name: String,
    pub kind: BillerKind,
    #[serde(default)]
    pub bank: Option<String>,
    #[serde(default)]
    pub webhook_url: Option<String>,
}

/// Registers a biller (F7): a merchant of a kind, so that its bills are paid as orders are and
/// its balance is paid out as a merchant's. The same registration as a merchant's (API key
/// and webhook secret shown once), without a printer.
pub async fn open_biller(
    req: HttpRequest,
    node: web::Data<Node>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (idem, b) = run!(node, req, payload, BillerBody);
    let merchant = MerchantBody {
        id: b.id,
        name: b.name,
        bank: b.bank,
        webhook_url: b.webhook_url,
        printer: None,
        // A biller's category is its kind (`bill:<kind>`).
        category: None,
    };
    register(&node, idem, merchant, Role::Biller(b.kind)).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmployerBody {
    pub id: String,
    pub name: String,
    /// Required: every payroll batch is funded from it.
    pub bank: String,
    #[serde(default)]
    pub webhook_url: Option<String>,
}

/// Registers an employer (F12): a merchant of a kind, so that its balance is the engine's
/// merchant balance, funded from its bank account (`Engine::fund_merchant`) and paying
/// salaries (`CreditSource::Employer`). The same registration as a merchant's (API key and
/// webhook secret shown once), with a bank account and without a printer.
pub async fn open_employer(
    req: HttpRequest,
    node: web::Data<Node>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (idem, b) = run!(node, req, payload, EmployerBody);
    if let Err(e) = validate_text("bank", &b.bank, 64) {
        return idem.finish(Reply::error(&e)).await;
    }
    let merchant = MerchantBody {
        id: b.id,
        name: b.name,
        bank: Some(b.bank),
        webhook_url: b.webhook_url,
        printer: None,
        category: None,
    };
    register(&node, idem, merchant, Role::Employer).await
}

/// What kind of merchant is registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Merchant,
    Biller(BillerKind),
    Employer,
}

/// Registers a merchant, a biller or an employer: the profile and its API key first
/// (durable), then the engine's account.
async fn register(
    node: &Node,
    idem: super::idem::Idem<'_>,
    b: MerchantBody,
    role: Role,
) -> Result<HttpResponse, ApiError> {
    let biller = match role {
        Role::Biller(kind) => Some(kind),
        Role::Merchant | Role::Employer => None,
    };
    let employer = role == Role::Employer;
    let checked = async {
        validate_text("name", &b.name, 200)?;
        if let Some(u) = &b.webhook_url {
            check_url(u)?;
        }
        if let Some(c) = &b.category {
            check_category(c)?;
        }
        match b.printer.clone() {
            Some(p) => check_printer(p).await.map(Some),
            None => Ok(None),
        }
    };
    let printer = match checked.await {
        Ok(p) => p,
        Err(e) => return idem.finish(Reply::error(&e)).await,
    };
    let _one_at_a_time = node.merchant_admin.lock().await;
    if node.merchants.contains_key(&b.id) && node.engine.has_merchant(&b.id) {
        let r = onecard_engine::Refusal::conflict(format!("account {:?} already exists", b.id));
        return idem.finish(refusal_reply(&r)).await;
    }
    // The credentials first, durable: a merchant the engine knows always has them.
    let mut profile = MerchantProfile {
        id: b.id.clone(),
        name: b.name.clone(),
        webhook_url: b.webhook_url.clone(),
        webhook_secret: format!("whsec_{}", records::random_hex(24)),
        printer: printer.clone(),
        api_key_sha256: None,
        payout: None,
        biller,
        category: b.category.clone(),
        employer,
    };
    let (api_key, writes) = new_api_key(node, &mut profile);
    let rollback = vec![
        store::remove(records::merchant_key(&b.id)),
        store::remove(records::api_key_key(&api_key)),
    ];
    node.store.commit(writes).await?;
    let opened = node
        .engine
        .open_merchant(&b.id, b.bank.as_deref(), node.now())
        .await?;
    match opened {
        Ok(_) => {}
        // The engine has the merchant but the node had no profile for it (a registration a
        // crash interrupted before this order of writes): its credentials are issued now.
        Err(r)
            if r.kind == onecard_engine::RefusalKind::Conflict
                && node.engine.has_merchant(&b.id) =>
        {
            tracing::warn!(merchant = %b.id, "credentials issued for a merchant that had none");
        }
        Err(r) => {
            node.store.commit(rollback).await?;
            return idem.finish(refusal_reply(&r)).await;
        }
    }
    let created = MerchantCreated {
        id: b.id.clone(),
        name: b.name.clone(),
        api_key: Some(api_key),
        webhook_secret: Some(profile.webhook_secret.clone()),
        webhook_url: b.webhook_url.clone(),
        printer,
        kind: biller,
        category: b.category.clone(),
        employer,
    };
    install(node, profile);
    idem.finish(
        Reply::new(StatusCode::CREATED, &created).redacting(&["/api_key", "/webhook_secret"]),
    )
    .await
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ApiKeyIssued {
    pub id: String,
    /// Shown once; the previous key stops working now.
    pub api_key: Option<String>,
}

/// A new API key for a merchant; the previous one stops working.
pub async fn rotate_api_key(
    req: HttpRequest,
    node: web::Data<Node>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    require_admin(&node, &req)?;
    let (idem, _body) = begin_idempotent!(node, req, payload, "admin");
    let _one_at_a_time = node.merchant_admin.lock().await;
    let Some(mut profile) = node.merchants.get(path.as_str()).map(|m| m.clone()) else {
        let e = ApiError::not_found(
            "unknown_merchant",
            format!("no merchant {:?}", path.as_str()),
        );
        return idem.finish(Reply::error(&e)).await;
    };
    let (api_key, writes) = new_api_key(&node, &mut profile);
    node.store.commit(writes).await?;
    let issued = ApiKeyIssued {
        id: profile.id.clone(),
        api_key: Some(api_key),
    };
    install(&node, profile);
    idem.finish(Reply::new(StatusCode::OK, &issued).redacting(&["/api_key"]))
        .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MerchantUpdate {
    #[serde(default)]
    pub name: Option<String>,
    /// `""` removes it.
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// `""` removes it.
    #[serde(default)]
    pub printer: Option<String>,
    /// When the balance is paid out to the merchant's bank account by itself; `{}` removes it.
    #[serde(default)]
    pub payout: Option<records::PayoutPolicy>,
    /// What the merchant sells, for the spending analysis; `""` removes it (`uncategorised`).
    /// Counts from now on: what the analysis already counted stays where it was counted.
    #[serde(default)]
    pub category: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct MerchantSettings {
    pub id: String,
    pub name: String,
    pub webhook_url: Option<String>,
    pub printer: Option<String>,
    pub payout: Option<records::PayoutPolicy>,
    pub category: Option<String>,
}

pub async fn update_merchant(
    req: HttpRequest,
    node: web::Data<Node>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (idem, b) = run!(node, req, payload, MerchantUpdate);
    let printer = match b.printer.as_deref() {
        None | Some("") => None,
        Some(p) => match check_printer(p.to_string()).await {
            Ok(p) => Some(p),
            Err(e) => return idem.finish(Reply::error(&e)).await,
        },
    };
    let _one_at_a_time = node.merchant_admin.lock().await;
    let Some(mut profile) = node.merchants.get(path.as_str()).map(|m| m.clone()) else {
        let e = ApiError::not_found(
            "unknown_merchant",
            format!("no merchant {:?}", path.as_str()),
        );
        return idem.finish(Reply::error(&e)).await;
    };
    let updated = (|| {
        if let Some(n) = &b.name {
            validate_text("name", n, 200)?;
            profile.name = n.clone();
        }
        match b.webhook_url.as_deref() {
            Some("") => profile.webhook_url = None,
            Some(u) => {
                check_url(u)?;
                profile.webhook_url = Some(u.to_string());
            }
            None => {}
        }
        match b.printer.as_deref() {
            Some("") => profile.printer = None,
            Some(_) => profile.printer = printer,
            None => {}
        }
        match &b.payout {
            Some(p) if p.is_empty() => profile.payout = None,
            Some(p) => {
                if p.threshold.is_some_and(|t| !t.is_positive()) {
                    return Err(ApiError::invalid(
                        "payout.threshold must be greater than zero",
                    ));
                }
                if p.every_secs == Some(0) {
                    return Err(ApiError::invalid("payout.every_secs must be at least 1"));
                }
                profile.payout = Some(p.clone());
            }
            None => {}
        }
        match b.category.as_deref() {
            Some("") => profile.category = None,
            Some(c) => {
                check_category(c)?;
                profile.category = Some(c.to_string());
            }
            None => {}
        }
        Ok::<(), ApiError>(())
    })();
    if profile.payout.is_some() {
        let bank = node
            .engine
            .merchant(&profile.id)
            .await?
            .and_then(|m| m.bank);
        if bank.is_none() {
            let e = ApiError::invalid(format!(
                "payout: merchant {} has no bank account to pay out to",
                profile.id
            ));
            return idem.finish(Reply::error(&e)).await;
        }
    }
    if let Err(e) = updated {
        return idem.finish(Reply::error(&e)).await;
    }
    let settings = MerchantSettings {
        id: profile.id.clone(),
        name: profile.name.clone(),
        webhook_url: profile.webhook_url.clone(),
        printer: profile.printer.clone(),
        payout: profile.payout.clone(),
        category: profile.category.clone(),
    };
    let writes = vec![store::json(records::merchant_key(&profile.id), &profile)];
    let response = idem
        .finish(Reply::new(StatusCode::OK, &settings).with_writes(writes))
        .await?;
    node.merchants.insert(profile.id.clone(), profile);
    Ok(response)
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CardIssued {
    pub holder: String,
    pub card_last4: String,
    /// The card's key (hex), derived from the issuer key, for personalising the card. Not
    /// stored by the node; shown this once (null in a repeat of the request).
    pub card_key: Option<String>,
}

pub async fn issue_card(
    req: HttpRequest,
    node: web::Data<Node>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (idem, b) = run!(node, req, payload, IssueCard);
    if !node.engine.has_consumer(&b.holder)? {
        let e = ApiError::not_found(
            "unknown_consumer",
            format!("no consumer {:?} to issue the card to", b.holder),
        );
        return idem.finish(Reply::error(&e)).await;
    }
    let holder = b.holder.clone();
    let last4: String = b
        .number
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let number = b.number.clone();
    let reply = match node.engine.issue_card(b, node.now()).await? {
        Ok(key) => Reply::new(
            StatusCode::CREATED,
            &CardIssued {
                holder,
                card_last4: last4,
                card_key: Some(to_hex(key.as_bytes())),
            },
        )
        .redacting(&["/card_key"]),
        Err(e @ onecard_engine::cards::CardError::DuplicateCard(_)) => {
            Reply::error(&ApiError::conflict(
                "card_exists",
                e.to_string().replace(&number, &mask(&number)),
            ))
        }
        Err(e) => Reply::error(&ApiError::invalid(
            e.to_string().replace(&number, &mask(&number)),
        )),
    };
    idem.finish(reply).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardNumberBody {
    pub number: String,
}

pub async fn unlock_card(
    req: HttpRequest,
    node: web::Data<Node>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (idem, b) = run!(node, req, payload, CardNumberBody);
    let reply = match node.engine.unlock_card(&b.number, node.now()).await? {
        Ok(()) => Reply::new(
            StatusCode::OK,
            &serde_json::json!({"card": mask(&b.number), "status": "active"}),
        ),
        Err(e @ onecard_engine::cards::CardError::UnknownCard(_)) => {
            Reply::error(&ApiError::not_found(
                "unknown_card",
                e.to_string().replace(&b.number, &mask(&b.number)),
            ))
        }
        Err(e) => Reply::error(&ApiError::conflict(
            "card_refused",
            e.to_string().replace(&b.number, &mask(&b.number)),
        )),
    };
    idem.finish(reply).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReaderBody {
    pub id: String,
    pub owner: String,
    pub card_number: String,
    pub account: String,
    /// The address or subnet the reader connects from (`127.0.0.1`, `10.0.0.0/24`).
    pub network: String,
}

pub async fn register_reader(
    req: HttpRequest,
    node: web::Data<Node>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (idem, b) = run!(node, req, payload, ReaderBody);
    // Ids end up in the security log: no control characters (the engine bounds their length).
    for (field, value) in [("id", &b.id), ("owner", &b.owner)] {
        if value.chars().any(char::is_control) {
            let e = ApiError::invalid(format!("{field} must not contain control characters"));
            return idem.finish(Reply::error(&e)).await;
        }
    }
    let network = match b.network.parse::<ipnet::IpNet>().or_else(|_| {
        b.network
            .parse::<std::net::IpAddr>()
            .map(ipnet::IpNet::from)
    }) {
        Ok(n) => n,
        Err(_) => {
            let e = ApiError::invalid("network must be an IP address or a subnet (a.b.c.d/n)");
            return idem.finish(Reply::error(&e)).await;
        }
    };
    let masked = mask(&b.card_number);
    let reader = NewReader {
        id: b.id.clone(),
        owner: b.owner.clone(),
        card_number: b.card_number.clone(),
        account: b.account.clone(),
        network,
    };
    let reply = match node.engine.register_reader(reader, node.now()).await? {
        Ok(()) => Reply::new(
            StatusCode::CREATED,
            &serde_json::json!({"id": b.id, "card": masked, "account": b.account, "network": network.to_string()}),
        ),
        // A field the engine finds empty or too long is the body's fault, not a conflict.
        Err(e @ onecard_engine::cards::CardError::InvalidField { .. }) => {
            Reply::error(&ApiError::invalid(e.to_string()))
        }
        Err(e) => Reply::error(&ApiError::conflict(
            "reader_refused",
            e.to_string().replace(&b.card_number, &masked),
        )),
    };
    idem.finish(reply).await
}

/// The bank the node works with: its kind, and with a real bank the adapter's counters and the
/// operations whose outcome is still unknown (resolved in the background; the oldest first).
pub async fn bank_status(
    req: HttpRequest,
    node: web::Data<Node>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&node, &req)?;
    let body = match &node.bank_adapter {
        None => serde_json::json!({"kind": "simulated"}),
        Some(bank) => {
            let s = bank.stats();
            let n = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
            let unresolved = bank.unresolved();
            serde_json::json!({
                "kind": "iso20022",
                "endpoint": bank.settings().endpoint,
                "messages": n(&s.messages),
                "resends": n(&s.resends),
                "status_queries": n(&s.status_queries),
                "unknown_outcomes": n(&s.unknown_outcomes),
                "reversals": n(&s.reversals),
                "notifications": n(&s.notifications),
                "notification_duplicates": n(&s.notification_duplicates),
                "notifications_out_of_order": n(&s.notifications_out_of_order),
                "notification_mismatches": n(&s.notification_mismatches),
                "unresolved_alert_secs": bank.settings().unresolved_alert.as_secs(),
                "unresolved": unresolved,
            })
        }
    };
    Ok(HttpResponse::Ok().json(body))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileBody {
    /// `YYYY-MM-DD` (UTC); today when absent.
    #[serde(default)]
    pub date: Option<String>,
}

/// Reconciliation: fetches the bank's camt.053 statement of the settlement center's own account
/// for the day and matches it against the journal's bank operations. Changes nothing; the
/// report lists every mismatch (`onecard reconcile` does the same from a file).
pub async fn reconcile(
    req: HttpRequest,
    node: web::Data<Node>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (idem, b) = run!(node, req, payload, ReconcileBody);
    let Some(bank) = node.bank_adapter.clone() else {
        return idem
            .finish(Reply::error(&ApiError::conflict(
                "simulated_bank",
                "the node works with the simulated bank, which keeps no statements: reconciliation is for a real bank ([bank] kind = \"iso20022\")",
            )))
            .await;
    };
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let date = match &b.date {
        None => time::OffsetDateTime::now_utc().date(),
        Some(d) => match time::Date::parse(d, &format) {
            Ok(d) => d,
            Err(_) => {
                return idem
                    .finish(Reply::error(&ApiError::invalid(format!(
                        "date: {d:?} is not a date YYYY-MM-DD"
                    ))))
                    .await
            }
        },
    };
    let engine = node.engine.clone();
    let done = tokio::task::spawn_blocking(move || {
        let statement = bank.statement(date)?;
        let ops = engine
            .bank_operations()
            .map_err(|e| onecard_engine::bank::BankError::Storage(e.to_string()))?;
        Ok::<_, onecard_engine::bank::BankError>(onecard_adapters::iso20022::reconcile::reconcile(
            &ops, &statement,
        ))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let reply = match done {
        Ok(report) => Reply::new(StatusCode::OK, &report),
        Err(onecard_engine::bank::BankError::Storage(e)) => Reply::error(&ApiError::internal(e)),
        Err(e) => Reply::error(&ApiError::new(
            StatusCode::BAD_GATEWAY,
            "bank_unavailable",
            format!("the bank's statement of {date}: {e}"),
        )),
    };
    idem.finish(reply).await
}
