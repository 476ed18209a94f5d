//! `imapbak show`. STUB: to be implemented.

use anyhow::{bail, Result};

use super::AccountArgs;
use crate::exit_codes::ExitCode;

/// Not implemented yet.
#[derive(Debug, clap::Args)]
pub struct ShowCmd {
    #[command(flatten)]
    accounts: AccountArgs,
}

pub fn run(cmd: ShowCmd, config: Option<&std::path::Path>) -> Result<ExitCode> {
    let _ = (cmd, config);
    bail!("`imapbak show` is not implemented yet")
}
