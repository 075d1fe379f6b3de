//! Notifications: one port for telling a party that something happened (a bill received,
//! paid, failed or overdue; later alerts, salaries and recharges), with a durable, retried
//! outbox behind it.
//!
//! A [`Notification`] is a recipient (party kind and id), an event type, a JSON payload and an
//! id that makes it idempotent. The code that causes one calls [`writes`] and commits what it
//! returns **in the same commit as its cause**: nothing is lost (the cause is durable only
//! with its notifications) and nothing is sent for a cause that was not made durable. What
//! [`writes`] returns:
//! - for a consumer, the notification in their inbox (`GET /v1/consumer/notifications`);
//! - for a recipient with a webhook endpoint (a merchant's, a consumer's own), a delivery on
//!   the webhook queue (`wh/`, `wq/`), which the webhook workers (`workers.rs`) send through
//!   the [`Notifier`] port, signed, with the notification id as `OneCard-Event-Id`, retried
//!   with back-off until the endpoint takes it. The merchants' order events use the same queue
//!   and the same [`Notifier`]: one delivery loop, one signing rule.
//!
//! The webhook body is the envelope merchants already know: `{"id","type","created_at","data"}`.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::records::{self, ConsumerNotifySettings, DeliveryState, WebhookDelivery};
use crate::state::{now_ms, Node};
use crate::store::{self, StoreError, Write};
use onecard_protocol::wire::to_hex;

/// Who a notification is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartyKind {
    /// A merchant, a biller included (billers are merchants of a kind).
    #[default]
    Merchant,
    Consumer,
}

impl PartyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PartyKind::Merchant => "merchant",
            PartyKind::Consumer => "consumer",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    pub kind: PartyKind,
    pub id: String,
}

impl Recipient {
    pub fn merchant(id: &str) -> Recipient {
        Recipient {
            kind: PartyKind::Merchant,
            id: id.to_string(),
        }
    }
    pub fn consumer(id: &str) -> Recipient {
        Recipient {
            kind: PartyKind::Consumer,
            id: id.to_string(),
        }
    }
}

/// One notification. Its `id` is stable (derived from its cause), so writing it twice creates
/// it once and every delivery attempt carries the same `OneCard-Event-Id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub id: String,
    pub recipient: Recipient,
    /// `bill.received`, `bill.paid`, `bill.payment_failed`, `bill.overdue`, `bill.declined`, ...
    #[serde(rename = "type")]
    pub event_type: String,
    pub payload: serde_json::Value,
    /// Unix seconds.
    pub created_at: u64,
}

impl Notification {
    /// The webhook body: the same envelope as the merchants' order events.
    pub fn envelope(&self) -> String {
        serde_json::json!({
            "id": self.id,
            "type": self.event_type,
            "created_at": self.created_at,
            "data": self.payload,
        })
        .to_string()
    }
}

/// Where and how a recipient's webhooks go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub url: String,
    /// The HMAC-SHA256 key of `OneCard-Signature`.
    pub secret: String,
}

/// Why a delivery did not go through (the URL is never in it: it may carry a token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SendError(pub String);

/// The notifier port: sends one notification body to an endpoint, once. Retries, back-off,
/// fairness between endpoints and durability are the outbox's (`workers.rs`), not the
/// adapter's. Blocking: it runs on the webhook workers' own threads.
pub trait Notifier: Send + Sync {
    fn send(&self, to: &Endpoint, event_id: &str, body: &str) -> Result<(), SendError>;
}

/// The webhook adapter: an HTTP(S) POST of the JSON body, signed (`OneCard-Signature`), with
/// `OneCard-Event-Id`; a 2xx is delivered, anything else is retried. No redirects: a
/// signed event goes only where the recipient said.
pub struct WebhookNotifier {
    agent: ureq::Agent,
}

impl WebhookNotifier {
    pub fn new(timeout: Duration) -> WebhookNotifier {
        WebhookNotifier {
            agent: ureq::AgentBuilder::new()
                .timeout(timeout)
                .redirects(0)
                .build(),
        }
    }
}

impl Notifier for WebhookNotifier {
    fn send(&self, to: &Endpoint, event_id: &str, body: &str) -> Result<(), SendError> {
        let t = now_ms() / 1000;
        let result = self
            .agent
            .post(&to.url)
            .set("Content-Type", "application/json")
            .set("OneCard-Event-Id", event_id)
            .set("OneCard-Signature", &signature(&to.secret, t, body))
            .send_string(body);
        match result {
            Ok(r) if (200..300).contains(&r.status()) => Ok(()),
            Ok(r) => Err(SendError(format!("status {}", r.status()))),
            Err(e) => Err(SendError(transport_error(&e))),
        }
    }
}

/// A transport error, without the URL (which may carry a recipient's token).
fn transport_error(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Status(code, _) => format!("status {code}"),
        ureq::Error::Transport(t) => match t.message() {
            Some(m) => format!("{}: {m}", t.kind()),
            None => t.kind().to_string(),
        },
    }
}

