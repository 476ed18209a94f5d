//! The `imapbak` binary: parse arguments, run, print the error chain, exit
//! with the documented code.

use std::io::Write;

use clap::Parser;
use imapbak::cli::{run, Cli};
use imapbak::exit_codes::ExitCode;

fn main() {
    let cli = Cli::parse();
    // -v and -vv are imapbak's own log; the dependencies' (rustls, globset,
    // ...) only through RUST_LOG, which replaces the default entirely.
    let level = match cli.verbose {
        0 => "warn",
        1 => "warn,imapbak=info",
        _ => "warn,imapbak=debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        // async-imap traces every command it sends, LOGIN included: never
        // let the password reach a log, whatever RUST_LOG says.
        .filter_module("async_imap", log::LevelFilter::Info)
        .filter_module("imap_proto", log::LevelFilter::Info)
        // The HTTP client of the OAuth2 flows: same rule for tokens.
        .filter_module("ureq", log::LevelFilter::Info)
        .filter_module("oauth2", log::LevelFilter::Info)
        .format(|buf, record| {
            let tag = match record.level() {
                log::Level::Error => "error",
                log::Level::Warn => "warning",
                log::Level::Info => "info",
                log::Level::Debug => "debug",
                log::Level::Trace => "trace",
            };
            if record.target().starts_with("imapbak") {
                writeln!(buf, "{tag}: {}", record.args())
            } else {
                // Someone else's line (RUST_LOG): say whose.
                writeln!(buf, "{tag}: [{}] {}", record.target(), record.args())
            }
        })
        .init();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if is_broken_pipe(&e) {
                ExitCode::Success
            } else {
                eprintln!("error: {}", imapbak::report::error_text(&e));
                ExitCode::Usage
            }
        }
    };
    std::process::exit(code.code());
}

/// A closed stdout (`imapbak ... | head`) is not an error.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
