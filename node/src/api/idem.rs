//! `Idempotency-Key` on every mutating route.
//!
//! The first request with a key runs; its answer is stored with a fingerprint of the request
//! (method, path, body) and flushed **before it is sent**: in the same atomic write as the
//! request's own effects where those are the node's records (an order creation), right behind
//! them in the log where they are the engine's (the log is written in order and stops at its
//! first failure, so the answer is never on disk without the effects). One exception: a
//! swipe changes nothing durable (its challenge lives in memory and dies with the process), so
//! its answer goes out before its record is synced ([`Idem::finish_without_waiting`]). Not
//! stored: server errors (5xx) and requests refused before anything ran because the body was
//! malformed or did not validate (400 `invalid_json`, 422
//! `invalid_field`): the caller fixes the body and retries with the same key. Business refusals
//! (a refusal of the engine's, a state conflict) are stored and replayed like successes. A repeat with the same fingerprint gets the
//! stored answer again (header `Idempotent-Replayed: true`); the same key with another request
//! gets 422 `idempotency_mismatch`; an answer that carries a secret shown once (an API key, a
//! card key, a session token) is stored and replayed with that secret set to null (or left
//! out); a repeat while the first is still running gets 409
//! `idempotency_in_progress`. Keys are per caller (merchant, administrator, consumer, reader),
//! so two merchants cannot collide.

use actix_web::http::header::ContentType;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder};
use serde::Serialize;
use serde_json::value::RawValue;
use std::sync::Arc;

use super::ApiError;
use crate::app::{checkout_of, order_view_as_created};
use crate::records::{self, null_json, Fingerprint, IdemRecord, NewOrderAnswer};
use crate::state::Node;
use crate::store::{self, Write};

/// A request's answer and the writes that make it true.
pub struct Reply {
    pub status: StatusCode,
    /// The answer, serialised once: sent as it is, and stored as it is for a repeat.
    body: Box<RawValue>,
    pub writes: Vec<Write>,
    /// What a repeat gets instead of `body`, when the answer carries a secret shown once (an
    /// API key, a card key, a session token): the secret is never stored (I10).
    replay_body: Option<Box<RawValue>>,
    /// An order creation's answer, stored as the few fields that rebuild it from the checkout
    /// (a sixth of the bytes: less to log, to checkpoint and to read back).
    pub new_order: Option<NewOrderAnswer>,
    /// A refusal of the body before anything ran: not stored, so that the caller can fix the
    /// body and retry with the same key.
    refused_body: bool,
}

impl Reply {
    pub fn new(status: StatusCode, body: &impl Serialize) -> Reply {
        Reply {
            status,
            body: json_of(body),
            writes: Vec::new(),
            replay_body: None,
            new_order: None,
            refused_body: false,
        }
    }

    /// The answer of an order creation: a repeat rebuilds it from the checkout.
    pub fn replayed_as_created(mut self, created: NewOrderAnswer) -> Reply {
        self.new_order = Some(created);
        self
    }

    /// The answer a repeat gets instead of this one: `replay`, the same answer without the
    /// secret it carries. Typed, so nothing is parsed back (see [`Reply::redacting`]).
    pub fn replayed_as(mut self, replay: &impl Serialize) -> Reply {
        self.replay_body = Some(json_of(replay));
        self
    }

    /// The answer a repeat gets: this one with the given secret fields set to null.
    pub fn redacting(mut self, pointers: &[&str]) -> Reply {
        let mut stored: serde_json::Value =
            serde_json::from_str(self.body.get()).unwrap_or(serde_json::Value::Null);
        for p in pointers {
            if let Some(v) = stored.pointer_mut(p) {
                *v = serde_json::Value::Null;
            }
        }
        self.replay_body = Some(json_of(&stored));
        self
    }

    /// This answer refuses the body before anything ran (a payroll file refused whole): not
    /// stored, as for [`Reply::error`] of a body that did not validate.
    pub fn refusing_the_body(mut self) -> Reply {
        self.refused_body = true;
        self
    }

    pub fn with_writes(mut self, writes: Vec<Write>) -> Reply {
        self.writes = writes;
        self
    }

