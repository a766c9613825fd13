//! Redis persistence: the key schema ([`keys`]), the token record codec ([`record`]), the
//! store handle with its fenced scripts ([`store`]) and the group-commit writer ([`writer`]).
pub mod keys;
pub mod record;
pub mod store;
pub mod writer;

pub use store::{Store, StoreError};
