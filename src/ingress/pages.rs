//! The pages people look at: the live national leaderboard (`/leaderboard`) and a
//! facility's waiting-hall display board (`/facilities/{id}/board`), each a static page
//! kept current by server-sent events. Both show aggregates and token numbers only, never
//! patient data, so they need no credential; each request is limited per client address
//! (`SCANGW_LIMIT_PAGE_PER_MIN`) before any work, and streams are capped and shared per facility.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::stream::{self, Stream};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::auth::authenticate;
use super::error::ApiError;
use super::{forward, AppState};
use crate::facility::view::QueueView;
use crate::facility::{Command, FacilityError};
use crate::registry::{valid_facility_id, FacilityInfo};
use crate::telemetry::metrics::Metrics;

const LEADERBOARD_HTML: &str = include_str!("../../web/leaderboard.html");
const BOARD_HTML: &str = include_str!("../../web/board.html");
/// Tokens listed under "next" per counter on the display board.
const BOARD_NEXT: usize = 6;
/// A comment line every so often keeps proxies from closing a quiet stream.
const KEEPALIVE: Duration = Duration::from_secs(15);

fn html(body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header((
            "Content-Security-Policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
        ))
        .body(body)
}

/// One counter on the display board.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoardCounter {
    pub counter_id: String,
    pub kind: String,
    /// Tokens called and not yet finished, latest first.
    pub now_serving: Vec<String>,
    /// The next tokens in call order.
    pub next: Vec<String>,
    pub waiting: usize,
}

/// What a waiting hall sees: numbers only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoardView {
    pub facility_id: String,
    pub name: String,
    pub service_date: String,
    pub counters: Vec<BoardCounter>,
}

impl BoardView {
    pub fn of(name: &str, q: QueueView) -> Self {
        BoardView {
            facility_id: q.facility_id,
            name: name.to_string(),
            service_date: q.service_date,
            counters: q
                .counters
                .into_iter()
                .map(|mut c| {
                    c.called.sort_by_key(|t| std::cmp::Reverse(t.called_at));
                    c.waiting.sort_by_key(|t| t.ahead);
                    BoardCounter {
                        counter_id: c.counter_id,
                        kind: c.kind.as_str().to_string(),
                        now_serving: c.called.iter().map(|t| t.display.clone()).collect(),
                        next: c.waiting.iter().take(BOARD_NEXT).map(|t| t.display.clone()).collect(),
                        waiting: c.waiting.len(),
                    }
                })
                .collect(),
        }
    }
}

/// Live display boards: one poller per watched facility, shared by all its screens, and
/// stopped when the last screen goes.
pub struct Boards {
    feeds: Mutex<HashMap<String, watch::Sender<Arc<BoardView>>>>,
    every: Duration,
}

impl Boards {
    pub fn new(every: Duration) -> Self {
        Boards { feeds: Mutex::new(HashMap::new()), every }
    }

    /// The board now. With ownership leases, a facility another live node owns is read
    /// from that node ([`board_for_node`]) rather than taken over by every poll; an owner
    /// that cannot be reached is taken over (a read is harmless to run here).
    async fn fetch(state: &AppState, id: &str, name: &str) -> Result<BoardView, ApiError> {
        let dir = &state.directory;
        let read = |reply| Command::Queue { counter: None, reply };
        let q = match dir.ask_routed(id, read).await {
            Err(FacilityError::OwnedElsewhere { url, .. }) => {
                let me = dir.deps().node.as_ref().map_or("", |n| n.id.as_str());
                let path = format!("{url}/internal/v1/boards/{id}");
                match forward::get_json::<BoardView>(&path, &state.settings.platform_token, me).await {
                    Ok(Some(mut view)) => {
                        view.name = name.to_string();
                        return Ok(view);
                    }
                    // The owner answered, but not with a board: keep the last one on screen.
                    Ok(None) => return Err(ApiError::StoreUnavailable),
                    Err(_) => {
                        dir.forget_owner(id);
                        dir.ask(id, read).await?
                    }
                }
            }
            r => r?,
        };
        Ok(BoardView::of(name, q))
    }

    fn subscribe(
        self: &Arc<Self>,
        state: web::Data<AppState>,
        stop: Arc<AtomicBool>,
        first: BoardView,
    ) -> watch::Receiver<Arc<BoardView>> {
        let id = first.facility_id.clone();
        let name = first.name.clone();
        let mut feeds = self.feeds.lock().expect("board map lock");
        if let Some(tx) = feeds.get(&id) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(Arc::new(first));
        feeds.insert(id.clone(), tx.clone());
        let boards = self.clone();
        actix_rt::spawn(async move {
            let mut tick = tokio::time::interval(boards.every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                {
                    let mut feeds = boards.feeds.lock().expect("board map lock");
                    if tx.receiver_count() == 0 || stop.load(Ordering::Relaxed) {
                        feeds.remove(&id);
                        return;
                    }
                }
                // A failed read keeps the last board on screen; the next tick tries again.
                if let Ok(view) = Self::fetch(&state, &id, &name).await {
                    tx.send_if_modified(|cur| {
                        let changed = **cur != view;
                        if changed {
                            *cur = Arc::new(view);
                        }
                        changed
                    });
                }
            }
        });
        rx
    }
}

