//! Who writes the lines: the writer thread, on idle CPU only, and a
//! catch-up thread at normal priority when the writer falls far behind.
//!
//! The writer runs under `SCHED_IDLE` so that it never takes a core from
//! the daemon's own work (see [`super::lower_priority`]). On a machine that
//! something else keeps busy (a node syncing beside the daemon, say) such a
//! thread gets almost no CPU, and once its queue is full listen would wait
//! on the logs. So a second thread, at nice 10, looks at the queue a few
//! times a second; when it holds more than [`Marks::high`] lines it takes
//! over and writes until [`Marks::low`] are left, then hands back. Both
//! write through the one [`Writer`] under a lock and take lines off the one
//! queue, one at a time, so the files keep the lines' order.

use super::{Line, Writer};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::mpsc::{self, error::TryRecvError};

/// When the catch-up thread takes over, and until when.
#[derive(Debug, Clone, Copy)]
pub(super) struct Marks {
    /// Lines waiting above which it takes over.
    pub high: usize,
    /// Lines waiting at or below which it hands back.
    pub low: usize,
    /// How often it looks at the queue.
    pub every: Duration,
}

/// The queue and the files, owned by whichever thread writes.
pub(super) struct Shared {
    pub rx: mpsc::Receiver<Line>,
    pub writer: Writer,
}

/// The lock over [`Shared`], and the flag by which the catch-up thread
/// asks the writer thread to step aside (woken through the condvar once
/// it is done).
pub(super) struct Handover {
    shared: Mutex<Shared>,
    wanted: AtomicBool,
    done: Condvar,
}

impl Handover {
    pub(super) fn new(shared: Shared) -> Self {
        Self {
            shared: Mutex::new(shared),
            wanted: AtomicBool::new(false),
            done: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A writer that panicked left the files as they were: go on.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The writer thread's loop: every line, in order, until the queue's
    /// senders are all gone; it steps aside at a line's end while the
    /// catch-up thread writes.
    pub(super) fn write_all(&self) {
        let mut g = self.lock();
        loop {
            if self.wanted.load(Ordering::Acquire) {
                g = self
                    .done
                    .wait_while(g, |_| self.wanted.load(Ordering::Acquire))
                    .unwrap_or_else(PoisonError::into_inner);
            }
            let Some(line) = g.rx.blocking_recv() else {
                break;
            };
            g.writer.write_logged(&line);
        }
    }

    /// Takes over and writes until `low` lines are left (or none, or the
    /// queue is closed); `true` once the queue is closed and empty.
    pub(super) fn catch_up(&self, low: usize) -> bool {
        self.wanted.store(true, Ordering::Release);
        let _back = HandBack(self);
        let mut g = self.lock();
        loop {
            // At the low mark it hands back; with nothing queued it asks
            // once more, which tells an empty queue from a closed one.
            if g.rx.len() <= low && !g.rx.is_empty() {
                return false;
            }
            match g.rx.try_recv() {
                Ok(line) => {
                    g.writer.write_logged(&line);
                    g.writer.stats.caught_up.fetch_add(1, Ordering::Relaxed);
                }
                Err(TryRecvError::Empty) => return false,
                Err(TryRecvError::Disconnected) => return true,
            }
        }
    }

    /// The catch-up thread's loop: looks at the queue every `marks.every`
    /// through `queue` (which does not keep it open) and catches up when
    /// more than `marks.high` lines wait; ends once the queue's senders are
    /// all gone.
    pub(super) fn watch(&self, queue: &mpsc::WeakSender<Line>, capacity: usize, marks: Marks) {
        loop {
            // Woken early by the writer thread when it has ended.
            std::thread::park_timeout(marks.every);
            let Some(sender) = queue.upgrade() else {
                // Every sender is gone. What the writer thread left (it
                // ended early only if it panicked) is written here.
                self.catch_up(0);
                return;
            };
            let waiting = capacity.saturating_sub(sender.capacity());
            drop(sender);
            if waiting > marks.high && self.catch_up(marks.low) {
                return;
            }
        }
    }

    /// The files, once both threads are done.
    pub(super) fn into_writer(self) -> Writer {
        self.shared
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
            .writer
    }
}

/// Hands the files back to the writer thread when a catch-up ends, also by
/// a panic: `wanted` is cleared under the lock, so that the writer, which
/// checks it under the lock, cannot miss the change between its check and
/// its wait; then the writer is woken.
struct HandBack<'a>(&'a Handover);

impl Drop for HandBack<'_> {
    fn drop(&mut self) {
        {
            let _g = self.0.lock();
            self.0.wanted.store(false, Ordering::Release);
        }
        self.0.done.notify_all();
    }
}
