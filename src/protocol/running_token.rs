//! Running Token Status (NHA's Running Token Status document): the switch asks for a counter's
//! ongoing token number (`POST /api/v3/hip/patient/running-token/status`, body `{hipId,
//! context}`), and the gateway answers on `.../running-token/on-status` from the queue state.
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::hiecm::{Hiecm, SendError};
use crate::facility::actor::FacilityError;
use crate::facility::queue::QueueError;
use crate::facility::view::QueueView;
use crate::facility::Command;
use crate::ingress::AppState;

/// The document's code for "No tokens found for the abha address today": the counter has no
/// token of the day (none called, none waiting).
pub const NO_TOKENS_CODE: &str = "ABDM-1031";
/// Anything else (unknown facility or counter, the gateway busy): the generic `ABDM-9999`
/// of the on-share, with our own code and reason in the message.
pub const OTHER_CODE: &str = super::shapes::V3_ERROR_CODE;

/// How often a status callback is tried. A status is a read that is stale within minutes and
/// the patient app asks again: a few quick tries, no outbox.
const ATTEMPTS: u32 = 4;

/// What the on-status reports for a counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    /// The token called most recently at the counter and still called; 0 when none is.
    pub number: u32,
    /// The counter's average service time in whole minutes (at least 1), when a token waits.
    pub average_minutes: Option<u64>,
}

/// Why a status gets the error form: the document's code and a message free of patient data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusError {
    pub code: &'static str,
    pub message: String,
}

/// The running token of `counter` from its queue view; the error form when the counter has
/// no token today.
pub fn running(view: &QueueView) -> Result<Running, StatusError> {
    let Some(c) = view.counters.first() else {
        return Err(StatusError { code: NO_TOKENS_CODE, message: "No tokens found for this counter today".into() });
    };
    if c.called.is_empty() && c.waiting.is_empty() {
        return Err(StatusError { code: NO_TOKENS_CODE, message: "No tokens found for this counter today".into() });
    }
    // `called` keeps call order: the last one is the number the counter serves now.
    let number = c.called.last().map_or(0, |t| t.token_number);
    let average_minutes =
        c.waiting.iter().find(|t| t.ahead > 0).map(|t| (t.estimated_wait_s / u64::from(t.ahead)).div_ceil(60).max(1));
    Ok(Running { number, average_minutes })
}

/// The on-status body: `{"token": {hipId, context, runningTokenNumber,
/// averageTokenServiceTimeInMinutes}, "response": {requestId}}`, or `{"error": {code,
/// message}, "response": {requestId}}` (the document's two request bodies;
/// `runningTokenNumber` a string as in its example).
pub fn on_status_body(hip: &str, context: &str, rid: &str, outcome: &Result<Running, StatusError>) -> Value {
    match outcome {
        Ok(r) => {
            let mut token = json!({"hipId": hip, "context": context, "runningTokenNumber": r.number.to_string()});
            if let Some(m) = r.average_minutes {
                token["averageTokenServiceTimeInMinutes"] = json!(m);
            }
            json!({"token": token, "response": {"requestId": rid}})
        }
        Err(e) => json!({"error": {"code": e.code, "message": e.message}, "response": {"requestId": rid}}),
    }
}

fn other(code: &str, reason: &str) -> StatusError {
    StatusError { code: OTHER_CODE, message: format!("{code}: {reason}") }
}

/// A running-token read as another node asks the facility's owner for it
/// ([`crate::ingress::protocol::running_token_for_node`]), and its answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct RunningAsk {
    pub hip_id: String,
    pub context: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RunningAnswer {
    pub number: Option<u32>,
    pub average_minutes: Option<u64>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
}

impl RunningAnswer {
    pub fn of(outcome: &Result<Running, StatusError>) -> Self {
        match outcome {
            Ok(r) => Self {
                number: Some(r.number),
                average_minutes: r.average_minutes,
                error_code: None,
                error_message: None,
            },
            Err(e) => Self {
                number: None,
                average_minutes: None,
                error_code: Some(e.code.to_string()),
                error_message: Some(e.message.clone()),
            },
        }
    }

    fn outcome(self) -> Result<Running, StatusError> {
        match (self.number, self.error_code) {
            (Some(number), None) => Ok(Running { number, average_minutes: self.average_minutes }),
            (_, code) => Err(StatusError {
                code: if code.as_deref() == Some(NO_TOKENS_CODE) { NO_TOKENS_CODE } else { OTHER_CODE },
                message: self.error_message.unwrap_or_default(),
            }),
        }
    }
}

