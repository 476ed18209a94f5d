//! Exit codes, in one place: cron users read them (the man page lists them).

/// How a run ended, as the process exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExitCode {
    /// Everything asked for was done (including "nothing to do").
    Success,
    /// Some messages, mailboxes or accounts failed; the rest was done.
    Partial,
    /// Bad command line or configuration; nothing was done.
    Usage,
    /// Could not connect, secure the connection, or log in; nothing was done.
    Connection,
    /// The archive is locked by another run.
    Locked,
    /// A bug or an unexpected failure of the whole run.
    Internal,
    /// The target server is over quota; the run stopped (restore).
    QuotaFull,
    /// Pull stopped at the account's daily download limit; what was
    /// fetched is saved and the next run continues.
    DailyLimit,
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
            ExitCode::DailyLimit => 7,
            // 128 + the signal's number, as shells report a death by signal.
            ExitCode::Interrupted => 130,
            ExitCode::Terminated => 143,
        }
    }

    /// The status of a run over several accounts, from each account's own:
    /// 0 when all went well, 1 when something failed but something else
    /// was done, and an account-level code (2 and up) only when no account
    /// got anywhere (the highest of them). A cron job must not read "nothing
    /// was done" when one account of two was backed up.
    pub fn for_accounts(codes: impl IntoIterator<Item = ExitCode>) -> ExitCode {
        let mut worst = ExitCode::Success;
        let mut some_done = false;
        let mut all_ok = true;
        for c in codes {
            some_done |= c <= ExitCode::Partial;
            all_ok &= c == ExitCode::Success;
            worst = worst.max(c);
        }
        if all_ok {
            ExitCode::Success
        } else if some_done {
            ExitCode::Partial
        } else {
            worst
        }
    }

    /// The table printed in `--help` and the man page.
    pub const TABLE: &'static str = "\
Exit status:
    0  success (also: nothing to do)
    1  partial failure: some messages, mailboxes or accounts failed, the
       rest was done (with several accounts, any account that failed while
       another succeeded gives 1)
    2  usage or configuration error, or no archive yet at the configured
       path (or it is not a directory); nothing was done
    3  connection, TLS or authentication failure; nothing was done
    4  the archive is locked by another imapbak run
    5  internal error
    6  restore stopped: the target server is over quota
    7  pull stopped at the account's daily-download-limit (Gmail: 2,400 MB
       by default); everything fetched is saved, the next run continues
  130  stopped by Ctrl-C (SIGINT) after the commands in flight; run it again
  143  stopped by SIGTERM after the commands in flight; run it again";
}

#[cfg(test)]
mod tests {
    use super::ExitCode::{self, *};

    #[test]
    fn one_failed_account_of_two_is_a_partial_run() {
        assert_eq!(ExitCode::for_accounts([Success, Usage]), Partial);
        assert_eq!(ExitCode::for_accounts([Connection, Success]), Partial);
        assert_eq!(ExitCode::for_accounts([Partial, Locked]), Partial);
    }

    #[test]
    fn account_level_codes_only_when_no_account_got_anywhere() {
        assert_eq!(ExitCode::for_accounts([]), Success);
        assert_eq!(ExitCode::for_accounts([Success, Success]), Success);
        assert_eq!(ExitCode::for_accounts([Usage, Usage]), Usage);
        assert_eq!(ExitCode::for_accounts([Usage, Connection]), Connection);
        assert_eq!(ExitCode::for_accounts([Partial, Partial]), Partial);
    }
}
