//! How every command reports a run: the [`Summary`] trait (`Display` for
//! people, one line when all went well; `Serialize` for `--json`, the object
//! documented in the man page), error text and byte counts. Each command's
//! own report types live beside its executor (`sync/<command>/report.rs`).

use std::fmt;

use serde::Serialize;

/// A run's summary as every subcommand prints it: problems to stderr, then
/// JSON (`--json`) or one human line to stdout (none with `--quiet`).
pub trait Summary: fmt::Display + Serialize {
    /// One `error:` (or `warning:`) line per problem, for stderr.
    fn problems(&self) -> Vec<String>;

    fn print(&self, json: bool, quiet: bool) -> serde_json::Result<()> {
        for line in self.problems() {
            eprintln!("{line}");
        }
        if json {
            println!("{}", serde_json::to_string_pretty(self)?);
        } else if !quiet {
            println!("{self}");
        }
        Ok(())
    }
}

/// An error chain as one `cause: cause: ...` line, with any `hint:` lines
/// (which context messages may carry) moved after it, so the hint is the
/// last thing the user reads.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut causes = Vec::new();
    let mut hints = Vec::new();
    for layer in e.chain() {
        for line in layer.to_string().lines() {
            if line.starts_with("hint:") {
                hints.push(line.to_string());
            } else if !line.trim().is_empty() {
                causes.push(line.to_string());
            }
        }
    }
    let mut out = causes.join(": ");
    for h in hints {
        out.push('\n');
        out.push_str(&h);
    }
    out
}

/// Bytes in human units (base 1000, as `ls -h --si`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < UNITS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_come_after_the_whole_cause_chain() {
        let e = anyhow::anyhow!("no such file")
            .context("cannot read `x.toml`\nhint: pass --config PATH");
        assert_eq!(
            error_text(&e),
            "cannot read `x.toml`: no such file\nhint: pass --config PATH"
        );
    }

    #[test]
    fn human_bytes_uses_si_units() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_500_000), "1.5 MB");
    }
}