/// `OneCard-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(secret: &str, t: u64, body: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| {
        <Hmac<Sha256> as Mac>::new_from_slice(b"-").expect("HMAC takes any key")
    });
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("t={t},v1={}", to_hex(&mac.finalize().into_bytes()))
}

/// A consumer's notification settings, if they set any.
pub fn consumer_settings(
    node: &Node,
    consumer: &str,
) -> Result<Option<ConsumerNotifySettings>, StoreError> {
    node.store
        .get::<ConsumerNotifySettings>(&records::consumer_settings_key(consumer))
}

/// The recipient's webhook endpoint as it is now, if it has one: a merchant's from its
/// profile, a consumer's from their settings.
pub fn endpoint_of(node: &Node, kind: PartyKind, id: &str) -> Result<Option<Endpoint>, StoreError> {
    Ok(match kind {
        PartyKind::Merchant => node.merchants.get(id).and_then(|m| {
            m.webhook_url.clone().map(|url| Endpoint {
                url,
                secret: m.webhook_secret.clone(),
            })
        }),
        PartyKind::Consumer => consumer_settings(node, id)?.and_then(|s| {
            s.webhook_url.map(|url| Endpoint {
                url,
                secret: s.webhook_secret,
            })
        }),
    })
}

/// The writes that queue a webhook delivery of `body` to the recipient's endpoint, unless one
/// with this id is queued or done already. Nothing when the recipient has no endpoint.
pub fn delivery_writes(
    node: &Node,
    kind: PartyKind,
    recipient: &str,
    event_id: &str,
    body: String,
) -> Result<Vec<Write>, StoreError> {
    let Some(endpoint) = endpoint_of(node, kind, recipient)? else {
        return Ok(Vec::new());
    };
    if node
        .store
        .get_raw(&records::webhook_key(event_id))?
        .is_some()
    {
        return Ok(Vec::new());
    }
    let now = now_ms();
    Ok(vec![
        store::json(
            records::webhook_key(event_id),
            &WebhookDelivery {
                event_id: event_id.to_string(),
                party: kind,
                recipient: recipient.to_string(),
                url: endpoint.url,
                payload: body,
                state: DeliveryState::Pending,
                attempts: 0,
                last_error: None,
                next_attempt_ms: now,
                delivered_at: None,
                created_ms: now,
            },
        ),
        store::json(records::webhook_queue_key(now, event_id), &()),
    ])
}

/// The writes that make `n` durable and queue its delivery: commit them with the cause. A
/// notification whose id is taken already gives no writes (idempotent).
pub fn writes(node: &Node, n: &Notification) -> Result<Vec<Write>, StoreError> {
    let mut out = Vec::new();
    if n.recipient.kind == PartyKind::Consumer {
        let taken = records::notification_key(&n.id);
        if node.store.get_raw(&taken)?.is_some() {
            return Ok(out);
        }
        let inbox = records::inbox_key(&n.recipient.id, now_ms(), &n.id);
        out.push(store::json(taken, &inbox));
        out.push(store::json(inbox, n));
    }
    out.extend(delivery_writes(
        node,
        n.recipient.kind,
        &n.recipient.id,
        &n.id,
        n.envelope(),
    )?);
    Ok(out)
}

/// [`writes`] of several notifications, one id appearing once.
pub fn writes_all(node: &Node, ns: &[Notification]) -> Result<Vec<Write>, StoreError> {
    let mut out = Vec::new();
    for n in ns {
        out.extend(writes(node, n)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_time_and_body() {
        // Checked against: printf '%s' '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec_x
        let s = signature("whsec_x", 1_700_000_000, "{\"a\":1}");
        assert_eq!(
            s,
            "t=1700000000,v1=b3438763ab46d9634b9844c8722818eaf523f803db1327484c6067462a5fd6d1"
        );
    }

    #[test]
    fn the_envelope_is_the_merchants_event_shape() {
        let n = Notification {
            id: "ntf_1".into(),
            recipient: Recipient::consumer("alice"),
            event_type: "bill.overdue".into(),
            payload: serde_json::json!({"bill_id": "B-1"}),
            created_at: 7,
        };
        let v: serde_json::Value = serde_json::from_str(&n.envelope()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": "ntf_1", "type": "bill.overdue", "created_at": 7, "data": {"bill_id": "B-1"}})
        );
        // The recipient is not in the body: an endpoint knows who it is.
        assert!(v.get("recipient").is_none());
    }

    /// Deliveries stored before consumers had webhooks (a `merchant` field, no `party`) still
    /// read, as merchants'.
    #[test]
    fn an_older_delivery_record_reads_as_a_merchants() {
        let old = serde_json::json!({
            "event_id": "evt_1_0_0", "merchant": "shop", "url": "http://x", "payload": "{}",
            "state": "pending", "attempts": 0, "last_error": null, "next_attempt_ms": 0,
            "delivered_at": null
        });
        let d: WebhookDelivery = serde_json::from_value(old).unwrap();
        assert_eq!(d.party, PartyKind::Merchant);
        assert_eq!(d.recipient, "shop");
    }
}