    /// A refusal as a stored answer (it is replayed like any other), unless the body did not
    /// parse or validate ([`is_validation_error`]).
    pub fn error(e: &ApiError) -> Reply {
        Reply {
            refused_body: is_validation_error(&e.code),
            ..Reply::new(e.status, &e.body())
        }
    }
}

/// `value` as JSON text. Serialising our own plain data types cannot fail (no maps with
/// non-string keys, no serialisers that error); if one ever did, the answer is `null`.
fn json_of(value: &impl Serialize) -> Box<RawValue> {
    serde_json::value::to_raw_value(value).unwrap_or_else(|_| null_json())
}

/// An answer whose body is JSON text already.
fn json_response(mut builder: HttpResponseBuilder, body: Box<RawValue>) -> HttpResponse {
    builder
        .content_type(ContentType::json())
        .body(String::from(Box::<str>::from(body)))
}

/// A request with its key claimed (or without a key).
pub struct Idem<'a> {
    node: &'a Node,
    claim: Option<(String, Fingerprint)>,
}

/// Either the stored answer to send again, or the go-ahead to run the request.
pub enum Begin<'a> {
    Replay(HttpResponse),
    Run(Idem<'a>),
}

impl<'a> Idem<'a> {
    pub async fn begin(
        node: &'a Node,
        req: &HttpRequest,
        principal: &str,
        body: &[u8],
    ) -> Result<Begin<'a>, ApiError> {
        let Some(value) = req.headers().get("idempotency-key") else {
            return Ok(Begin::Run(Idem { node, claim: None }));
        };
        let key = value
            .to_str()
            .ok()
            .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_idempotency_key",
                    "Idempotency-Key must be 1 to 255 visible ASCII characters",
                )
            })?;
        let store_key = records::idem_key(principal, key);
        let mut hasher_input = Vec::with_capacity(body.len() + 64);
        hasher_input.extend_from_slice(req.method().as_str().as_bytes());
        hasher_input.push(b' ');
        hasher_input.extend_from_slice(req.path().as_bytes());
        hasher_input.push(b'\n');
        hasher_input.extend_from_slice(body);
        let fingerprint = records::sha256(&hasher_input);
        // Claimed first, then looked up once: a request that finished with this key made its
        // record visible before it let go of the key, so the lookup under the claim sees it.
        let held = match node.idem_in_flight.entry(store_key.clone()) {
            dashmap::Entry::Occupied(e) => Some(e.get().clone()),
            dashmap::Entry::Vacant(e) => {
                e.insert(None);
                None
            }
        };
        if let Some(answered) = held {
            // Another request holds the key: a repeat of one that is done (read without the
            // claim) gets its answer, or one answered whose stored answer is still on its way
            // to the log (`finish_without_waiting`); otherwise it is still running.
            let done = match lookup(node, &store_key, &fingerprint)? {
                Some(done) => Some(done),
                None => match answered {
                    Some(record) => replay_of(node, &store_key, &record[..], &fingerprint)?,
                    None => None,
                },
            };
            return done.map(Begin::Replay).ok_or_else(|| {
                ApiError::conflict(
                    "idempotency_in_progress",
                    "a request with this Idempotency-Key is still in progress; retry shortly",
                )
            });
        }
        let idem = Idem {
            node,
            claim: Some((store_key.clone(), fingerprint)),
        };
        if let Some(done) = lookup(node, &store_key, &fingerprint)? {
            return Ok(Begin::Replay(done));
        }
        Ok(Begin::Run(idem))
    }

    /// The key's suffix-free identity, for handlers that derive ids from it (refund ids).
    pub fn key(&self) -> Option<&str> {
        self.claim.as_ref().map(|(k, _)| k.as_str())
    }

    /// Makes the reply's writes (and the stored answer) durable, then answers.
    pub async fn finish(self, mut reply: Reply) -> Result<HttpResponse, ApiError> {
        let mut writes = std::mem::take(&mut reply.writes);
        writes.extend(self.stored_answer(&reply));
        if !writes.is_empty() {
            self.node.store.commit(writes).await?;
        }
        Ok(json_response(HttpResponse::build(reply.status), reply.body))
    }

    /// [`Idem::finish`] for a request that changes nothing durable, whose answer only lives
    /// as long as the process: a swipe, whose challenge is held in memory and dies with the
    /// node. Its stored answer is queued in the log and the answer goes out at once, without
    /// waiting for the sync. Waiting would buy nothing: after a crash the stored answer would
    /// name a challenge that no longer exists, while a repeat that finds no stored answer runs
    /// the request again and gets a live one. The key stays claimed, with a copy of the
    /// answer, until the stored answer is readable: a repeat meanwhile is answered from the
    /// copy, so it never runs the request a second time in the same process. `reply` must
    /// carry no writes of its own (they would be effects): such a reply is made durable as by
    /// `finish`.
    pub async fn finish_without_waiting(
        mut self,
        node: &actix_web::web::Data<Node>,
        reply: Reply,
    ) -> Result<HttpResponse, ApiError> {
        if !reply.writes.is_empty() {
            return self.finish(reply).await;
        }
        if let Some(record) = self.stored_answer(&reply) {
            let answered = match &record {
                store::Write::Put(_, bytes) => Some(Arc::<[u8]>::from(bytes.as_slice())),
                store::Write::Remove(_) => None,
            };
            let written = self.node.store.commit(vec![record]);
            // The key is let go once its answer is readable, not when `self` drops; until then
            // a repeat is answered from the copy kept with the claim.
            if let Some((key, _)) = self.claim.take() {
                if let Some(mut held) = self.node.idem_in_flight.get_mut(&key) {
                    *held = answered;
                }
                let node = node.clone();
                actix_rt::spawn(async move {
                    if let Err(e) = written.await {
                        tracing::warn!(error = %e, "the stored answer of a request without durable effects was not written; a repeat runs it again");
                    }
                    node.idem_in_flight.remove(&key);
                });
            }
        }
        Ok(json_response(HttpResponse::build(reply.status), reply.body))
    }

    /// The record a repeat of this request is answered from, if the reply is one to keep.
    fn stored_answer(&self, reply: &Reply) -> Option<Write> {
        let (key, fingerprint) = self.claim.as_ref()?;
        if reply.status.as_u16() >= 500 || reply.refused_body {
            return None;
        }
        Some(store::record(
            key.clone(),
            &IdemRecord {
                fingerprint: *fingerprint,
                status: reply.status.as_u16(),
                at: self.node.now(),
                body: match (&reply.new_order, &reply.replay_body) {
                    (Some(_), _) => null_json(),
                    (None, Some(replay)) => replay.clone(),
                    (None, None) => reply.body.clone(),
                },
                new_order: reply.new_order.clone(),
            },
        ))
    }
}

