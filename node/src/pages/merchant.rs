//! The merchant's pages: sign-in with the API key, the order board (the merchant's own orders
//! grouped by where they are, with the delivery slip's print status and a reprint), the
//! balance and its payouts to the bank.
//!
//! A merchant sees only its own orders: the board reads the merchant's order index
//! (`mo/<merchant>/…`) and a reprint goes through [`own_checkout`], as the API's does. No
//! consumer data is shown (F22), and the bank account only masked.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;
use onecard_engine::Amount;
use onecard_protocol::mask_card_number as mask;
use serde::Deserialize;

use super::{
    csrf_ok, fault, forbidden, key_sign_in_page, message, open_session, render, see_other,
    signed_in, CsrfForm,
};
use crate::api::merchant::own_checkout;
use crate::app::{order_view, OrderView};
use crate::records::{self, Checkout, MerchantPayout, WebParty, WebSession};
use crate::state::Node;

/// Orders on one page of the board.
const PAGE: usize = 100;
/// Payouts listed.
const PAYOUTS_SHOWN: usize = 20;
/// Orders counted to find the last page; a merchant with more starts at its oldest.
const COUNT_CAP: usize = 200_000;

/// Registers the merchant's pages.
pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/web/merchant/sign-in", web::get().to(sign_in_page))
        .route("/web/merchant/sign-in", web::post().to(sign_in))
        .route("/web/merchant", web::get().to(board))
        .route(
            "/web/merchant/orders/{order}/reprint",
            web::post().to(reprint),
        )
        .route(
            "/web/merchant/orders/{order}/shipped",
            web::post().to(mark_shipped),
        )
        .route("/web/merchant/payouts", web::post().to(pay_out));
}

async fn sign_in_page() -> HttpResponse {
    key_sign_in_page(StatusCode::OK, WebParty::Merchant, None)
}

#[derive(Debug, Deserialize)]
struct KeyForm {
    api_key: String,
}

async fn sign_in(
    node: web::Data<Node>,
    req: HttpRequest,
    form: Option<web::Form<KeyForm>>,
) -> HttpResponse {
    let key = form.map(|f| f.into_inner().api_key).unwrap_or_default();
    let key = key.trim();
    // The API's own lookup: the same keys open the same merchant.
    let Some(merchant) = (!key.is_empty())
        .then(|| crate::api::merchant_of_key(&node, key))
        .flatten()
    else {
        return key_sign_in_page(
            StatusCode::UNAUTHORIZED,
            WebParty::Merchant,
            Some("This API key opens no merchant's pages."),
        );
    };
    let key_hash = records::sha256_hex(key.as_bytes());
    open_session(
        &node,
        &req,
        WebParty::Merchant,
        merchant,
        |_| Some(key_hash),
        Vec::new(),
    )
    .await
}

/// Where an order is on the board.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    /// Not paid yet, or paid and its slip not printed yet (or nothing to print).
    New,
    /// Paid, its delivery slip printed, the money still reserved.
    Printed,
    /// Paid and marked shipped by the merchant, the money still reserved.
    Shipped,
    /// The consumer disputes it: the money stays reserved.
    Disputed,
    Settled,
    /// Some or all of it refunded.
    Refunded,
    /// Cancelled, expired unpaid, or refused at payment.
    Closed,
}

impl Group {
    const ALL: [Group; 7] = [
        Group::New,
        Group::Printed,
        Group::Shipped,
        Group::Disputed,
        Group::Settled,
        Group::Refunded,
        Group::Closed,
    ];

    fn id(self) -> &'static str {
        match self {
            Group::New => "new",
            Group::Printed => "printed",
            Group::Shipped => "shipped",
            Group::Disputed => "disputed",
            Group::Settled => "settled",
            Group::Refunded => "refunded",
            Group::Closed => "closed",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Group::New => "New",
            Group::Printed => "Printed",
            Group::Shipped => "Shipped",
            Group::Disputed => "Disputed",
            Group::Settled => "Settled",
            Group::Refunded => "Refunded",
            Group::Closed => "Cancelled, expired or refused",
        }
    }

    /// The group of an order as the merchant sees it.
    fn of(o: &OrderView) -> Group {
        let refunded = Amount::parse(&o.refunded).is_ok_and(|a| a.is_positive());
        match o.state.as_str() {
            _ if refunded => Group::Refunded,
            "settled" => Group::Settled,
            "disputed" => Group::Disputed,
            "pending" | "awaiting_funds" if o.shipped_at.is_some() => Group::Shipped,
            "pending" | "awaiting_funds" if o.print.status == "printed" => Group::Printed,
            "awaiting_payment" | "pending" | "awaiting_funds" => Group::New,
            _ => Group::Closed,
        }
    }
}

