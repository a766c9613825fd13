//! Facilities' live queues: the pure queue ([`queue`]), the actor shell that owns one per
//! facility ([`actor`]), and the directory that activates, finds and retires actors
//! ([`directory`]). Token ids, views and patient digests live beside them.
pub mod actor;
pub mod directory;
pub mod lease;
pub mod patient_keys;
pub mod queue;
pub mod token_id;
pub mod view;

pub use actor::{Action, Command, FacilityError, ScanReply};
pub use directory::Directory;
