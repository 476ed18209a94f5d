//! `imapbak completions SHELL`: the shell completion script, generated
//! from the same clap definitions as the help and the man pages.

use anyhow::Result;
use clap::CommandFactory;
use clap_complete::Shell;

use super::Cli;
use crate::exit_codes::ExitCode;

const LONG_HELP: &str = "\
     Prints the completion script for SHELL on stdout. Install it where the \
     shell looks, e.g.:\n\n  \
     imapbak completions bash > ~/.local/share/bash-completion/completions/imapbak\n  \
     imapbak completions zsh > ~/.zfunc/_imapbak   # with fpath+=(~/.zfunc)\n  \
     imapbak completions fish > ~/.config/fish/completions/imapbak.fish\n\n\
     scripts/install.sh installs them with the binary and the man pages.";

/// Print a shell completion script (bash, zsh, fish, elvish, powershell).
#[derive(Debug, clap::Args)]
#[command(after_long_help = LONG_HELP)]
pub struct CompletionsCmd {
    /// The shell to complete for
    #[arg(value_enum, value_name = "SHELL")]
    shell: Shell,
}

pub fn run(cmd: CompletionsCmd) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    clap_complete::generate(cmd.shell, &mut Cli::command(), "imapbak", &mut out);
    Ok(ExitCode::Success)
}
