//! Restore, moving into a folder; the whole of it is in `run.rs` until it is
//! split into plan/run/report/state.

mod run;
pub use run::*;
