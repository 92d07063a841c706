//! `POST /v1/events`: authenticate, admit, parse, authorise, publish, and
//! answer only once Kafka acknowledged.
//!
//! Order matters: the cheap refusals (401, 429 on the byte budget, 413) come
//! before the body is read, so a flood costs the gateway little; a request's
//! body bytes are reserved from the budget until its events are encoded.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use serde_json::{Value, json};
use swabstream_events::avro::Codec;
use swabstream_events::json::{JsonError, event_from_value};

use crate::{Shared, content_length, retry_later};

/// What became of one event of a request.
enum Outcome {
    Pending,
    Rejected(JsonError),
    Accepted,
    NotAcknowledged(String),
}

/// Gives back a request's reservation of the byte budget, and its gauge, however the request ends.
struct Reservation {
    _permit: tokio::sync::OwnedSemaphorePermit,
    bytes: usize,
}

impl Reservation {
    fn new(permit: tokio::sync::OwnedSemaphorePermit, bytes: usize) -> Reservation {
        metrics::gauge!("swabstream_gateway_in_flight_bytes").increment(bytes as f64);
        Reservation { _permit: permit, bytes }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        metrics::gauge!("swabstream_gateway_in_flight_bytes").decrement(self.bytes as f64);
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    crate::json(status, json!({ "error": message.into() }))
}

fn events_total(outcome: &'static str, n: usize) {
    if n > 0 {
        metrics::counter!("swabstream_gateway_events_total", "outcome" => outcome)
            .increment(n as u64);
    }
}

pub(crate) async fn post_events(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let device = match s
        .credentials
        .authenticate(headers.get(header::AUTHORIZATION).map(HeaderValue::as_bytes))
    {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!("authentication failed: {e:?}");
            let mut r = error(StatusCode::UNAUTHORIZED, e.to_string());
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"swabstream\""),
            );
            return r;
        }
    };
    let opts = &s.opts;
    if s.draining.load(Ordering::Relaxed) {
        return retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            opts.retry_after_unavailable,
            json!({"error": "the gateway is shutting down; retry with another instance"}),
        );
    }
    if let Some(ct) = headers.get(header::CONTENT_TYPE)
        && !ct
            .to_str()
            .unwrap_or("")
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("application/json")
    {
        return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json");
    }

    // Admission: reserve the body's bytes before reading it.
    let declared = content_length(&headers);
    if let Some(n) = declared
        && n > opts.max_request_bytes
    {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is {n} bytes; at most {} are accepted", opts.max_request_bytes),
        );
    }
    let reserve = declared.unwrap_or(opts.max_request_bytes).max(1);
    let Ok(permit) = s.body_budget.clone().try_acquire_many_owned(reserve as u32) else {
        return retry_later(
            StatusCode::TOO_MANY_REQUESTS,
            opts.retry_after_saturated,
            json!({"error": "the gateway is saturated (request bytes in flight); retry later"}),
        );
    };
    let reservation = Reservation::new(permit, reserve);
    let read = tokio::time::timeout(
        opts.read_timeout,
        Limited::new(body, opts.max_request_bytes).collect(),
    )
    .await;
    let Ok(read) = read else {
        return error(
            StatusCode::REQUEST_TIMEOUT,
            format!("the body did not arrive within {:?}", opts.read_timeout),
        );
    };
    let bytes = match read {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body exceeds {} bytes", opts.max_request_bytes),
            );
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("cannot read the body: {e}")),
    };

    // Parse: one object or an array of them; each event stands alone.
    let value: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("the body is not JSON: {e}")),
    };
    drop(bytes);
    let items: Vec<&Value> = match &value {
        Value::Array(a) if a.is_empty() => {
            return error(StatusCode::BAD_REQUEST, "the body is an empty array: no events");
        }
        Value::Array(a) if a.len() > opts.max_events_per_request => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the body holds {} events; at most {} per request are accepted",
                    a.len(),
                    opts.max_events_per_request
                ),
            );
        }
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    let ids: Vec<Option<String>> = items
        .iter()
        .map(|v| v.get("event_id").and_then(Value::as_str).map(|id| id.chars().take(64).collect()))
        .collect();
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(items.len());
    let mut valid = Vec::with_capacity(items.len());
    for (i, v) in items.iter().enumerate() {
        match event_from_value(v, Some(&s.key)) {
            Ok(e) => {
                outcomes.push(Outcome::Pending);
                valid.push((i, e));
            }
            Err(e) => outcomes.push(Outcome::Rejected(e)),
        }
    }
    drop(items);
    drop(value);
    let rejected = outcomes.len() - valid.len();
    events_total("rejected", rejected);

    // Authorisation: a device publishing outside its scope is refused as a
    // whole; nothing of the request is published.
    let forbidden: Vec<Value> = valid
        .iter()
        .filter_map(|(i, e)| {
            device.forbids(e).map(|why| {
                json!({"index": i, "event_id": ids[*i], "status": "forbidden", "problem": why})
            })
        })
        .collect();
    if let Some(first) = forbidden.first() {
        events_total("forbidden", forbidden.len());
        if swabstream_kafka::throttled("gateway-forbidden") {
            tracing::info!(device = %device.id, events = forbidden.len(), "refused events outside the credential's scope (logged at most every 5 s)");
        }
        return crate::json(
            StatusCode::FORBIDDEN,
            json!({
                "error": first["problem"],
                "accepted": 0,
                "results": forbidden,
            }),
        );
    }
    if valid.is_empty() {
        return answer(&s, outcomes, &ids);
    }

    // Admission: records waiting for Kafka.
    if s.sink.queued() + valid.len() > opts.max_queued_events {
        return if s.sink.reachable() {
            retry_later(
                StatusCode::TOO_MANY_REQUESTS,
                opts.retry_after_saturated,
                json!({"error": "the gateway is saturated (events waiting for Kafka); retry later"}),
            )
        } else {
            unavailable(&s)
        };
    }

    // Publish, then wait for every acknowledgement.
    let codec = Codec::shared();
    let mut payload = Vec::with_capacity(256);
    let mut pending = Vec::with_capacity(valid.len());
    for (i, event) in &valid {
        payload.clear();
        codec.encode(event, &mut payload);
        let key = event.person_ref.to_hex();
        match s.sink.send(key.as_bytes(), &payload) {
            Ok(f) => pending.push((*i, f)),
            Err(e) => outcomes[*i] = Outcome::NotAcknowledged(format!("not queued: {e}")),
        }
    }
    drop(valid);
    drop(reservation);
    let deadline = tokio::time::Instant::now() + opts.ack_timeout;
    for (i, f) in pending {
        outcomes[i] = match tokio::time::timeout_at(deadline, f).await {
            Ok(Ok(Ok(_))) => Outcome::Accepted,
            Ok(Ok(Err((e, _)))) => Outcome::NotAcknowledged(format!("Kafka refused it: {e}")),
            Ok(Err(_)) => Outcome::NotAcknowledged("the producer went away".to_owned()),
            Err(_) => Outcome::NotAcknowledged(format!(
                "not acknowledged by Kafka within {:?}",
                opts.ack_timeout
            )),
        };
    }
    answer(&s, outcomes, &ids)
}

