//! Redis persistence: the key schema ([`keys`]), the token record codec ([`record`]), the
//! store handle with its fenced scripts ([`store`]), the group-commit writer ([`writer`])
//! and the on-share outbox stream ([`outbox`]).
pub mod keys;
pub mod outbox;
pub mod record;
pub mod store;
pub mod writer;

pub use store::{Store, StoreError};
