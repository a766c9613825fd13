//! Graceful shutdown: on SIGTERM or SIGINT, report not-ready, stop accepting, let in-flight
//! requests finish (each waits for its Redis write), and give up after the grace period.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServerHandle;

/// Waits for a signal, then drains the server within `grace`.
pub async fn on_signal(handle: ServerHandle, draining: Arc<AtomicBool>, grace: Duration) {
    let sig = wait_for_signal().await;
    tracing::info!(signal = sig, grace_s = grace.as_secs(), "shutting down: draining in-flight requests");
    draining.store(true, Ordering::Relaxed);
    if tokio::time::timeout(grace + Duration::from_secs(1), handle.stop(true)).await.is_err() {
        tracing::warn!("drain exceeded the grace period; stopping now");
        handle.stop(false).await;
    }
}

#[cfg(unix)]
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "ctrl-c"
}
