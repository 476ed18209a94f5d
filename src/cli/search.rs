//! `imapbak search`. STUB: to be implemented.

use anyhow::{bail, Result};

use super::AccountArgs;
use crate::exit_codes::ExitCode;

/// Not implemented yet.
#[derive(Debug, clap::Args)]
pub struct SearchCmd {
    #[command(flatten)]
    accounts: AccountArgs,
}

pub fn run(cmd: SearchCmd, config: Option<&std::path::Path>) -> Result<ExitCode> {
    let _ = (cmd, config);
    bail!("`imapbak search` is not implemented yet")
}