/// The counter's running token: with ownership leases, read from the node that owns the
/// facility under a live lease (reading it here would take the facility over); otherwise,
/// or when that owner cannot be reached, from this node's actor ([`answer_here`]).
async fn answer(state: &AppState, hip: &str, context: &str) -> Result<Running, StatusError> {
    use super::shapes::FailureCode as F;
    let dir = &state.directory;
    if let Some(node) = &dir.deps().node {
        let read = |reply| Command::Queue { counter: Some(context.to_string()), reply };
        match dir.ask_routed(hip, read).await {
            Ok(view) => return running(&view),
            Err(FacilityError::OwnedElsewhere { url, .. }) => {
                let ask = RunningAsk { hip_id: hip.to_string(), context: context.to_string() };
                let path = format!("{url}/internal/v1/running-token");
                let metrics = &dir.deps().metrics;
                match crate::ingress::forward::post_json(&path, &state.settings.platform_token, &node.id, &ask).await {
                    Ok((status, body)) => {
                        metrics.forwarded_served.increment(1);
                        let answer = (status == 200).then(|| serde_json::from_slice::<RunningAnswer>(&body).ok());
                        return match answer.flatten() {
                            Some(a) => a.outcome(),
                            None => Err(other(F::Overloaded.as_str(), F::Overloaded.message())),
                        };
                    }
                    Err(()) => {
                        metrics.forwarded_taken_over.increment(1);
                        dir.forget_owner(hip);
                    }
                }
            }
            // Told apart, and retried when transient, by the read here.
            Err(_) => {}
        }
    }
    answer_here(state, hip, context).await
}

/// Reads the counter's queue from its facility actor on this node (a read: nothing is
/// written), taking the facility over if it must.
pub async fn answer_here(state: &AppState, hip: &str, context: &str) -> Result<Running, StatusError> {
    use super::shapes::FailureCode as F;
    let mut attempt = 0;
    loop {
        let r = state.directory.ask(hip, |reply| Command::Queue { counter: Some(context.to_string()), reply }).await;
        return match r {
            Ok(view) => running(&view),
            Err(FacilityError::UnknownFacility) => {
                Err(other(F::UnknownFacility.as_str(), F::UnknownFacility.message()))
            }
            Err(FacilityError::Queue(QueueError::UnknownCounter)) => {
                Err(other(F::UnknownCounter.as_str(), F::UnknownCounter.message()))
            }
            Err(FacilityError::Overloaded) | Err(FacilityError::Store(_)) if attempt < ATTEMPTS => {
                attempt += 1;
                tokio::time::sleep(super::worker::backoff(attempt, Duration::from_millis(100), Duration::from_secs(2)))
                    .await;
                continue;
            }
            Err(_) => Err(other(F::Overloaded.as_str(), F::Overloaded.message())),
        };
    }
}

/// Answers one status request in the background: reads the queue, then posts the on-status,
/// retrying a failed post a few times (5xx, timeouts, 401 with a renewed session bearer).
pub fn spawn_answer(state: actix_web::web::Data<AppState>, rid: String, hip: String, context: String) {
    actix_rt::spawn(async move {
        let Some(p) = state.protocol.as_ref() else { return };
        let hiecm = Hiecm::new(p.session.clone());
        let outcome = answer(&state, &hip, &context).await;
        let body = on_status_body(&hip, &context, &rid, &outcome);
        let metrics = &state.directory.deps().metrics;
        for attempt in 1..=ATTEMPTS {
            let now = state.directory.deps().clock.now();
            match hiecm.on_status(&hip, &body, now).await {
                Ok(()) => {
                    metrics.running_token_on_status.increment(1);
                    return;
                }
                Err(SendError::Status(s)) if SendError::Status(s).is_permanent() => {
                    tracing::warn!(request_id = %rid, status = s, "running-token on-status refused by the switch");
                    break;
                }
                Err(e) => {
                    tracing::info!(request_id = %rid, attempt, error = %e, "running-token on-status attempt failed");
                    tokio::time::sleep(super::worker::backoff(
                        attempt,
                        Duration::from_millis(state.settings.onshare_backoff_ms),
                        Duration::from_millis(state.settings.onshare_backoff_max_ms),
                    ))
                    .await;
                }
            }
        }
        metrics.running_token_on_status_failed.increment(1);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_follow_the_document() {
        let ok = on_status_body("HIP", "1", "r", &Ok(Running { number: 51, average_minutes: Some(2) }));
        assert_eq!(
            ok,
            json!({"token": {"hipId": "HIP", "context": "1", "runningTokenNumber": "51",
                   "averageTokenServiceTimeInMinutes": 2}, "response": {"requestId": "r"}})
        );
        let none = on_status_body("HIP", "1", "r", &Ok(Running { number: 0, average_minutes: None }));
        assert!(none["token"].get("averageTokenServiceTimeInMinutes").is_none());
        let err = on_status_body("HIP", "1", "r", &Err(StatusError { code: NO_TOKENS_CODE, message: "m".into() }));
        assert_eq!(err, json!({"error": {"code": "ABDM-1031", "message": "m"}, "response": {"requestId": "r"}}));
    }
}
