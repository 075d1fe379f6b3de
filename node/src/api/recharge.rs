//! Recharge (F8) over HTTP: the operator issues batches of prepaid recharge codes
//! (`POST /v1/admin/recharge-batches`, the administrator's token); a consumer redeems a code
//! into the wallet (`POST /v1/consumer/recharges`) or deposits from the designated bank
//! account (`POST /v1/consumer/deposits`), with the session.
//!
//! The codes of a batch are in the answer to the request that issued it, once, as a JSON list
//! (`codes`); the stored answer a replay gets has `codes: null`, as an API key's is. The node
//! keeps each code only as its keyed hash (`recharge.rs`), so nobody can show them again.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use onecard_engine::Amount;
use onecard_protocol::mask_card_number as mask;
use serde::{Deserialize, Serialize};

use super::idem::Reply;
use super::merchant::MAX_ORDER_CENTS;
use super::{consumer_of, parse_json, require_admin, ApiError};
use crate::recharge::{self, Code, Overflow, RedeemRefusal, Redeemed, NO_KEY};
use crate::records::{self, RechargeBatch, RechargeCode};
use crate::state::{now_ms, Node};
use crate::store::{self, Write};

/// Codes per batch, at most.
pub const MAX_BATCH: u32 = 10_000;
/// The latest expiry accepted: 9999-12-31T23:59:59Z.
const MAX_EXPIRY: u64 = 253_402_300_799;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    /// The operator's id of the batch: 1 to 128 characters, no control characters.
    pub batch_id: String,
    /// How many codes: 1 to [`MAX_BATCH`].
    pub count: u32,
    /// The value of each code.
    pub value: String,
    /// Unix seconds: the codes are refused from then on.
    pub expires_at: u64,
}

/// A batch as issued. `codes` is the list of its codes, written `XXXX-XXXX-XXXX-XXXX-XXXX`, in
/// the answer to the request that issued it only (null in a replay or a later repeat).
#[derive(Debug, Serialize, Deserialize)]
pub struct BatchIssued {
    pub batch_id: String,
    pub count: u32,
    pub value: String,
    pub currency: String,
    pub expires_at: u64,
    pub created_at: u64,
    pub codes: Option<Vec<String>>,
}

impl BatchBody {
    fn check(&self, now: u64) -> Result<Amount, ApiError> {
        if self.batch_id.is_empty()
            || self.batch_id.chars().count() > 128
            || self.batch_id.chars().any(char::is_control)
        {
            return Err(ApiError::invalid(
                "batch_id must be 1 to 128 characters with no control characters",
            ));
        }
        if self.count == 0 || self.count > MAX_BATCH {
            return Err(ApiError::invalid(format!("count must be 1 to {MAX_BATCH}")));
        }
        let value = Amount::parse_positive(&self.value)
            .map_err(|e| ApiError::invalid(format!("value: {e}")))?;
        if value.cents() > MAX_ORDER_CENTS {
            return Err(ApiError::invalid(
                "value: at most 9999999999999999.99 (16 digits before the point)",
            ));
        }
        if self.expires_at <= now || self.expires_at > MAX_EXPIRY {
            return Err(ApiError::invalid(format!(
                "expires_at must be unix seconds after now ({now}) and at most {MAX_EXPIRY}"
            )));
        }
        Ok(value)
    }
}

fn issued(node: &Node, b: &RechargeBatch, codes: Option<Vec<String>>) -> BatchIssued {
    BatchIssued {
        batch_id: b.id.clone(),
        count: b.count,
        value: b.value.to_string(),
        currency: node.currency.clone(),
        expires_at: b.expires_at,
        created_at: b.created_at,
        codes,
    }
}

/// 400 `idempotency_key_required`: not stored (there is no key to store it under).
pub(crate) fn key_required(what: &str) -> ApiError {
    ApiError::bad_request(
        "idempotency_key_required",
        format!("{what} needs an Idempotency-Key header, so that a retry does not do it twice"),
    )
}

/// 503 `not_configured`: no secret to derive the recharge key from. Not stored: the request
/// works with the same key once the node is configured.
fn no_key() -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_configured", NO_KEY)
}

