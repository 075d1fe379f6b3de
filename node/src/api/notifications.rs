//! A consumer's notifications: the inbox (`GET /v1/consumer/notifications`, newest first) and
//! their own webhook (`PUT /v1/consumer/notification-settings`), to which every notification
//! from then on is also sent, signed as merchants' webhooks are.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

use super::admin::check_url;
use super::bills::page;
use super::idem::Reply;
use super::{consumer_of, parse_json, ApiError};
use crate::notify::{self, Notification};
use crate::records::{self, ConsumerNotifySettings};
use crate::state::Node;
use crate::store;

#[derive(Debug, Serialize, Deserialize)]
pub struct Inbox {
    pub notifications: Vec<InboxItem>,
    /// Pass as `after` for the next (older) page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct InboxItem {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub created_at: u64,
    pub data: serde_json::Value,
}

pub async fn inbox(req: HttpRequest, node: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    let consumer = consumer_of(&node, &req)?;
    let q = page(&req, 50, 500)?;
    let limit = q.limit.unwrap_or(50);
    let prefix = records::inbox_prefix(&consumer);
    let after = q.after.as_ref().map(|a| format!("{prefix}{a}"));
    let rows = node
        .store
        .scan::<Notification>(&prefix, after.as_deref(), limit + 1)?;
    let more = rows.len() > limit;
    let mut last = None;
    let notifications = rows
        .into_iter()
        .take(limit)
        .map(|(k, n)| {
            last = Some(k.get(prefix.len()..).unwrap_or_default().to_string());
            InboxItem {
                id: n.id,
                event_type: n.event_type,
                created_at: n.created_at,
                data: n.payload,
            }
        })
        .collect();
    Ok(HttpResponse::Ok().json(Inbox {
        notifications,
        next_after: if more { last } else { None },
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsBody {
    /// An `http://` or `https://` URL; `""` or null removes it.
    #[serde(default)]
    pub webhook_url: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SettingsView {
    pub webhook_url: Option<String>,
    /// The key of the webhooks' `OneCard-Signature`: shown when it is made (the first time a
    /// URL is set), null afterwards and in a repeat of the request.
    pub webhook_secret: Option<String>,
}

pub async fn set_settings(
    req: HttpRequest,
    node: web::Data<Node>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let consumer = consumer_of(&node, &req)?;
    let (idem, body) = begin_idempotent!(node, req, payload, format!("c:{consumer}"));
    let b: SettingsBody = match parse_json(&body) {
        Ok(b) => b,
        Err(e) => return idem.finish(Reply::error(&e)).await,
    };
    let url = b.webhook_url.filter(|u| !u.is_empty());
    if let Some(u) = &url {
        if let Err(e) = check_url(u) {
            return idem.finish(Reply::error(&e)).await;
        }
    }
    let existing = notify::consumer_settings(&node, &consumer)?;
    let (secret, fresh) = match existing {
        Some(s) => (s.webhook_secret, false),
        None => (format!("whsec_{}", records::random_hex(24)), true),
    };
    let settings = ConsumerNotifySettings {
        webhook_url: url.clone(),
        webhook_secret: secret.clone(),
    };
    let view = SettingsView {
        webhook_url: url,
        webhook_secret: fresh.then_some(secret),
    };
    let writes = vec![store::json(
        records::consumer_settings_key(&consumer),
        &settings,
    )];
    idem.finish(
        Reply::new(StatusCode::OK, &view)
            .with_writes(writes)
            .redacting(&["/webhook_secret"]),
    )
    .await
}