impl Drop for Idem<'_> {
    fn drop(&mut self) {
        if let Some((key, _)) = &self.claim {
            self.node.idem_in_flight.remove(key);
        }
    }
}

/// A body that did not parse or validate: nothing ran, so nothing to replay. (A payroll file
/// refused whole is one too: [`Reply::refusing_the_body`].)
fn is_validation_error(code: &str) -> bool {
    matches!(code, "invalid_json" | "invalid_field" | "bad_body")
}

fn lookup(
    node: &Node,
    key: &str,
    fingerprint: &Fingerprint,
) -> Result<Option<HttpResponse>, ApiError> {
    match node.store.get_raw(key)? {
        None => Ok(None),
        Some(bytes) => replay_of(node, key, &bytes, fingerprint),
    }
}

/// The answer a repeat gets from the stored record `bytes` of its key: the stored answer for
/// the same request, `idempotency_mismatch` for another.
fn replay_of(
    node: &Node,
    key: &str,
    bytes: &[u8],
    fingerprint: &Fingerprint,
) -> Result<Option<HttpResponse>, ApiError> {
    match store::decode_record::<IdemRecord>(key, bytes)? {
        r if r.fingerprint == *fingerprint => {
            let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK);
            let body = match &r.new_order {
                Some(created) => {
                    let c = checkout_of(node, &created.order)?;
                    json_of(&order_view_as_created(&c, created))
                }
                None => r.body,
            };
            let mut replay = HttpResponse::build(status);
            replay.insert_header(("Idempotent-Replayed", "true"));
            Ok(Some(json_response(replay, body)))
        }
        _ => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_mismatch",
            "this Idempotency-Key was already used with a different request (method, path or \
             body); use a new key for a new request",
        )),
    }
}
