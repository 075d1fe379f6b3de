//! For operators and tools: `/healthz`, `/metrics` (Prometheus text) and `/openapi.json`.

use std::sync::atomic::Ordering;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};

use super::ApiError;
use crate::state::Node;

/// The OpenAPI document, kept in the repository (`node/openapi.json`) and served as is.
pub const OPENAPI: &str = include_str!("../../openapi.json");

pub async fn healthz(node: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    let journal_seq = node.engine.last_seq()?;
    let cursor = crate::outbox::cursor(&node)?;
    // A stopped journal (a full disk, an I/O error) takes no more commands until a restart:
    // the node is not healthy, though it still answers reads.
    let journal_failure = node.engine.journal_failure();
    let (status, word) = if node.is_stopping() {
        (StatusCode::SERVICE_UNAVAILABLE, "stopping")
    } else if journal_failure.is_some() {
        (StatusCode::SERVICE_UNAVAILABLE, "journal_stopped")
    } else {
        (StatusCode::OK, "ok")
    };
    Ok(HttpResponse::build(status).json(serde_json::json!({
        "status": word,
        "journal_failure": journal_failure,
        "journal_seq": journal_seq,
        "outbox_seq": cursor,
        "analysis_seq": node.analysis_read.load(Ordering::Acquire),
        "credit_seq": node.credit_read.load(Ordering::Acquire),
        "in_flight": node.engine.in_flight(),
    })))
}

pub async fn metrics(node: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    let j = node.engine.journal_stats();
    let records = j.records.load(Ordering::Relaxed) as f64;
    let entries = j.entries.load(Ordering::Relaxed) as f64;
    let seq = node.engine.last_seq()? as f64;
    let cursor = crate::outbox::cursor(&node)? as f64;
    let (prints, webhooks) = crate::workers::queue_depths(&node);
    let mut gauges = vec![
        (
            "onecard_journal_records_total",
            "Journal records written (one per group commit) since start.",
            records,
        ),
        (
            "onecard_journal_entries_total",
            "Journal entries written since start.",
            entries,
        ),
        (
            "onecard_journal_batch_commits",
            "Mean commits (engine entries and node record commits) per journal record since \
             start: the group commit's batch size.",
            if records > 0.0 {
                j.commits.load(Ordering::Relaxed) as f64 / records
            } else {
                0.0
            },
        ),
        (
            "onecard_journal_flushes_total",
            "Journal flushes (fsync) since start.",
            j.flushes.load(Ordering::Relaxed) as f64,
        ),
        (
            "onecard_journal_feed_from_memory_total",
            "Journal records the followers (outbox, history index, credit) took from the log \
             writer's memory since start, not read back from the log.",
            j.feed_from_memory.load(Ordering::Relaxed) as f64,
        ),
        (
            "onecard_journal_feed_from_log_total",
            "Journal records the followers read back from the log since start (those written \
             before it, or too far behind the head).",
            j.feed_from_log.load(Ordering::Relaxed) as f64,
        ),
        (
            "onecard_engine_in_flight",
            "Engine commands in progress.",
            node.engine.in_flight() as f64,
        ),
        (
            "onecard_resident_consumers",
            "Consumer actors in memory.",
            node.engine.resident_consumers() as f64,
        ),
        (
            "onecard_open_orders",
            "Orders open now in the virtual accounts (pending, awaiting funds, disputed).",
            node.engine.open_order_count() as f64,
        ),
        (
            "onecard_outbox_lag_records",
            "Journal records the outbox has not handled yet.",
            (seq - cursor).max(0.0),
        ),
        (
            "onecard_analysis_lag_records",
            "Journal records the history index (spending analysis) has not counted yet.",
            (seq - node.analysis_read.load(Ordering::Acquire) as f64).max(0.0),
        ),
        (
            "onecard_credit_lag_records",
            "Journal records the credit follower (credit scores, limit history) has not counted yet.",
            (seq - node.credit_read.load(Ordering::Acquire) as f64).max(0.0),
        ),
        (
            "onecard_print_queue_depth",
            "Delivery slips waiting to print.",
            prints as f64,
        ),
        (
            "onecard_webhook_queue_depth",
            "Webhook events waiting to be delivered.",
            webhooks as f64,
        ),
        (
            "onecard_node_store_commits_total",
            "Node record commits since start (each rides in a journal record).",
            node.store.stats.commits.load(Ordering::Relaxed) as f64,
        ),
        (
            "onecard_recharge_wrong_codes_total",
            "Wrong recharge codes presented since start (counted by the throttle).",
            node.recharge_throttle.wrong_codes.load(Ordering::Relaxed) as f64,
        ),
        (
            "onecard_recharge_throttled_total",
            "Recharge attempts refused by the throttle (429) since start.",
            node.recharge_throttle.throttled.load(Ordering::Relaxed) as f64,
        ),
        (
            "onecard_recharge_throttle_tracked",
            "Consumers and addresses with wrong recharge codes in the throttle's window.",
            node.recharge_throttle.tracked() as f64,
        ),
    ];
    if let Some(bank) = &node.bank_adapter {
        let b = bank.stats();
        let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
        gauges.extend([
            (
                "onecard_bank_messages_total",
                "ISO 20022 initiations (pain.001, pain.008) sent to the bank since start, retries not counted.",
                n(&b.messages),
            ),
            (
                "onecard_bank_resends_total",
                "Messages sent again after the bank said it never received them.",
                n(&b.resends),
            ),
            (
                "onecard_bank_status_queries_total",
                "Status queries to the bank after a lost answer or for pending operations.",
                n(&b.status_queries),
            ),
            (
                "onecard_bank_unknown_outcomes_total",
                "Bank operations answered with an unknown outcome since start.",
                n(&b.unknown_outcomes),
            ),
            (
                "onecard_bank_unresolved_operations",
                "Bank operations whose outcome is still unknown now (resolved in the background).",
                n(&b.unresolved),
            ),
            (
                "onecard_bank_unresolved_overdue_operations",
                "Of those, the ones unresolved for longer than bank.unresolved_alert_secs: operators should check them with the bank.",
                n(&b.unresolved_overdue),
            ),
            (
                "onecard_bank_reversals_total",
                "Operations the bank booked that the node never recorded, reversed.",
                n(&b.reversals),
            ),
            (
                "onecard_bank_notifications_total",
                "camt.054 notifications taken from the bank, in sequence order.",
                n(&b.notifications),
            ),
            (
                "onecard_bank_notification_mismatches_total",
                "Notified bookings that differ from the operation sent (amount or direction), or are for another account.",
                n(&b.notification_mismatches),
            ),
        ]);
    }
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(node.metrics.render(&gauges)))
}

pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}