fn unavailable(s: &Shared) -> Response {
    retry_later(
        StatusCode::SERVICE_UNAVAILABLE,
        s.opts.retry_after_unavailable,
        json!({
            "error": "Kafka is not reachable; nothing of this request was accepted",
            "accepted": 0,
        }),
    )
}

/// 202 when every event was accepted; 400 listing each event's outcome when
/// some were invalid (the valid ones are published all the same); 503 when
/// Kafka did not acknowledge some.
fn answer(s: &Shared, outcomes: Vec<Outcome>, ids: &[Option<String>]) -> Response {
    let count = |f: fn(&Outcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
    let accepted = count(|o| matches!(o, Outcome::Accepted));
    let rejected = count(|o| matches!(o, Outcome::Rejected(_)));
    let unacked = count(|o| matches!(o, Outcome::NotAcknowledged(_)));
    events_total("accepted", accepted);
    events_total("not_acknowledged", unacked);
    if accepted == outcomes.len() {
        return crate::json(StatusCode::ACCEPTED, json!({"accepted": accepted, "rejected": 0}));
    }
    let results: Vec<Value> = outcomes
        .iter()
        .enumerate()
        .map(|(i, o)| match o {
            Outcome::Accepted => json!({"index": i, "event_id": ids[i], "status": "accepted"}),
            Outcome::Rejected(e) => json!({
                "index": i,
                "event_id": ids[i],
                "status": "rejected",
                "field": e.field_name(),
                "problem": e.to_string(),
            }),
            Outcome::NotAcknowledged(why) => json!({
                "index": i,
                "event_id": ids[i],
                "status": "not_acknowledged",
                "problem": why,
            }),
            Outcome::Pending => {
                json!({"index": i, "event_id": ids[i], "status": "not_acknowledged"})
            }
        })
        .collect();
    if unacked > 0 {
        let first = outcomes.iter().find_map(|o| match o {
            Outcome::NotAcknowledged(w) => Some(w.clone()),
            _ => None,
        });
        if swabstream_kafka::throttled("gateway-unacknowledged") {
            tracing::warn!(
                events = unacked,
                "answering 503 (logged at most every 5 s): {}",
                first.as_deref().unwrap_or("")
            );
        }
        return retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            s.opts.retry_after_unavailable,
            json!({
                "error": format!(
                    "{unacked} events were not acknowledged by Kafka; retry them (event ids make a retry safe)"
                ),
                "accepted": accepted,
                "rejected": rejected,
                "not_acknowledged": unacked,
                "results": results,
            }),
        );
    }
    crate::json(
        StatusCode::BAD_REQUEST,
        json!({
            "error": format!("{rejected} of {} events are invalid; the others were accepted", outcomes.len()),
            "accepted": accepted,
            "rejected": rejected,
            "results": results,
        }),
    )
}
