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

/// Bars on stderr: one for the whole run, one per mailbox being fetched.
pub struct Bars {
    multi: MultiProgress,
    total: ProgressBar,
    per_mailbox: Mutex<HashMap<String, ProgressBar>>,
}

impl Bars {
    /// Bars if stderr is a terminal and `quiet` is off; otherwise silence.
    pub fn for_terminal(quiet: bool) -> Box<dyn Progress> {
        if quiet || !std::io::stderr().is_terminal() {
            return Box::new(Silent);
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let total = multi.add(ProgressBar::new(0));
        total.set_style(
            ProgressStyle::with_template(
                "{prefix:>12.bold} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        total.set_prefix("total");
        Box::new(Bars {
            multi,
            total,
            per_mailbox: Mutex::new(HashMap::new()),
        })
    }
}

impl Progress for Bars {
    fn mailbox_started(&self, mailbox: &str, messages: u64, bytes: u64) {
        self.total.inc_length(bytes);
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
