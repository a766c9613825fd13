//! Integration tests against a real redis-server and the gateway in-process on port 0.
mod counters;
mod durability;
mod fencing;
mod helpers;
mod idempotency;
mod leaderboards;
mod lifecycle;
mod limits;
mod protocol;
mod registry;
mod routing;
mod scans;
mod validation;
