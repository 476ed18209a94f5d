//! The sync engine: pure planners (`plan`) that turn a server listing, the
//! archive's state and the options into actions, and the executor (`pull`)
//! that runs them against a [`remote::Remote`] and the archive.

pub mod expunge;
pub mod plan;
pub mod pool;
pub mod pull;
pub mod remote;
pub mod restore;
