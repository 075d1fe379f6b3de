//! The HTTP endpoints of docs/bank-http.md.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use onecard_adapters::iso20022::xml::MAX_MESSAGE_BYTES;
use onecard_adapters::iso20022::{Date, DateTime, Initiation};
use onecard_engine::money::Amount;
use serde::Deserialize;
use serde_json::json;

use super::faults::FaultsUpdate;
use super::state::Account;
use super::{BankError, Bulk, Initiated, Opened, Shared};

type Data = web::Data<Shared>;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::PayloadConfig::new(MAX_MESSAGE_BYTES))
        .service(web::resource("/iso20022/initiations").route(web::post().to(initiate)))
        .service(
            web::resource("/iso20022/initiations/{msg_id}/status").route(web::get().to(status)),
        )
        .service(web::resource("/iso20022/notifications").route(web::get().to(notification)))
        .service(
            web::resource("/iso20022/statements/{account}/{date}").route(web::get().to(statement)),
        )
        .service(
            web::resource("/admin/accounts")
                .route(web::post().to(open_account))
                .route(web::get().to(accounts)),
        )
        .service(web::resource("/admin/accounts/{account}").route(web::get().to(account)))
        .service(
            web::resource("/admin/accounts/{account}/close").route(web::post().to(close_account)),
        )
        .service(web::resource("/admin/totals").route(web::get().to(totals)))
        .service(
            web::resource("/admin/faults")
                .route(web::get().to(faults))
                .route(web::post().to(set_faults)),
        );
}

fn xml(body: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/xml")
        .body(body)
}

fn text(status: StatusCode, body: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/plain; charset=utf-8")
        .body(body.into())
}

