//! The consumer's monthly analysis (SPEC F6) as a page: income against spending for the last
//! six months, the month's spending by category and by merchant, and the alerts its spending
//! fired, all read from the history index (`am/…`, `af/…`) the analysis follower keeps — never
//! by scanning the journal.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;
use serde::Deserialize;

use super::chart::{rows, MonthsChart, Row};
use super::{fault, message, render, see_other, session_of};
use crate::analysis::{category_of, YearMonth};
use crate::records::{self, FiredAlert, MonthAggregate};
use crate::state::Node;

/// How many months the income and spending chart shows, the month asked for last.
const MONTHS: usize = 6;
/// The most alerts a month's page lists.
const MAX_ALERTS: usize = 100;

pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/web/analysis", web::get().to(analysis));
}

#[derive(Template)]
#[template(path = "analysis.html")]
struct AnalysisPage {
    consumer: String,
    csrf: String,
    currency: String,
    month_name: String,
    previous: String,
    next: Option<String>,
    income: String,
    spending: String,
    chart: MonthsChart,
    by_category: Vec<Row>,
    by_merchant: Vec<Row>,
    alerts: Vec<FiredAlert>,
}

#[derive(Debug, Deserialize)]
struct MonthQuery {
    month: Option<String>,
}

async fn analysis(
    node: web::Data<Node>,
    req: HttpRequest,
    query: web::Query<MonthQuery>,
) -> HttpResponse {
    let session = match session_of(&node, &req) {
        Ok(Some(s)) => s,
        Ok(None) => return see_other("/web/sign-in"),
        Err(e) => return fault(e),
    };
    let this_month = YearMonth::of_unix(node.now());
    let month = match query.month.as_deref() {
        None => this_month,
        Some(m) => match YearMonth::parse(m) {
            Ok(m) => m,
            Err(e) => return message(StatusCode::BAD_REQUEST, "No such month", &e.to_string()),
        },
    };
    let consumer = &session.consumer;
    let read = |m: YearMonth| {
        node.store
            .get_record::<MonthAggregate>(&records::month_key(consumer, &m.to_string()))
            .map(Option::unwrap_or_default)
    };
    // The six months up to this one, oldest first.
    let mut months = vec![month];
    for _ in 1..MONTHS {
        let earliest = *months.last().unwrap_or(&month);
        months.push(earliest.previous());
    }
    months.reverse();
    let mut series = Vec::with_capacity(MONTHS);
    for m in &months {
        match read(*m) {
            Ok(a) => series.push((m.to_string(), a.income, a.spending)),
            Err(e) => return fault(e),
        }
    }
    let now = match read(month) {
        Ok(a) => a,
        Err(e) => return fault(e),
    };
    let alerts = match node.store.scan::<FiredAlert>(
        &records::fired_alerts_month_prefix(consumer, &month.to_string()),
        None,
        MAX_ALERTS,
    ) {
        Ok(a) => a.into_iter().map(|(_, a)| a).collect(),
        Err(e) => return fault(e),
    };
    let merchant_name = |m: &str| {
        node.merchants
            .get(m)
            .map_or_else(|| m.to_string(), |p| p.name.clone())
    };
    let next = (month < this_month).then(|| month.next().to_string());
    let page = AnalysisPage {
        consumer: consumer.clone(),
        csrf: session.csrf.clone(),
        currency: node.currency.clone(),
        month_name: month.name(),
        previous: month.previous().to_string(),
        next,
        income: now.income.to_string(),
        spending: now.spending.to_string(),
        chart: MonthsChart::new(&series),
        by_category: rows(now.by_category.clone()),
        by_merchant: rows(now.by_merchant.iter().map(|(m, a)| {
            (
                format!("{} ({})", merchant_name(m), category_of(&node, m)),
                *a,
            )
        })),
        alerts,
    };
    render(StatusCode::OK, &page)
}