/// An order's row.
struct Row {
    id: String,
    reference: String,
    created: String,
    amount: String,
    state: String,
    refunded: Option<String>,
    /// The print status as stored (`printed`, `queued`, …), and in words.
    print: String,
    print_words: String,
    reprint: bool,
    /// Paid, the money reserved, not marked shipped yet.
    ship: bool,
}

impl Row {
    fn of(o: &OrderView) -> Row {
        let p = &o.print;
        let print_words = match p.status.as_str() {
            "not_applicable" => "digital: nothing to print".to_string(),
            "no_printer" => "no printer configured".to_string(),
            "waiting_for_payment" => "prints once paid".to_string(),
            "queued" => match (p.attempts.unwrap_or(0), &p.last_error) {
                (0, _) => "queued".to_string(),
                (n, Some(e)) => format!("queued, {n} attempt(s): {e}"),
                (n, None) => format!("queued, {n} attempt(s)"),
            },
            "printed" => {
                let at = p.printed_at.map(time_of).unwrap_or_default();
                match p.reprints.unwrap_or(0) {
                    0 => format!("printed {at}"),
                    n => format!("printed {at}, reprinted {n}×"),
                }
            }
            other => other.to_string(),
        };
        let refunded = Amount::parse(&o.refunded)
            .ok()
            .filter(|a| a.is_positive())
            .map(|a| a.to_string());
        Row {
            id: o.id.clone(),
            reference: o.reference.clone().unwrap_or_default(),
            created: time_of(o.created_at),
            amount: o.amount.clone(),
            state: o.state.clone(),
            refunded,
            print: p.status.clone(),
            print_words,
            reprint: p.status == "printed",
            ship: matches!(o.state.as_str(), "pending" | "awaiting_funds")
                && o.shipped_at.is_none(),
        }
    }
}

/// Unix seconds as `YYYY-MM-DD HH:MM` UTC.
pub(super) fn time_of(secs: u64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| secs.to_string())
}

struct GroupView {
    id: &'static str,
    title: &'static str,
    rows: Vec<Row>,
}

struct PayoutRow {
    payout: String,
    at: String,
    amount: String,
    refused: Option<String>,
}

#[derive(Template)]
#[template(path = "merchant_board.html")]
struct BoardPage {
    merchant: String,
    name: String,
    currency: String,
    csrf: String,
    balance: String,
    free: String,
    bank: Option<String>,
    can_pay_out: bool,
    groups: Vec<GroupView>,
    /// This page's orders: the first and last position (from 1), of `total`.
    first: usize,
    last: usize,
    total: usize,
    /// More orders than were counted ([`COUNT_CAP`]): the board starts at the oldest.
    total_capped: bool,
    older: Option<usize>,
    newer: Option<usize>,
    payouts: Vec<PayoutRow>,
    notice: Option<String>,
}

#[derive(Debug, Deserialize)]
struct BoardQuery {
    /// The page (from 0, oldest first); the newest page when absent.
    page: Option<usize>,
    done: Option<String>,
}

/// The merchant's live session; the answer to send instead without one (a redirect to the
/// sign-in page).
fn merchant_session(node: &Node, req: &HttpRequest) -> Result<WebSession, Box<HttpResponse>> {
    match signed_in(node, req, WebParty::Merchant) {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(Box::new(see_other("/web/merchant/sign-in"))),
        Err(e) => Err(Box::new(fault(e))),
    }
}