/// Issues a batch of recharge codes: 201 with the codes, once. The same batch id again with
/// the same content answers the batch (200) without its codes; with other content 409
/// `batch_conflict`.
pub async fn issue_batch(
    req: HttpRequest,
    node: web::Data<Node>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    require_admin(&node, &req)?;
    let (idem, body) = begin_idempotent!(node, req, payload, "admin");
    if idem.key().is_none() {
        return Err(key_required("issuing a recharge batch"));
    }
    let b: BatchBody = match parse_json(&body) {
        Ok(b) => b,
        Err(e) => return idem.finish(Reply::error(&e)).await,
    };
    let now = node.now();
    let value = match b.check(now) {
        Ok(v) => v,
        Err(e) => return idem.finish(Reply::error(&e)).await,
    };
    let Some(key) = node.recharge_key.clone() else {
        return Err(no_key());
    };
    let _one_at_a_time = node.recharge_admin.lock().await;
    let batch_key = records::recharge_batch_key(&b.batch_id);
    if let Some(existing) = node.store.get::<RechargeBatch>(&batch_key)? {
        let same = existing.count == b.count
            && existing.value == value
            && existing.expires_at == b.expires_at;
        let reply = if same {
            Reply::new(StatusCode::OK, &issued(&node, &existing, None))
        } else {
            Reply::error(&ApiError::conflict(
                "batch_conflict",
                format!(
                    "batch {:?} was issued already with other content (count, value or expiry)",
                    b.batch_id
                ),
            ))
        };
        return idem.finish(reply).await;
    }
    let batch = RechargeBatch {
        id: b.batch_id.clone(),
        count: b.count,
        value,
        expires_at: b.expires_at,
        created_at: now,
        key_source: key.source.as_str().to_string(),
        key_check: key.check_value(),
    };
    let mut writes: Vec<Write> = Vec::with_capacity(b.count as usize + 1);
    writes.push(store::json(batch_key, &batch));
    let mut codes = Vec::with_capacity(b.count as usize);
    let mut macs = std::collections::HashSet::with_capacity(b.count as usize);
    // From the operating system's RNG, as the codes are bearer money.
    let mut rng = rand::rngs::OsRng;
    while codes.len() < b.count as usize {
        let code = Code::generate(&mut rng);
        let mac = key.code_mac(&code);
        // A repeat of 100 random bits will not happen; if it did, the code is drawn again
        // rather than two cards sharing one record.
        let code_key = records::recharge_code_key(&mac);
        if !macs.insert(mac) || node.store.get_raw(&code_key)?.is_some() {
            continue;
        }
        writes.push(store::json(
            code_key,
            &RechargeCode {
                batch: b.batch_id.clone(),
                value,
                expires_at: b.expires_at,
                redeemed: None,
            },
        ));
        codes.push(code.display());
    }
    tracing::info!(batch = %b.batch_id, count = b.count, value = %value, "recharge batch issued");
    let reply = Reply::new(StatusCode::CREATED, &issued(&node, &batch, Some(codes)))
        .redacting(&["/codes"])
        .with_writes(writes);
    idem.finish(reply).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedeemBody {
    /// The code as printed (case, dashes and spaces do not matter).
    pub code: String,
    /// Where what the wallet's cap has no room for goes: `bank` (default) or `refuse`.
    #[serde(default)]
    pub overflow: Overflow,
}

/// A redeemed code, as its consumer sees it.
#[derive(Debug, Serialize, Deserialize)]
pub struct RechargeView {
    /// The engine credit's id (`rc-` and 32 hex digits).
    pub credit: String,
    pub batch: String,
    pub value: String,
    pub currency: String,
    pub to_wallet: String,
    pub to_bank: String,
    pub redeemed_at: u64,
    /// The wallet now.
    pub wallet: String,
}

async fn wallet(node: &Node, consumer: &str) -> Result<String, ApiError> {
    Ok(node
        .engine
        .account_summary(consumer)
        .await?
        .map(|c| c.wallet.to_string())
        .unwrap_or_default())
}

fn too_many(wait: std::time::Duration) -> ApiError {
    let secs = wait.as_secs().max(1);
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_wrong_codes",
        format!(
            "too many wrong recharge codes from this account or address: try again in {secs} s"
        ),
    )
    .with_header("Retry-After", secs.to_string())
}

