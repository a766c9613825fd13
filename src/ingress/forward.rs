//! One internal hop to a facility's owner: a request for a facility whose lease lives on
//! another node is sent there as it came (method, path, query, body, credentials) and the
//! owner's answer passed back. A forwarded request is never forwarded again: its receiver
//! serves it, taking the facility over if it must, so there are no loops.
use std::time::Duration;

use actix_web::http::header::{self, HeaderName};
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse};

use super::AppState;
use crate::facility::actor::Reply;
use crate::facility::{Command, FacilityError};
use crate::persistence::StoreError;

/// Marks a forwarded request, with the forwarding node's id: its receiver must serve it.
pub const FORWARDED_BY: HeaderName = HeaderName::from_static("x-scangw-forwarded-by");
/// The node that produced an answer (with leases on; a forwarded answer keeps its owner's).
pub const NODE_HEADER: HeaderName = HeaderName::from_static("x-scangw-node");
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const FACILITY_ID: HeaderName = HeaderName::from_static("x-facility-id");

/// What a request takes to the owner; nothing else of the client's goes along.
const REQUEST_HEADERS: [HeaderName; 4] = [header::AUTHORIZATION, header::CONTENT_TYPE, IDEMPOTENCY_KEY, FACILITY_ID];
/// What comes back from the owner with its status and body.
const RESPONSE_HEADERS: [HeaderName; 3] = [header::CONTENT_TYPE, header::RETRY_AFTER, NODE_HEADER];

/// A connection to a live owner opens in well under this; past it the owner counts as gone.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The owner's whole answer. A scan waits for its group commit (the Redis timeout bounds
/// that), so an answer this late means the owner is in trouble.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer passed back (a queue view of a busy facility is the biggest).
const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;

thread_local! {
    /// awc clients live on one thread; each HTTP worker keeps its own pool of connections
    /// to the other nodes.
    static CLIENT: awc::Client = awc::Client::builder()
        .timeout(ANSWER_TIMEOUT)
        .disable_redirects()
        .connector(awc::Connector::new().timeout(CONNECT_TIMEOUT))
        .finish();
}

/// Where a request was answered.
pub enum Served<T> {
    /// By this node's actor.
    Here(T),
    /// By the owner node: its answer, to pass back as it is.
    There(HttpResponse),
}

/// Whether running a request a second time is harmless: a scan finds its patient's token
/// again (or its Idempotency-Key's), a read changes nothing. A counter operation would
/// act twice (call two patients), so when the owner may have got it, it is not run here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rerun {
    Harmless,
    Harmful,
}

/// Why the owner did not answer.
enum Unanswered {
    /// No connection: the owner never saw the request.
    NotSent,
    /// Sent (or maybe sent) and no answer.
    Unknown,
}

/// Asks the facility's actor on this node, or forwards the request (`body`: its raw body)
/// to the node that owns the facility under a live lease. An owner that cannot be reached
/// is taken over: its lease has not run out yet, but it is most likely dead (fencing keeps
/// two owners from both writing if it is not).
pub async fn ask<T>(
    state: &AppState,
    req: &HttpRequest,
    body: Bytes,
    facility: &str,
    rerun: Rerun,
    make: impl Fn(Reply<T>) -> Command,
) -> Result<Served<T>, FacilityError> {
    let dir = &state.directory;
    let Some(node) = dir.deps().node.clone() else { return dir.ask(facility, make).await.map(Served::Here) };
    if req.headers().contains_key(FORWARDED_BY) {
        return dir.ask(facility, make).await.map(Served::Here);
    }
    let url = match dir.ask_routed(facility, &make).await {
        Err(FacilityError::OwnedElsewhere { url, .. }) => url,
        r => return r.map(Served::Here),
    };
    let metrics = &dir.deps().metrics;
    match forward(req, body, &url, &node.id).await {
        Ok(res) => {
            metrics.forwarded_served.increment(1);
            Ok(Served::There(res))
        }
        Err(why) if matches!(why, Unanswered::NotSent) || rerun == Rerun::Harmless => {
            tracing::warn!(owner = %url, "facility owner unreachable; taking the facility over");
            metrics.forwarded_taken_over.increment(1);
            dir.forget_owner(facility);
            dir.ask(facility, make).await.map(Served::Here)
        }
        Err(_) => {
            tracing::warn!(owner = %url, "facility owner did not answer a counter operation; outcome unknown");
            metrics.forwarded_failed.increment(1);
            dir.forget_owner(facility);
            Err(FacilityError::Store(StoreError::Unavailable))
        }
    }
}

/// GETs `url` from another node as a forwarded request (bearer `bearer`): its JSON answer,
/// `None` when it answered with an error status.
pub async fn get_json<T: serde::de::DeserializeOwned>(url: &str, bearer: &str, me: &str) -> Result<Option<T>, ()> {
    let req = CLIENT.with(|c| c.get(url));
    let mut res = req
        .insert_header((header::AUTHORIZATION, format!("Bearer {bearer}")))
        .insert_header((FORWARDED_BY, me))
        .send()
        .await
        .map_err(|_| ())?;
    if !res.status().is_success() {
        return Ok(None);
    }
    let bytes = res.body().limit(MAX_ANSWER_BYTES).await.map_err(|_| ())?;
    Ok(serde_json::from_slice(&bytes).ok())
}

/// POSTs `body` as JSON to `url` on another node as a forwarded request (bearer `bearer`):
/// the status and body of its answer, `Err` when it gave none (connection or timeout).
pub async fn post_json(url: &str, bearer: &str, me: &str, body: &impl serde::Serialize) -> Result<(u16, Bytes), ()> {
    let req = CLIENT.with(|c| c.post(url));
    let mut res = req
        .insert_header((header::AUTHORIZATION, format!("Bearer {bearer}")))
        .insert_header((FORWARDED_BY, me))
        .send_json(body)
        .await
        .map_err(|_| ())?;
    let bytes = res.body().limit(MAX_ANSWER_BYTES).await.map_err(|_| ())?;
    Ok((res.status().as_u16(), bytes))
}

/// Sends the request to `<base><same path and query>`. Never logs the body (a scan's
/// carries patient fields).
async fn forward(req: &HttpRequest, body: Bytes, base: &str, me: &str) -> Result<HttpResponse, Unanswered> {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut out = CLIENT.with(|c| c.request(req.method().clone(), format!("{base}{path}")));
    for name in &REQUEST_HEADERS {
        if let Some(v) = req.headers().get(name) {
            out = out.insert_header((name.clone(), v.clone()));
        }
    }
    out = out.insert_header((FORWARDED_BY, me));
    let mut res = match out.send_body(body).await {
        Ok(res) => res,
        Err(awc::error::SendRequestError::Connect(_)) => return Err(Unanswered::NotSent),
        Err(_) => return Err(Unanswered::Unknown),
    };
    let bytes = res.body().limit(MAX_ANSWER_BYTES).await.map_err(|_| Unanswered::Unknown)?;
    let mut answer = HttpResponse::build(res.status());
    for name in &RESPONSE_HEADERS {
        if let Some(v) = res.headers().get(name) {
            answer.insert_header((name.clone(), v.clone()));
        }
    }
    Ok(answer.body(bytes))
}
