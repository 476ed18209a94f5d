//! `imapbak quota`. STUB: to be implemented.

use anyhow::{bail, Result};

use super::AccountArgs;
use crate::exit_codes::ExitCode;

/// Not implemented yet.
#[derive(Debug, clap::Args)]
pub struct QuotaCmd {
    #[command(flatten)]
    accounts: AccountArgs,
}

pub fn run(cmd: QuotaCmd, config: Option<&std::path::Path>) -> Result<ExitCode> {
    let _ = (cmd, config);
    bail!("`imapbak quota` is not implemented yet")
}