async fn board(
    node: web::Data<Node>,
    req: HttpRequest,
    query: web::Query<BoardQuery>,
) -> HttpResponse {
    let session = match merchant_session(&node, &req) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let merchant = session.id.clone();
    let state = match node.engine.merchant(&merchant).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return message(
                StatusCode::NOT_FOUND,
                "No account",
                "This merchant's account no longer exists.",
            )
        }
        Err(e) => return fault(e),
    };
    let free = node
        .engine
        .merchant_free_balance(&merchant)
        .unwrap_or(Amount::ZERO);
    let bank = match node.engine.merchant_bank_account_of(&merchant) {
        Ok(b) => b.map(|b| mask(&b)),
        Err(e) => return fault(e),
    };
    let name = node
        .merchants
        .get(&merchant)
        .map(|m| m.name.clone())
        .unwrap_or_default();

    // One page of the merchant's orders, in creation order; the newest page by default.
    let prefix = records::merchant_orders_prefix(&merchant);
    let total = node.store.count_prefix(&prefix, COUNT_CAP);
    let last_page = total.saturating_sub(1) / PAGE;
    let page = query
        .page
        .unwrap_or(if total < COUNT_CAP { last_page } else { 0 })
        .min(last_page);
    let after = match page {
        0 => None,
        p => match node.store.nth_key(&prefix, p * PAGE - 1) {
            Ok(k) => k,
            Err(e) => return fault(e),
        },
    };
    let keys = match node.store.scan::<()>(&prefix, after.as_deref(), PAGE) {
        Ok(k) => k,
        Err(e) => return fault(e),
    };
    let mut groups: Vec<GroupView> = Group::ALL
        .iter()
        .map(|g| GroupView {
            id: g.id(),
            title: g.title(),
            rows: Vec::new(),
        })
        .collect();
    // Newest first within each group.
    for (key, ()) in keys.iter().rev() {
        let id = key.get(prefix.len()..).unwrap_or_default();
        let checkout = match node.checkout(id) {
            Ok(Some(c)) if c.merchant == merchant => c,
            Ok(_) => continue,
            Err(e) => return fault(e),
        };
        let view = match order_view(&node, &checkout).await {
            Ok(v) => v,
            Err(e) => return fault(e),
        };
        let g = Group::of(&view);
        if let Some(group) = groups.iter_mut().find(|x| x.id == g.id()) {
            group.rows.push(Row::of(&view));
        }
    }

    let payouts = match node.store.scan::<MerchantPayout>(
        &records::merchant_payouts_prefix(&merchant),
        None,
        PAYOUTS_SHOWN,
    ) {
        Ok(p) => p
            .into_iter()
            .map(|(_, p)| PayoutRow {
                payout: p.payout,
                at: time_of(p.at),
                amount: p.amount.to_string(),
                refused: p.refused,
            })
            .collect(),
        Err(e) => return fault(e),
    };
    let notice = query.done.as_deref().and_then(|d| match d {
        "reprint" => Some("The delivery slip is queued to print again.".to_string()),
        "shipped" => Some("The order is marked shipped.".to_string()),
        "payout" => Some("Paid out: the money is on its way to your bank account.".to_string()),
        _ => None,
    });
    let first = if keys.is_empty() { 0 } else { page * PAGE + 1 };
    let page_view = BoardPage {
        merchant,
        name,
        currency: node.currency.clone(),
        csrf: session.csrf.clone(),
        balance: state.balance.to_string(),
        free: free.to_string(),
        can_pay_out: bank.is_some() && free.is_positive(),
        bank,
        groups,
        first,
        last: page * PAGE + keys.len(),
        total,
        total_capped: total >= COUNT_CAP,
        older: page.checked_sub(1),
        newer: (page < last_page).then_some(page + 1),
        payouts,
        notice,
    };
    render(StatusCode::OK, &page_view)
}

/// The merchant's session, with the form's token checked.
fn acting(
    node: &Node,
    req: &HttpRequest,
    form: Option<&CsrfForm>,
) -> Result<WebSession, Box<HttpResponse>> {
    let session = merchant_session(node, req)?;
    if !form.is_some_and(|f| csrf_ok(&session, &f.csrf)) {
        return Err(Box::new(forbidden()));
    }
    Ok(session)
}

/// The order a form on the board acts on: the signed-in merchant's own (CSRF checked), or a
/// 404 page; another merchant's order is as if it did not exist, as in the API.
fn acted_on_order(
    node: &Node,
    req: &HttpRequest,
    form: Option<&CsrfForm>,
    order: &str,
) -> Result<std::sync::Arc<Checkout>, Box<HttpResponse>> {
    let session = acting(node, req, form)?;
    own_checkout(node, &session.id, order).map_err(|_| {
        Box::new(message(
            StatusCode::NOT_FOUND,
            "No such order",
            "You have no order with this id.",
        ))
    })
}

async fn reprint(
    node: web::Data<Node>,
    req: HttpRequest,
    path: web::Path<String>,
    form: Option<web::Form<CsrfForm>>,
) -> HttpResponse {
    let checkout = match acted_on_order(&node, &req, form.as_deref(), &path) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let writes = match crate::app::reprint(&node, &checkout.order_id) {
        Ok(Ok((_, writes))) => writes,
        Ok(Err(refused)) => {
            return message(
                StatusCode::CONFLICT,
                "Not reprinted",
                &format!("The slip cannot be printed again now: {refused}."),
            )
        }
        Err(e) => return fault(e),
    };
    if let Err(e) = node.store.commit(writes).await {
        return fault(e);
    }
    node.work_wake.notify();
    see_other("/web/merchant?done=reprint")
}