/// Redeems a recharge code into the consumer's wallet. In order: the throttle (429 at once,
/// nothing looked up), the code's form (422), the code: unknown 404 `invalid_code` (counted
/// as a wrong code), expired 410 `code_expired`, redeemed by someone else 409
/// `code_redeemed`; then the engine's credit (422 `refused_amount` when the cap has no room
/// and `overflow` is `refuse`: the code stays usable). A repeat by the consumer who redeemed
/// it answers the same (200) and moves nothing.
///
/// An expired code is not counted as a wrong one: whoever sends it holds a real code (an old
/// card), and counting it would lock honest consumers out without slowing a guesser, who is
/// as unlikely to hit an expired code as a live one.
pub async fn redeem(
    req: HttpRequest,
    node: web::Data<Node>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let consumer = consumer_of(&node, &req)?;
    let (idem, body) = begin_idempotent!(node, req, payload, format!("c:{consumer}"));
    let b: RedeemBody = match parse_json(&body) {
        Ok(b) => b,
        Err(e) => return idem.finish(Reply::error(&e)).await,
    };
    // The address the connection comes from (no proxy header is trusted: a client could send
    // any).
    let address = req.peer_addr().map(|a| a.ip());
    let strike = node
        .recharge_throttle
        .strike(&consumer, address, now_ms())
        .map_err(too_many)?;
    let Some(key) = node.recharge_key.as_ref() else {
        return Err(no_key());
    };
    let mac = match recharge::normalise(&b.code) {
        Ok(code) => key.code_mac(&code),
        // Not a code at all: nothing to look up, not counted (the strike is given back).
        Err(e) => {
            return idem
                .finish(Reply::error(&ApiError::invalid(format!("code: {e}"))))
                .await
        }
    };
    let reply = match recharge::redeem(&node, &consumer, &mac, b.overflow).await? {
        Ok(Redeemed {
            batch,
            value,
            redemption: r,
        }) => Reply::new(
            StatusCode::OK,
            &RechargeView {
                credit: r.credit,
                batch,
                value: value.to_string(),
                currency: node.currency.clone(),
                to_wallet: r.to_wallet.to_string(),
                to_bank: r.to_bank.to_string(),
                redeemed_at: r.at,
                wallet: wallet(&node, &consumer).await?,
            },
        ),
        Err(e @ RedeemRefusal::Invalid) => {
            strike.wrong();
            tracing::info!(%consumer, address = ?address, "wrong recharge code");
            Reply::error(&ApiError::not_found("invalid_code", e.to_string()))
        }
        Err(e @ RedeemRefusal::Expired(_)) => Reply::error(&ApiError::new(
            StatusCode::GONE,
            "code_expired",
            e.to_string(),
        )),
        Err(e @ RedeemRefusal::RedeemedByOther) => {
            Reply::error(&ApiError::conflict("code_redeemed", e.to_string()))
        }
        Err(RedeemRefusal::Engine(r)) => Reply::error(&ApiError::refusal(&r)),
    };
    idem.finish(reply).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DepositBody {
    pub amount: String,
}

/// A deposit, as its consumer sees it.
#[derive(Debug, Serialize, Deserialize)]
pub struct DepositView {
    /// The engine credit's id (`dep-` and 32 hex digits).
    pub credit: String,
    pub amount: String,
    pub currency: String,
    /// The account it came from (the designated one), masked to its last four characters.
    pub bank_account: String,
    pub at: u64,
    /// The wallet now.
    pub wallet: String,
}

/// Deposits from the consumer's designated bank account into the wallet (recharge by bank
/// transfer): all of the amount, within the cap's room (422 `refused_amount` otherwise); the
/// bank refusing is 409 `refused_funds` with its reason. Needs an `Idempotency-Key`: the
/// engine credit's id is derived from it, so a retry never moves the money twice.
///
/// "A linked bank account" is the designated account today (one per consumer); when
/// consumers link several, the body gains the account to take it from.
pub async fn deposit(
    req: HttpRequest,
    node: web::Data<Node>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let consumer = consumer_of(&node, &req)?;
    let (idem, body) = begin_idempotent!(node, req, payload, format!("c:{consumer}"));
    let Some(identity) = idem.key().map(str::to_string) else {
        return Err(key_required("a deposit"));
    };
    let b: DepositBody = match parse_json(&body) {
        Ok(b) => b,
        Err(e) => return idem.finish(Reply::error(&e)).await,
    };
    let amount = match Amount::parse_positive(&b.amount) {
        Ok(a) if a.cents() <= MAX_ORDER_CENTS => a,
        Ok(_) => {
            let e = ApiError::invalid("amount: at most 9999999999999999.99");
            return idem.finish(Reply::error(&e)).await;
        }
        Err(e) => {
            let e = ApiError::invalid(format!("amount: {e}"));
            return idem.finish(Reply::error(&e)).await;
        }
    };
    let credit = recharge::deposit_credit_id(&identity);
    let reply = match recharge::deposit(&node, &consumer, &credit, amount).await? {
        Ok(d) => {
            let bank = node.engine.bank_account_of(&consumer)?.unwrap_or_default();
            Reply::new(
                StatusCode::CREATED,
                &DepositView {
                    credit: d.credit,
                    amount: d.amount.to_string(),
                    currency: node.currency.clone(),
                    bank_account: mask(&bank),
                    at: d.at,
                    wallet: wallet(&node, &consumer).await?,
                },
            )
        }
        Err(r) => Reply::error(&ApiError::refusal(&r)),
    };
    idem.finish(reply).await
}
