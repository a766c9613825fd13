//! What the API shows of a token and of a counter's queue.
use std::fmt::Display;

use jiff::civil::Date;
use jiff::Timestamp;
use serde::{Serialize, Serializer};
use utoipa::ToSchema;

use super::queue::{
    CounterKind, CounterName, Event, FacilityQueue, Millis, PriorityClass, Profile, Status, Token, TokenKey,
};
use super::token_id::TokenRef;

/// A time the API shows in RFC 3339 (UTC). It is kept as milliseconds and formatted while
/// the response is written, so building a view allocates no string per time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiTime(pub Millis);

impl ApiTime {
    pub fn timestamp(self) -> Option<Timestamp> {
        Timestamp::from_millisecond(self.0).ok()
    }
}

impl Serialize for ApiTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.timestamp() {
            Some(t) => s.collect_str(&t),
            None => s.serialize_str(""),
        }
    }
}

/// Writes a value through its `Display` (dates, shared counter names) without a `String`.
fn as_display<T: Display + ?Sized, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TransitionView {
    pub event: Event,
    pub status: Status,
    #[schema(value_type = String)]
    pub at: ApiTime,
    #[serde(serialize_with = "as_display")]
    #[schema(value_type = String)]
    pub counter_id: CounterName,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TokenView {
    pub token_id: String,
    pub token_number: u32,
    pub display: String,
    pub facility_id: String,
    /// The counter the token waits at now.
    #[serde(serialize_with = "as_display")]
    #[schema(value_type = String)]
    pub counter_id: CounterName,
    /// The counter that issued the number (differs after a transfer).
    #[serde(serialize_with = "as_display")]
    #[schema(value_type = String)]
    pub issued_counter_id: CounterName,
    #[serde(serialize_with = "as_display")]
    #[schema(value_type = String)]
    pub service_date: Date,
    pub status: Status,
    pub priority: Option<PriorityClass>,
    pub ahead: u32,
    pub estimated_wait_s: u64,
    pub repeat: bool,
    #[schema(value_type = String)]
    pub issued_at: ApiTime,
    #[schema(value_type = String)]
    pub expires_at: ApiTime,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub called_at: Option<ApiTime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub completed_at: Option<ApiTime>,
    pub history: Vec<TransitionView>,
    /// Shown only to staff of the token's facility.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patient: Option<Profile>,
}

impl TokenView {
    /// A view of a token; `queue` gives its position when it belongs to the live day.
    pub fn build(facility: &str, day: Date, t: &Token, queue: Option<&FacilityQueue>) -> Self {
        Self::build_with(facility, day, t, queue, true)
    }

    /// The view without the patient profile, for everyone but the facility's staff (a
    /// scan's answer, the protocol's acknowledgement, a patient's poll): the profile is not
    /// copied only to be dropped.
    pub fn build_public(facility: &str, day: Date, t: &Token, queue: Option<&FacilityQueue>) -> Self {
        Self::build_with(facility, day, t, queue, false)
    }

    fn build_with(facility: &str, day: Date, t: &Token, queue: Option<&FacilityQueue>, patient: bool) -> Self {
        let pos =
            queue.map(|q| q.position(&t.key())).unwrap_or(super::queue::Position { ahead: 0, estimated_wait_s: 0 });
        TokenView {
            token_id: TokenRef::encode_parts(facility, day, &t.counter, t.number),
            token_number: t.number,
            display: t.display(),
            facility_id: facility.to_string(),
            counter_id: t.at_counter.clone(),
            issued_counter_id: t.counter.clone(),
            service_date: day,
            status: t.status,
            priority: t.priority,
            ahead: pos.ahead,
            estimated_wait_s: pos.estimated_wait_s,
            repeat: false,
            issued_at: ApiTime(t.issued_at),
            expires_at: ApiTime(t.expires_at),
            called_at: t.last_at(Event::Called).map(ApiTime),
            completed_at: t.last_at(Event::Completed).map(ApiTime),
            history: t
                .history
                .iter()
                .map(|h| TransitionView {
                    event: h.event,
                    status: h.event.status(),
                    at: ApiTime(h.at),
                    counter_id: h.counter.clone(),
                })
                .collect(),
            patient: patient.then(|| t.profile.clone()),
        }
    }

    pub fn of(q: &FacilityQueue, facility: &str, key: &TokenKey) -> Option<Self> {
        q.get(key).map(|t| Self::build(facility, q.day(), t, Some(q)))
    }

    /// [`Self::build_public`] of a token of the live queue.
    pub fn of_public(q: &FacilityQueue, facility: &str, key: &TokenKey) -> Option<Self> {
        q.get(key).map(|t| Self::build_public(facility, q.day(), t, Some(q)))
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
