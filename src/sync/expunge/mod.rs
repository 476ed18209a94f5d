//! Expunge, moved into a folder; the next commit splits `run.rs` into
//! plan/run/report/state.

mod run;

pub use run::*;
