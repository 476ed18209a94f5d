//! `imapbak ls`. STUB: to be implemented.

use anyhow::{bail, Result};

use super::AccountArgs;
use crate::exit_codes::ExitCode;

/// Not implemented yet.
#[derive(Debug, clap::Args)]
pub struct LsCmd {
    #[command(flatten)]
    accounts: AccountArgs,
}

pub fn run(cmd: LsCmd, config: Option<&std::path::Path>) -> Result<ExitCode> {
    let _ = (cmd, config);
    bail!("`imapbak ls` is not implemented yet")
}
