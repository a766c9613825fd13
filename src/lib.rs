//! scan-gateway: the national Scan & Share OPD token gateway.
//!
//! # Layout
//! - [`ingress`]: HTTP surface: routes, auth, body parsing and validation, error mapping.
//! - [`facility`]: the per-facility queue ([`facility::queue`], pure logic) and the actix
//!   actor shell around it, plus the directory that activates and passivates actors.
//! - [`persistence`]: Redis: the key schema (one module), fenced Lua writes, group commit.
//! - [`registry`]: facility records and staff keys, bulk import.
//! - [`leaderboard`]: exact national rankings (Redis sorted sets) and their live feed.
//! - [`config`], [`telemetry`], [`clock`], [`startup`], [`shutdown`], [`heap`]: wiring.
//!
//! A scan travels: ingress handler -> facility directory (activate actor on first use) ->
//! facility actor (numbering in memory) -> group-commit writer (one pipelined round trip for
//! many scans, fenced by the facility epoch) -> reply only after Redis stored it.
// One module calls the C allocator (`heap`, one `unsafe` call); nothing else may.
#![deny(unsafe_code)]

pub mod clock;
pub mod config;
pub mod facility;
pub mod heap;
pub mod ingress;
pub mod leaderboard;
pub mod periodic;
pub mod persistence;
pub mod protocol;
pub mod registry;
pub mod shutdown;
pub mod startup;
pub mod telemetry;
