//! Progress reporting. The core is handed a `Progress` sink and never sees
//! indicatif: bars on a terminal, nothing at all elsewhere (cron mail stays
//! quiet).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where the sync engine reports what it is doing.
pub trait Progress: Send + Sync {
    /// A mailbox starts downloading `messages` messages of `bytes` in total.
    fn mailbox_started(&self, mailbox: &str, messages: u64, bytes: u64);
    /// One message of `bytes` was written.
    fn message_written(&self, mailbox: &str, bytes: u64);
    fn mailbox_finished(&self, mailbox: &str);
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {
    fn mailbox_started(&self, _: &str, _: u64, _: u64) {}
    fn message_written(&self, _: &str, _: u64) {}
    fn mailbox_finished(&self, _: &str) {}
}

/// Bars on stderr: one line for the whole run, one bar per mailbox being
/// fetched. The run's total grows as mailboxes are planned, so its line
/// has no bar (a fraction of a growing total would move backwards), and it
/// appears only once there is something to fetch. Sizes are in the
/// summary's units (kB, MB: powers of 1000).
pub struct Bars {
    multi: MultiProgress,
    total: ProgressBar,
    total_shown: std::sync::atomic::AtomicBool,
    per_mailbox: Mutex<HashMap<String, ProgressBar>>,
}

const TOTAL_TEMPLATE: &str =
    "{prefix:>12.bold} {decimal_bytes} of {decimal_total_bytes} planned so far, {decimal_bytes_per_sec}";

impl Bars {
    /// Bars if stderr is a terminal and `quiet` is off; otherwise silence.
    pub fn for_terminal(quiet: bool) -> Box<dyn Progress> {
        if quiet || !std::io::stderr().is_terminal() {
            return Box::new(Silent);
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let total = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden());
        total.set_style(ProgressStyle::with_template(TOTAL_TEMPLATE).expect("valid template"));
        total.set_prefix("total");
        Box::new(Bars {
            multi,
            total,
            total_shown: std::sync::atomic::AtomicBool::new(false),
            per_mailbox: Mutex::new(HashMap::new()),
        })
    }
}

impl Progress for Bars {
    fn mailbox_started(&self, mailbox: &str, messages: u64, bytes: u64) {
        self.total.inc_length(bytes);
        if bytes > 0
            && !self
                .total_shown
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            self.multi.insert(0, self.total.clone());
        }
        let bar = self.multi.add(ProgressBar::new(messages));
        bar.set_style(
            ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} msgs  {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix("mailbox");
        bar.set_message(mailbox.to_string());
        self.per_mailbox
            .lock()
            .expect("progress lock")
            .insert(mailbox.to_string(), bar);
    }

    fn message_written(&self, mailbox: &str, bytes: u64) {
        self.total.inc(bytes);
        if let Some(bar) = self.per_mailbox.lock().expect("progress lock").get(mailbox) {
            bar.inc(1);
        }
    }

    fn mailbox_finished(&self, mailbox: &str) {
        if let Some(bar) = self
            .per_mailbox
            .lock()
            .expect("progress lock")
            .remove(mailbox)
        {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        self.total.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_line_has_no_bar_and_uses_the_summarys_units() {
        assert!(ProgressStyle::with_template(TOTAL_TEMPLATE).is_ok());
        assert!(!TOTAL_TEMPLATE.contains("{bar"));
        assert!(!TOTAL_TEMPLATE.contains("binary_"));
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden());
        bar.set_style(ProgressStyle::with_template(TOTAL_TEMPLATE).unwrap());
        bar.inc_length(2_000_000);
        bar.inc(1_000_000);
        assert_eq!(bar.position(), 1_000_000);
    }
}