async fn mark_shipped(
    node: web::Data<Node>,
    req: HttpRequest,
    path: web::Path<String>,
    form: Option<web::Form<CsrfForm>>,
) -> HttpResponse {
    let checkout = match acted_on_order(&node, &req, form.as_deref(), &path) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let writes = match crate::app::mark_shipped(&node, &checkout).await {
        Ok(Ok((_, writes))) => writes,
        Ok(Err(refused)) => {
            return message(
                StatusCode::CONFLICT,
                "Not marked shipped",
                &format!("{refused}."),
            )
        }
        Err(e) => return fault(e),
    };
    if let Err(e) = node.store.commit(writes).await {
        return fault(e);
    }
    see_other("/web/merchant?done=shipped")
}

/// Pays the whole balance not held for a refund out to the merchant's bank account (the
/// engine's payout, as the API's). The whole balance only: a form sent twice (a double click)
/// finds nothing left the second time, rather than paying an amount twice.
async fn pay_out(
    node: web::Data<Node>,
    req: HttpRequest,
    form: Option<web::Form<CsrfForm>>,
) -> HttpResponse {
    let session = match acting(&node, &req, form.as_deref()) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    match node.engine.pay_out(&session.id, None, node.now()).await {
        Ok(Ok(_)) => {
            node.outbox_wake.notify_one();
            see_other("/web/merchant?done=payout")
        }
        Ok(Err(refusal)) => message(
            StatusCode::CONFLICT,
            "Not paid out",
            &format!("The node refused: {}", refusal.message),
        ),
        Err(e) => fault(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::PrintStatus;

    fn view(state: &str, print: &str, refunded: &str) -> OrderView {
        OrderView {
            id: "ord_1".into(),
            reference: None,
            merchant: "shop".into(),
            amount: "10.00".into(),
            currency: "EUR".into(),
            items: Vec::new(),
            delivery: records::Delivery {
                name: "A".into(),
                address: "B".into(),
                phone: "1".into(),
            },
            release: records::ReleaseJson(onecard_engine::Release::Receipt),
            digital: false,
            created_at: 0,
            state: state.into(),
            refunded: refunded.into(),
            checkout_path: String::new(),
            checkout_expires_at: 0,
            print: PrintStatus {
                status: print.into(),
                attempts: None,
                last_error: None,
                printed_at: None,
                reprints: None,
            },
            shipped_at: None,
        }
    }

    #[test]
    fn orders_go_to_the_board_by_payment_print_and_refund() {
        let g = |s, p, r| Group::of(&view(s, p, r));
        assert_eq!(
            g("awaiting_payment", "waiting_for_payment", "0.00"),
            Group::New
        );
        assert_eq!(g("pending", "queued", "0.00"), Group::New);
        assert_eq!(g("pending", "not_applicable", "0.00"), Group::New);
        assert_eq!(g("pending", "printed", "0.00"), Group::Printed);
        assert_eq!(g("awaiting_funds", "printed", "0.00"), Group::Printed);
        let shipped = |s| {
            let mut v = view(s, "printed", "0.00");
            v.shipped_at = Some(1);
            Group::of(&v)
        };
        assert_eq!(shipped("pending"), Group::Shipped);
        assert_eq!(shipped("awaiting_funds"), Group::Shipped);
        assert_eq!(shipped("settled"), Group::Settled);
        assert_eq!(g("disputed", "printed", "0.00"), Group::Disputed);
        assert_eq!(g("settled", "printed", "0.00"), Group::Settled);
        assert_eq!(g("settled", "printed", "2.50"), Group::Refunded);
        assert_eq!(g("cancelled", "no_printer", "0.00"), Group::Closed);
        assert_eq!(g("expired", "waiting_for_payment", "0.00"), Group::Closed);
        assert_eq!(g("refused", "waiting_for_payment", "0.00"), Group::Closed);
    }

    #[test]
    fn times_are_shown_in_utc() {
        assert_eq!(time_of(0), "1970-01-01 00:00 UTC");
        assert_eq!(time_of(1_700_000_000), "2023-11-14 22:13 UTC");
    }
}
