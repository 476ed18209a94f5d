//! The integration tests: one binary, one private Dovecot for all of them
//! (tests/support), the real `imapbak` binary run against it.

#[path = "../support/mod.rs"]
mod support;

mod archive_tools;
mod chaos;
mod command_proxy;
mod contrib;
mod expunge;
mod fakes;
mod faults;
mod first_hour;
mod first_hour_more;
mod gmail;
mod harness;
mod interop;
mod namespace;
mod oauth2;
mod orgs;
mod orgs_runs;
mod perf;
mod pull;
mod restore;
mod serve;
mod write_protocol;
