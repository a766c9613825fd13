//! Redis persistence: one connection type for a single Redis or a cluster ([`conn`]), the
//! key schema ([`keys`]), the token record codec ([`record`]), the store handle with its
//! fenced scripts ([`store`]), the group-commit writer ([`writer`]), the leaderboard count
//! scripts ([`lbcounts`]), a state's ranking read ([`lbread`]) and the on-share outbox
//! stream ([`outbox`]).
pub mod conn;
pub mod keys;
pub mod lbcounts;
pub mod lbread;
pub mod outbox;
pub mod record;
pub mod store;
pub mod writer;

pub use store::{Store, StoreError};
