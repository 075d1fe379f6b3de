//! The consumer's wallet (the settlement account): its balance drawn against the cap, and its
//! history from the consumer's statement — what the wallet paid, the top-ups from the bank
//! account (and those the bank refused), credits with their split between wallet and bank
//! (the overflow above the cap), refunds and transfers — oldest first, a page at a time.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;
use onecard_protocol::mask_card_number as mask;
use serde::Deserialize;

use super::chart::share;
use super::{fault, message, render, see_other, session_of};
use crate::records::{self, StatementLine};
use crate::state::Node;

/// Lines per page.
const PAGE: usize = 50;
/// The statement events that move the wallet or say why it did not move.
const WALLET_EVENTS: [&str; 6] = [
    "order.settled",
    "wallet.topped_up",
    "wallet.top_up_refused",
    "account.credited",
    "order.refunded",
    "bank.transferred",
];

pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/web/wallet", web::get().to(wallet));
}

struct Line {
    at: String,
    what: String,
    amount: String,
    detail: String,
}

#[derive(Template)]
#[template(path = "wallet.html")]
struct WalletPage {
    consumer: String,
    csrf: String,
    currency: String,
    wallet: String,
    wallet_cap: String,
    wallet_width: u32,
    bank_account: String,
    lines: Vec<Line>,
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Paging {
    after: Option<String>,
}

fn words(event: &str) -> &'static str {
    match event {
        "order.settled" => "paid an order",
        "wallet.topped_up" => "top-up from the bank account",
        "wallet.top_up_refused" => "top-up refused by the bank",
        "account.credited" => "credited",
        "order.refunded" => "refund",
        "bank.transferred" => "transfer between bank accounts",
        _ => "other",
    }
}

fn when(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .map_or_else(String::new, |t| {
            format!("{} {:02}:{:02}", t.date(), t.hour(), t.minute())
        })
}

async fn wallet(node: web::Data<Node>, req: HttpRequest, q: web::Query<Paging>) -> HttpResponse {
    let session = match session_of(&node, &req) {
        Ok(Some(s)) => s,
        Ok(None) => return see_other("/web/sign-in"),
        Err(e) => return fault(e),
    };
    let consumer = &session.consumer;
    let summary = match node.engine.account_summary(consumer).await {
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
    let bank = match node.engine.bank_account_of(consumer) {
        Ok(b) => b.unwrap_or_else(|| summary.bank.clone()),
        Err(e) => return fault(e),
    };
    let prefix = records::statement_prefix(consumer);
    // The cursor is a key's tail: digits and slashes only.
    let after = match q.after.as_deref() {
        None => None,
        Some(a) if !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit() || b == b'/') => {
            Some(format!("{prefix}{a}"))
        }
        Some(_) => {
            return message(
                StatusCode::BAD_REQUEST,
                "No such page",
                "The page link is not valid.",
            )
        }
    };
    // Read on past lines that do not concern the wallet, up to a bound per page view.
    let mut lines = Vec::new();
    let mut cursor = after;
    let mut next = None;
    'pages: for _ in 0..20 {
        let batch = match node
            .store
            .scan_records::<StatementLine>(&prefix, cursor.as_deref(), PAGE)
        {
            Ok(b) => b,
            Err(e) => return fault(e),
        };
        let full = batch.len() == PAGE;
        for (key, l) in batch {
            cursor = Some(key.clone());
            if WALLET_EVENTS.contains(&l.event.as_str()) {
                lines.push(Line {
                    at: when(l.at),
                    what: words(&l.event).to_string(),
                    amount: l.amount.unwrap_or_default(),
                    detail: l.detail.unwrap_or_default(),
                });
                if lines.len() == PAGE {
                    next = key.get(prefix.len()..).map(str::to_string);
                    break 'pages;
                }
            }
        }
        if !full {
            break;
        }
        next = cursor
            .as_deref()
            .and_then(|k| k.get(prefix.len()..))
            .map(str::to_string);
    }
    let cap = node.engine.rules().wallet_cap;
    let page = WalletPage {
        consumer: consumer.clone(),
        csrf: session.csrf.clone(),
        currency: node.currency.clone(),
        wallet: summary.wallet.to_string(),
        wallet_cap: cap.to_string(),
        wallet_width: share(summary.wallet, cap, 300),
        bank_account: mask(&bank),
        lines,
        next,
    };
    render(StatusCode::OK, &page)
}
