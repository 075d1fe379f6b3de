//! The consumer's pages: the virtual account's orders with their actions, the wallet.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;
use onecard_engine::query::OrderSummary;
use onecard_engine::{Amount, CommandResult, Release};
use onecard_protocol::mask_card_number as mask;
use serde::Deserialize;

use super::{csrf_ok, fault, forbidden, message, render, see_other, session_of};
use crate::api::consumer::own_order;
use crate::pages::ConsumerSession;
use crate::state::Node;

/// Registers the consumer's pages.
pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/web/account", web::get().to(account))
        .route(
            "/web/orders/{order}/receipt",
            web::post().to(confirm_receipt),
        )
        .route("/web/orders/{order}/code", web::post().to(enter_code));
}

/// An open order as the page shows it.
struct OrderRow {
    id: String,
    merchant: String,
    amount: String,
    state: String,
    release: String,
    /// Which actions the page offers.
    receipt: bool,
    code: bool,
}

impl OrderRow {
    fn of(node: &Node, o: &OrderSummary) -> OrderRow {
        let open = matches!(o.state.as_str(), "pending" | "disputed");
        OrderRow {
            id: o.id.clone(),
            // The merchant's name as it registered it (the id for one the node does not know).
            merchant: node
                .merchants
                .get(&o.merchant)
                .map_or_else(|| o.merchant.clone(), |m| m.name.clone()),
            amount: o.amount.to_string(),
            state: o.state.as_str().to_string(),
            release: crate::workers::release_words(&o.release),
            receipt: open && matches!(o.release, Release::Receipt),
            code: open && matches!(o.release, Release::Code(_)),
        }
    }
}

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    consumer: String,
    currency: String,
    csrf: String,
    credit_limit: String,
    reserved: String,
    available_credit: String,
    wallet: String,
    wallet_cap: String,
    /// The wallet's bar: its width in the gauge's 300 units, and the gauge's ticks.
    wallet_width: u32,
    bank_account: String,
    orders: Vec<OrderRow>,
    bills: Vec<super::bills::BillRow>,
    autopay: Vec<super::bills::RuleRow>,
    notice: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Notice {
    done: Option<String>,
}

async fn account(
    node: web::Data<Node>,
    req: HttpRequest,
    query: web::Query<Notice>,
) -> HttpResponse {
    let session = match session_of(&node, &req) {
        Ok(Some(s)) => s,
        Ok(None) => return see_other("/web/sign-in"),
        Err(e) => return fault(e),
    };
    let summary = match node.engine.account_summary(&session.consumer).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return message(
                StatusCode::NOT_FOUND,
                "No account",
                "This account no longer exists.",
            )
        }
        Err(e) => return fault(e),
    };
    let bank = match node.engine.bank_account_of(&session.consumer) {
        Ok(b) => b.unwrap_or_else(|| summary.bank.clone()),
        Err(e) => return fault(e),
    };
    let cap = node.engine.rules().wallet_cap;
    let available = if summary.available_credit.is_negative() {
        Amount::ZERO
    } else {
        summary.available_credit
    };
    let notice = query.done.as_deref().and_then(|d| match d {
        "settled" => Some("Thank you: the money was released to the merchant.".to_string()),
        "disputed" => Some("The order is disputed: the money stays reserved.".to_string()),
        "awaiting_funds" => {
            Some("Released: the payment waits for funds from your bank account.".to_string())
        }
        "bill_approved" => Some("The bill is being paid.".to_string()),
        "bill_declined" => Some("The bill is declined: nothing is paid.".to_string()),
        _ => None,
    });
    let (bills, autopay) = match super::bills::of(&node, &session.consumer).await {
        Ok(b) => b,
        Err(e) => return fault(e),
    };
    let page = AccountPage {
        consumer: session.consumer.clone(),
        currency: node.currency.clone(),
        csrf: session.csrf.clone(),
        credit_limit: summary.credit_limit.to_string(),
        reserved: summary.reserved.to_string(),
        available_credit: available.to_string(),
        wallet: summary.wallet.to_string(),
        wallet_cap: cap.to_string(),
        wallet_width: super::chart::share(summary.wallet, cap, 300),
        bank_account: mask(&bank),
        orders: summary
            .open_orders
            .iter()
            .map(|o| OrderRow::of(&node, o))
            .collect(),
        bills,
        autopay,
        notice,
    };
    render(StatusCode::OK, &page)
}

#[derive(Debug, Deserialize)]
struct ReceiptForm {
    csrf: String,
    /// `yes`: received and satisfied (the money is released); `no`: disputed.
    satisfied: String,
}

#[derive(Debug, Deserialize)]
struct CodeForm {
    csrf: String,
    code: String,
}

/// The signed-in consumer's own open order, with the form's token checked.
async fn acting_on(
    node: &Node,
    req: &HttpRequest,
    order: &str,
    csrf: Option<&str>,
) -> Result<ConsumerSession, HttpResponse> {
    let session = match session_of(node, req) {
        Ok(Some(s)) => s,
        Ok(None) => return Err(see_other("/web/sign-in")),
        Err(e) => return Err(fault(e)),
    };
    if !csrf.is_some_and(|c| csrf_ok(&session, c)) {
        return Err(forbidden());
    }
    if own_order(node, &session.consumer, order).await.is_err() {
        return Err(message(
            StatusCode::NOT_FOUND,
            "No such order",
            "You have no order with this id.",
        ));
    }
    Ok(session)
}

fn after(result: CommandResult) -> HttpResponse {
    match result {
        Ok(outcome) => see_other(&format!("/web/account?done={}", outcome.as_str())),
        Err(refusal) => message(
            StatusCode::CONFLICT,
            "Not done",
            &format!("The node refused: {}", refusal.message),
        ),
    }
}

async fn confirm_receipt(
    node: web::Data<Node>,
    req: HttpRequest,
    path: web::Path<String>,
    form: Option<web::Form<ReceiptForm>>,
) -> HttpResponse {
    let order = path.into_inner();
    let form = form.map(|f| f.into_inner());
    if let Err(r) = acting_on(&node, &req, &order, form.as_ref().map(|f| f.csrf.as_str())).await {
        return r;
    }
    let satisfied = match form.as_ref().map(|f| f.satisfied.as_str()) {
        Some("yes") => true,
        Some("no") => false,
        _ => {
            return message(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Not done",
                "Say whether you received the goods and are satisfied.",
            )
        }
    };
    match node
        .engine
        .confirm_receipt(&order, satisfied, node.now())
        .await
    {
        Ok(r) => {
            node.outbox_wake.notify_one();
            after(r)
        }
        Err(e) => fault(e),
    }
}

async fn enter_code(
    node: web::Data<Node>,
    req: HttpRequest,
    path: web::Path<String>,
    form: Option<web::Form<CodeForm>>,
) -> HttpResponse {
    let order = path.into_inner();
    let form = form.map(|f| f.into_inner());
    if let Err(r) = acting_on(&node, &req, &order, form.as_ref().map(|f| f.csrf.as_str())).await {
        return r;
    }
    let code = form.map(|f| f.code).unwrap_or_default();
    match node
        .engine
        .enter_code(&order, code.trim(), node.now())
        .await
    {
        Ok(r) => {
            node.outbox_wake.notify_one();
            after(r)
        }
        Err(e) => fault(e),
    }
}
