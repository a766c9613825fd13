//! Logs (tracing) and metrics (Prometheus). Patient data never goes to either: handlers
//! log facility and counter ids, codes and timings only.
pub mod metrics;
pub mod process;

use tracing_subscriber::EnvFilter;

/// Installs the log subscriber once (JSON lines to stderr). Safe to call again.
pub fn init_logging(filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .try_init();
}
