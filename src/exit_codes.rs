//! Exit codes, in one place: cron users read them (the man page lists them).

/// How a run ended, as the process exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExitCode {
    /// Everything asked for was done (including "nothing to do").
    Success,
    /// Some messages or mailboxes failed; the rest was done.
    Partial,
    /// Bad command line or configuration; nothing was done.
    Usage,
    /// Could not connect, secure the connection, or log in.
    Connection,
    /// The archive is locked by another run.
    Locked,
    /// A bug or an unexpected failure of the whole run.
    Internal,
    /// The target server is over quota; the run stopped (restore).
    QuotaFull,
    /// Stopped by SIGINT (Ctrl-C) after the commands in flight.
    Interrupted,
    /// Stopped by SIGTERM after the commands in flight.
    Terminated,
}

impl ExitCode {
    pub fn code(self) -> i32 {
        match self {
            ExitCode::Success => 0,
            ExitCode::Partial => 1,
            ExitCode::Usage => 2,
            ExitCode::Connection => 3,
            ExitCode::Locked => 4,
            ExitCode::Internal => 5,
            ExitCode::QuotaFull => 6,
            // 128 + the signal's number, as shells report a death by signal.
            ExitCode::Interrupted => 130,
            ExitCode::Terminated => 143,
        }
    }

    /// The table printed in `--help` and the man page.
    pub const TABLE: &'static str = "\
Exit status:
    0  success (also: nothing to do)
    1  partial failure: some messages or mailboxes failed, the rest was done
    2  usage or configuration error; nothing was done
    3  connection, TLS or authentication failure
    4  the archive is locked by another imapbak run
    5  internal error
    6  restore stopped: the target server is over quota
  130  stopped by Ctrl-C (SIGINT) after the commands in flight; run it again
  143  stopped by SIGTERM after the commands in flight; run it again";
}