fn internal(e: impl std::fmt::Display) -> HttpResponse {
    tracing::error!(error = %e, "request failed");
    text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// The `delay_ms` fault.
async fn delay(data: &Data) {
    let ms = data.faults.lock().faults.delay_ms;
    if ms > 0 {
        actix_rt::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// What the blocking part of an initiation came to.
enum Outcome {
    Malformed(String),
    Done(Initiated),
}

async fn initiate(data: Data, body: web::Bytes) -> HttpResponse {
    delay(&data).await;
    let shared = data.clone();
    // Parsing up to 16 MiB and fdatasync block: off the server's threads. Once started, the
    // booking runs to its end even if the client goes away.
    let outcome = web::block(move || -> Result<Outcome, BankError> {
        let init = match Initiation::from_xml(&body) {
            Ok(init) => init,
            Err(e) => return Ok(Outcome::Malformed(e.to_string())),
        };
        if init.transfers.is_empty() {
            return Ok(Outcome::Malformed(
                "the initiation has no transaction".into(),
            ));
        }
        if let Some(t) = init.transfers.iter().find(|t| !t.amount.is_positive()) {
            return Ok(Outcome::Malformed(format!(
                "transaction {:?}: the amount must be positive",
                t.end_to_end_id
            )));
        }
        let mut bank = shared.bank.lock();
        bank.initiate(&init, &shared.faults).map(Outcome::Done)
    })
    .await;
    match outcome {
        Err(e) => internal(e),
        Ok(Err(e)) => internal(e),
        Ok(Ok(Outcome::Malformed(reason))) => {
            tracing::info!(%reason, "malformed initiation refused");
            text(StatusCode::BAD_REQUEST, reason)
        }
        Ok(Ok(Outcome::Done(Initiated::Known(report)))) => xml(report),
        Ok(Ok(Outcome::Done(Initiated::Conflict))) => text(
            StatusCode::CONFLICT,
            "this message id was received before with other content",
        ),
        Ok(Ok(Outcome::Done(Initiated::Booked(report)))) => {
            // The `drop_after_booking` fault: booked, but the answer comes too late.
            let hang = {
                let mut f = data.faults.lock();
                (f.faults.drop_after_booking > 0).then(|| {
                    f.faults.drop_after_booking -= 1;
                    f.faults.hang_ms
                })
            };
            if let Some(ms) = hang {
                tracing::info!(
                    ms,
                    "answer to a booked initiation held back (drop_after_booking)"
                );
                actix_rt::time::sleep(Duration::from_millis(ms)).await;
            }
            xml(report)
        }
    }
}

async fn status(data: Data, msg_id: web::Path<String>) -> HttpResponse {
    delay(&data).await;
    let report = data
        .bank
        .lock()
        .state()
        .message(&msg_id)
        .map(|m| m.report_xml.clone());
    match report {
        Some(report) => xml(report),
        None => text(
            StatusCode::NOT_FOUND,
            format!("no message {:?}", msg_id.as_str()),
        ),
    }
}

#[derive(Deserialize)]
struct After {
    #[serde(default)]
    after: u64,
}

async fn notification(data: Data, query: web::Query<After>) -> HttpResponse {
    let picked = {
        let bank = data.bank.lock();
        let all = bank.state().notifications();
        let mut f = data.faults.lock();
        let f = &mut *f;
        f.serving
            .pick(&f.faults, query.after, all.len() as u64)
            .and_then(|n| all.get(usize::try_from(n).ok()?.checked_sub(1)?).cloned())
    };
    match picked {
        None => HttpResponse::NoContent().finish(),
        Some(n) => match n.to_xml() {
            Ok(body) => xml(body),
            Err(e) => internal(e),
        },
    }
}

async fn statement(data: Data, path: web::Path<(String, String)>) -> HttpResponse {
    let (account, day) = path.into_inner();
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let Ok(date) = Date::parse(&day, &format) else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("{day:?} is not a date (YYYY-MM-DD)"),
        );
    };
    let omit = data.faults.lock().faults.omit_statement_line;
    let statement = data
        .bank
        .lock()
        .state()
        .statement(&account, date, omit, DateTime::now_utc());
    match statement {
        None => text(StatusCode::NOT_FOUND, format!("no account {account:?}")),
        Some(Err(e)) => internal(e),
        Some(Ok(s)) => match s.to_xml() {
            Ok(body) => xml(body),
            Err(e) => internal(e),
        },
    }
}

fn account_json(id: &str, a: &Account) -> serde_json::Value {
    json!({"account": id, "balance": a.balance.to_string(), "closed": a.closed})
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Opening {
    account: String,
    balance: String,
}

/// An account id: what fits an ISO account (Max34Text) and a URL path segment.
fn check_account(id: &str) -> Result<(), String> {
    let ok = (1..=34).contains(&id.chars().count())
        && !id
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '?' | '#' | '%'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "account {id:?}: expected 1 to 34 characters, no spaces and none of / ? # %"
        ))
    }
}

