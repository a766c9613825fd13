//! What the API shows of a token and of a counter's queue.
use jiff::civil::Date;
use jiff::Timestamp;
use serde::Serialize;
use utoipa::ToSchema;

use super::queue::{CounterKind, Event, FacilityQueue, Millis, PriorityClass, Profile, Status, Token, TokenKey};
use super::token_id::TokenRef;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TransitionView {
    pub event: Event,
    pub status: Status,
    pub at: String,
    pub counter_id: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TokenView {
    pub token_id: String,
    pub token_number: u32,
    pub display: String,
    pub facility_id: String,
    /// The counter the token waits at now.
    pub counter_id: String,
    /// The counter that issued the number (differs after a transfer).
    pub issued_counter_id: String,
    pub service_date: String,
    pub status: Status,
    pub priority: Option<PriorityClass>,
    pub ahead: u32,
    pub estimated_wait_s: u64,
    pub repeat: bool,
    pub issued_at: String,
    pub expires_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub called_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    pub history: Vec<TransitionView>,
    /// Shown only to staff of the token's facility.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patient: Option<Profile>,
}

pub fn rfc3339(ms: Millis) -> String {
    Timestamp::from_millisecond(ms).map(|t| t.to_string()).unwrap_or_default()
}

impl TokenView {
    /// A view of a token; `queue` gives its position when it belongs to the live day.
    pub fn build(facility: &str, day: Date, t: &Token, queue: Option<&FacilityQueue>) -> Self {
        let pos =
            queue.map(|q| q.position(&t.key())).unwrap_or(super::queue::Position { ahead: 0, estimated_wait_s: 0 });
        TokenView {
            token_id: TokenRef {
                facility: facility.to_string(),
                day,
                counter: t.counter.to_string(),
                number: t.number,
            }
            .encode(),
            token_number: t.number,
            display: t.display(),
            facility_id: facility.to_string(),
            counter_id: t.at_counter.to_string(),
            issued_counter_id: t.counter.to_string(),
            service_date: day.to_string(),
            status: t.status,
            priority: t.priority,
            ahead: pos.ahead,
            estimated_wait_s: pos.estimated_wait_s,
            repeat: false,
            issued_at: rfc3339(t.issued_at),
            expires_at: rfc3339(t.expires_at),
            called_at: t.last_at(Event::Called).map(rfc3339),
            completed_at: t.last_at(Event::Completed).map(rfc3339),
            history: t
                .history
                .iter()
                .map(|h| TransitionView {
                    event: h.event,
                    status: h.event.status(),
                    at: rfc3339(h.at),
                    counter_id: h.counter.to_string(),
                })
                .collect(),
            patient: Some(t.profile.clone()),
        }
    }

    pub fn of(q: &FacilityQueue, facility: &str, key: &TokenKey) -> Option<Self> {
        q.get(key).map(|t| Self::build(facility, q.day(), t, Some(q)))
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CounterQueueView {
    pub counter_id: String,
    pub kind: CounterKind,
    pub called: Vec<TokenView>,
    pub waiting: Vec<TokenView>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct QueueView {
    pub facility_id: String,
    pub service_date: String,
    pub counters: Vec<CounterQueueView>,
}
