//! Ctrl-C and SIGTERM for the commands that write (pull, restore, expunge).
//! The first signal only sets a process-wide flag: the executors stop
//! sending new commands where they check [`requested`] (the pool between
//! items, pull between FETCH batches, restore between APPEND batches), the
//! answers already on their way are read and recorded, and the command
//! exits with 130 (SIGINT) or 143 (SIGTERM). If that takes longer than
//! [`GRACE_SECS`], or a second signal arrives, the process exits at once
//! with the same status: that is as safe as `kill -9`, which every
//! command's state already tolerates.

use std::sync::atomic::{AtomicI32, Ordering};

/// How long the commands in flight get to finish after the first signal.
pub const GRACE_SECS: u32 = 10;

/// 0, or the number of the first signal received.
static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Which signal asked the run to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    /// SIGINT (Ctrl-C).
    Int,
    /// SIGTERM (kill, systemd stop, docker stop).
    Term,
}

/// The signal that asked the run to stop, if any: check it before sending
/// a new command.
pub fn requested() -> Option<Interrupt> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        libc::SIGTERM => Some(Interrupt::Term),
        _ => Some(Interrupt::Int),
    }
}

fn status_of(sig: i32) -> i32 {
    128 + sig
}

/// Installs the handlers for SIGINT and SIGTERM (and SIGALRM for the grace
/// period). Called once, by the commands that write, before they start.
pub fn install() {
    // SAFETY: the handlers only touch an atomic and call async-signal-safe
    // functions (write, alarm, _exit); sigaction is given a zeroed,
    // properly initialised struct.
    unsafe {
        for (sig, handler) in [
            (libc::SIGINT, on_signal as extern "C" fn(libc::c_int)),
            (libc::SIGTERM, on_signal),
            (libc::SIGALRM, on_alarm),
        ] {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    let first = SIGNAL
        .compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok();
    let msg: &[u8] = if first {
        b"\nimapbak: stopping after the commands in flight (press Ctrl-C again to quit now)\n"
    } else {
        b"\nimapbak: quitting now\n"
    };
    // SAFETY: write, alarm and _exit are async-signal-safe.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        if first {
            libc::alarm(GRACE_SECS);
        } else {
            libc::_exit(status_of(SIGNAL.load(Ordering::SeqCst)));
        }
    }
}

extern "C" fn on_alarm(_: libc::c_int) {
    let msg = b"imapbak: the commands in flight did not finish in time; quitting\n";
    // SAFETY: write and _exit are async-signal-safe.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::_exit(status_of(SIGNAL.load(Ordering::SeqCst)));
    }
}