/// `POST /admin/accounts`: one opening (an object), or a list of them (an array: a bulk
/// opening).
async fn open_account(data: Data, body: web::Bytes) -> HttpResponse {
    let bad = |e: serde_json::Error| text(StatusCode::BAD_REQUEST, format!("bad JSON body: {e}"));
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return match serde_json::from_slice::<Vec<Opening>>(&body) {
            Ok(list) => open_accounts(data, list).await,
            Err(e) => bad(e),
        };
    }
    let opening: Opening = match serde_json::from_slice(&body) {
        Ok(o) => o,
        Err(e) => return bad(e),
    };
    if let Err(e) = check_account(&opening.account) {
        return text(StatusCode::BAD_REQUEST, e);
    }
    let balance = match Amount::parse_non_negative(&opening.balance) {
        Ok(b) => b,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let shared = data.clone();
    let result = web::block(move || {
        let mut bank = shared.bank.lock();
        let opened = bank.open_account(&opening.account, balance)?;
        let now = bank
            .state()
            .account(&opening.account)
            .map(|a| account_json(&opening.account, a));
        Ok::<_, BankError>((opened, now))
    })
    .await;
    match result {
        Err(e) => internal(e),
        Ok(Err(e @ BankError::State(_))) => text(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        Ok(Err(e)) => internal(e),
        Ok(Ok((Opened::Conflict, _))) => text(
            StatusCode::CONFLICT,
            "the account exists with another opening balance",
        ),
        Ok(Ok((opened, Some(now)))) => {
            let status = if opened == Opened::Created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            HttpResponse::build(status).json(now)
        }
        Ok(Ok((_, None))) => internal("the account vanished"),
    }
}

/// A bulk opening: every account checked first, then all opened with one journal sync, or
/// none (`409` naming the account that conflicts).
async fn open_accounts(data: Data, list: Vec<Opening>) -> HttpResponse {
    let mut checked = Vec::with_capacity(list.len());
    for (i, o) in list.into_iter().enumerate() {
        if let Err(e) = check_account(&o.account) {
            return text(StatusCode::BAD_REQUEST, format!("opening {i}: {e}"));
        }
        match Amount::parse_non_negative(&o.balance) {
            Ok(b) => checked.push((o.account, b)),
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("opening {i}: {e}")),
        }
    }
    let shared = data.clone();
    let result = web::block(move || shared.bank.lock().open_accounts(&checked)).await;
    match result {
        Err(e) => internal(e),
        Ok(Err(e @ BankError::State(_))) => text(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        Ok(Err(e)) => internal(e),
        Ok(Ok(Bulk::Conflict(account))) => text(
            StatusCode::CONFLICT,
            format!(
                "account {account:?} exists (or is named twice) with another opening balance; nothing was opened"
            ),
        ),
        Ok(Ok(Bulk::Done { created, existing })) => {
            HttpResponse::Ok().json(json!({"created": created, "existing": existing}))
        }
    }
}

/// Every account with its balance, in id order, in one answer.
async fn accounts(data: Data) -> HttpResponse {
    let body = {
        let bank = data.bank.lock();
        let list: Vec<serde_json::Value> = bank
            .state()
            .accounts()
            .map(|(id, a)| account_json(id, a))
            .collect();
        json!({ "accounts": list })
    };
    HttpResponse::Ok().json(body)
}

async fn account(data: Data, id: web::Path<String>) -> HttpResponse {
    let bank = data.bank.lock();
    match bank.state().account(&id) {
        Some(a) => HttpResponse::Ok().json(account_json(&id, a)),
        None => text(
            StatusCode::NOT_FOUND,
            format!("no account {:?}", id.as_str()),
        ),
    }
}

async fn close_account(data: Data, id: web::Path<String>) -> HttpResponse {
    let shared = data.clone();
    let id = id.into_inner();
    let result = web::block(move || {
        let mut bank = shared.bank.lock();
        let found = bank.close_account(&id)?;
        let now = bank.state().account(&id).map(|a| account_json(&id, a));
        Ok::<_, BankError>((found, now, id))
    })
    .await;
    match result {
        Err(e) => internal(e),
        Ok(Err(e)) => internal(e),
        Ok(Ok((true, Some(now), _))) => HttpResponse::Ok().json(now),
        Ok(Ok((_, _, id))) => text(StatusCode::NOT_FOUND, format!("no account {id:?}")),
    }
}

async fn totals(data: Data) -> HttpResponse {
    match data.bank.lock().state().totals() {
        Ok((accounts, total, messages, bookings)) => HttpResponse::Ok().json(json!({
            "accounts": accounts,
            "total": total.to_string(),
            "messages": messages,
            "bookings": bookings,
        })),
        Err(e) => internal(e),
    }
}

async fn faults(data: Data) -> HttpResponse {
    HttpResponse::Ok().json(&data.faults.lock().faults)
}

async fn set_faults(data: Data, body: web::Bytes) -> HttpResponse {
    let update: FaultsUpdate = match serde_json::from_slice(&body) {
        Ok(u) => u,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("bad JSON body: {e}")),
    };
    let mut f = data.faults.lock();
    match f.faults.update(update) {
        Ok(()) => {
            tracing::info!(faults = ?f.faults, "faults set");
            HttpResponse::Ok().json(&f.faults)
        }
        Err(e) => text(StatusCode::BAD_REQUEST, e),
    }
}