/// Releases an SSE slot when the stream ends, however it ends.
struct SseSlot {
    count: Arc<AtomicUsize>,
    metrics: Metrics,
}

impl Drop for SseSlot {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
        self.metrics.sse_clients.decrement(1.0);
    }
}

/// The per-address limit of the public pages, checked before anything that costs a Redis
/// read or a stream: without it one address could make each node read Redis as fast as it
/// can send requests.
fn limit_page(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    state.limits.page(super::auth::client_addr(req, state)).map_err(super::auth::limited)
}

/// Takes one of the `max_sse_clients` stream slots (the page limit was checked first).
fn take_sse_slot(state: &AppState) -> Result<SseSlot, ApiError> {
    if state.shutting_down.load(Ordering::Relaxed) {
        return Err(ApiError::Overloaded);
    }
    if state.sse_clients.fetch_add(1, Ordering::Relaxed) >= state.settings.max_sse_clients {
        state.sse_clients.fetch_sub(1, Ordering::Relaxed);
        return Err(ApiError::Overloaded);
    }
    let metrics = state.directory.deps().metrics.clone();
    metrics.sse_clients.increment(1.0);
    Ok(SseSlot { count: state.sse_clients.clone(), metrics })
}

/// An SSE stream of a watched value: the current value at once, then every change, a
/// keepalive comment when quiet, and the end when the gateway drains.
fn sse<T: Serialize + Send + Sync + 'static>(
    rx: watch::Receiver<Arc<T>>,
    stop: Arc<AtomicBool>,
    slot: SseSlot,
) -> impl Stream<Item = Result<Bytes, actix_web::Error>> {
    let event =
        |v: &T| Bytes::from(format!("event: update\ndata: {}\n\n", serde_json::to_string(v).unwrap_or_default()));
    stream::unfold((rx, stop, slot, true), move |(mut rx, stop, slot, first)| async move {
        if first {
            let b = event(&rx.borrow_and_update());
            return Some((Ok(b), (rx, stop, slot, false)));
        }
        let mut quiet = Duration::ZERO;
        loop {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            match tokio::time::timeout(Duration::from_secs(1), rx.changed()).await {
                Ok(Ok(())) => {
                    let b = event(&rx.borrow_and_update());
                    return Some((Ok(b), (rx, stop, slot, false)));
                }
                Ok(Err(_)) => return None,
                Err(_) => {
                    quiet += Duration::from_secs(1);
                    if quiet >= KEEPALIVE {
                        return Some((Ok(Bytes::from_static(b": keepalive\n\n")), (rx, stop, slot, false)));
                    }
                }
            }
        }
    })
}

fn event_stream(body: impl Stream<Item = Result<Bytes, actix_web::Error>> + 'static) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body)
}

pub async fn leaderboard_page(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    limit_page(&req, &state)?;
    Ok(html(LEADERBOARD_HTML))
}

pub async fn leaderboard_events(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    limit_page(&req, &state)?;
    let slot = take_sse_slot(&state)?;
    Ok(event_stream(sse(state.feed.subscribe(), state.shutting_down.clone(), slot)))
}

async fn facility_name(state: &AppState, id: &str) -> Result<String, ApiError> {
    if !valid_facility_id(id) {
        return Err(ApiError::UnknownFacility);
    }
    let raw = state.store.get_info(id).await?.ok_or(ApiError::UnknownFacility)?;
    let info: FacilityInfo = serde_json::from_str(&raw).map_err(|_| ApiError::StoreUnavailable)?;
    Ok(info.name)
}

pub async fn board_page(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    limit_page(&req, &state)?;
    facility_name(&state, &path).await?;
    Ok(html(BOARD_HTML))
}

pub async fn board_events(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    limit_page(&req, &state)?;
    let id = path.into_inner();
    let name = facility_name(&state, &id).await?;
    let slot = take_sse_slot(&state)?;
    let first = Boards::fetch(&state, &id, &name).await?;
    let rx = state.boards.subscribe(state.clone(), state.shutting_down.clone(), first);
    Ok(event_stream(sse(rx, state.shutting_down.clone(), slot)))
}

/// `GET /internal/v1/boards/{facility_id}`: the display board (numbers only, no name) of a
/// facility, for another node's board stream when this node owns it (platform credential;
/// not part of the public API). Served here whoever owns it: the asking node chose us.
pub async fn board_for_node(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authenticate(&req, &state).await?.require_platform()?;
    let id = path.into_inner();
    if !valid_facility_id(&id) {
        return Err(ApiError::UnknownFacility);
    }
    let q = state.directory.ask(&id, |reply| Command::Queue { counter: None, reply }).await?;
    Ok(HttpResponse::Ok().json(BoardView::of("", q)))
}
