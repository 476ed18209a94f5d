//! The integration tests: one binary, one private Dovecot for all of them
//! (tests/support), the real `imapbak` binary run against it.

#[path = "../support/mod.rs"]
mod support;

mod archive_tools;
mod expunge;
mod fakes;
mod faults;
mod harness;
mod namespace;
mod perf;
mod pull;
mod restore;
mod serve;
