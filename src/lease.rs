//! One active instance among those sharing a message store
//! (docs/architecture.md, "High availability").
//!
//! A daemon starts as a standby: it serves `/healthz` and `/metrics` and
//! waits ([`acquire`]) until it holds the store's lease (the row in
//! `store::lease`). Then it fences the store with its term (every commit
//! checks it), starts everything else, and a critical task ([`keep`])
//! renews the lease every third of its length. When a renewal finds
//! another holder, the daemon was deposed: [`keep`] fails, which stops the
//! daemon (its supervisor starts it again, as a standby).
//!
//! [`Lease::is_held`] is the local view for what no commit guards, the
//! answers published to the broker: it turns false once the lease may have
//! expired by this machine's monotonic clock (renewal start plus four
//! fifths of the length), before any standby can take over by the
//! database's clock.
//!
//! A SQLite store can only be shared by processes on one machine: there the
//! active instance also holds an exclusive lock on `<store>.lease`, which
//! the kernel releases when the process dies, so a restarted instance takes
//! over at once instead of waiting for the lease to expire.

use crate::backoff::sleep_or_shutdown;
use crate::config::LeaseConfig;
use crate::health::{Health, LeaseSeen, Role};
use crate::store::{Fence, Store};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often a standby looks at the lease.
const POLL: Duration = Duration::from_millis(500);

/// Why the lease was lost or could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another instance took the lease over.
    #[error(
        "this instance ({holder}, term {term}) lost the lease to {by} (term {new_term}): \
         it stops; started again it waits as a standby"
    )]
    Deposed {
        /// This instance.
        holder: String,
        /// The term it held.
        term: u64,
        /// The new holder.
        by: String,
        /// Its term.
        new_term: u64,
    },
    /// The SQLite store's lock file cannot be used.
    #[error("lock file {path}: {source}")]
    LockFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

#[derive(Debug)]
struct Inner {
    fence: Fence,
    base: Instant,
    /// Milliseconds after `base` until which the lease is surely held.
    until_ms: AtomicU64,
    lost: AtomicBool,
}

/// The lease this daemon holds; cheap to clone.
#[derive(Debug, Clone)]
pub struct Lease(Arc<Inner>);

impl Lease {
    fn new(fence: Fence, taken_at: Instant, length: Duration) -> Self {
        let lease = Self(Arc::new(Inner {
            fence,
            base: taken_at,
            until_ms: AtomicU64::new(0),
            lost: AtomicBool::new(false),
        }));
        lease.extend(taken_at, length);
        lease
    }

    /// The holder id and term.
    pub fn fence(&self) -> &Fence {
        &self.0.fence
    }

    /// Whether this instance surely still holds the lease: not deposed,
    /// and renewed recently enough by this machine's clock.
    pub fn is_held(&self) -> bool {
        !self.0.lost.load(Ordering::Acquire)
            && (self.0.base.elapsed().as_millis() as u64) < self.0.until_ms.load(Ordering::Acquire)
    }

    /// A renewal that started at `at` succeeded.
    fn extend(&self, at: Instant, length: Duration) {
        let until = at.saturating_duration_since(self.0.base) + length * 4 / 5;
        self.0
            .until_ms
            .fetch_max(until.as_millis() as u64, Ordering::AcqRel);
    }

    fn lose(&self) {
        self.0.lost.store(true, Ordering::Release);
    }
}

/// What holding the lease takes: the lease, and for a SQLite store the
/// lock file (released when dropped).
#[derive(Debug)]
pub struct Held {
    /// The lease.
    pub lease: Lease,
    /// The SQLite store's lock.
    pub lock: Option<std::fs::File>,
}

/// The lock file of the SQLite store at `store`.
pub fn lock_path(store: &Path) -> PathBuf {
    let mut p = store.as_os_str().to_owned();
    p.push(".lease");
    PathBuf::from(p)
}

/// Takes the lock file at `path` if no other process holds it.
fn try_lock(path: &Path) -> Result<Option<std::fs::File>, LeaseError> {
    let err = |source| LeaseError::LockFile {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(err)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(err(e)),
    }
}

/// Waits as a standby until this instance holds the lease, then fences
/// `store` with it. `lock`: the SQLite store's lock file. `None` if
/// `shutdown` came first.
pub async fn acquire(
    store: &Store,
    cfg: &LeaseConfig,
    lock: Option<&Path>,
    health: &Health,
    shutdown: &CancellationToken,
) -> Result<Option<Held>, LeaseError> {
    health.set_role(Role::Standby);
    let mut seen: Option<LeaseSeen> = None;
    let mut failing = false;
    loop {
        let file = match lock {
            Some(path) => try_lock(path)?,
            None => None,
        };
        let free = lock.is_none() || file.is_some();
        if free {
            let at = Instant::now();
            match store
                .take_lease(&cfg.instance, cfg.length, file.is_some())
                .await
            {
                Ok(Some(term)) => {
                    let fence = Fence {
                        holder: cfg.instance.clone(),
                        term,
                    };
                    store.fence(fence.clone());
                    health.set_role(Role::Active { term });
                    info!(target: "m2pool::lease", instance = %cfg.instance, term,
                          lease_secs = cfg.length.as_secs(), "lease taken: this instance is active");
                    return Ok(Some(Held {
                        lease: Lease::new(fence, at, cfg.length),
                        lock: file,
                    }));
                }
                Ok(None) => failing = false,
                Err(e) => {
                    if !failing {
                        warn!(target: "m2pool::lease", error = %e, "cannot reach the lease in the message store; retrying");
                    }
                    failing = true;
                }
            }
        }
        if let Ok(row) = store.lease().await {
            let now = LeaseSeen {
                holder: row.holder,
                term: row.term,
            };
            if seen.as_ref() != Some(&now) {
                info!(target: "m2pool::lease", instance = %cfg.instance, active = %now.holder, term = now.term,
                      "standby: another instance is active; taking over when its lease expires");
                health.saw_lease(now.clone());
                seen = Some(now);
            }
        }
        if sleep_or_shutdown(POLL, shutdown).await {
            return Ok(None);
        }
    }
}

/// Renews `lease` every third of `length` until `shutdown`, then releases
/// it. Fails when another instance took it over. A store that cannot be
/// reached is tried again every second; meanwhile [`Lease::is_held`] turns
/// false when the lease may have expired.
pub async fn keep(
    store: Store,
    lease: Lease,
    length: Duration,
    shutdown: CancellationToken,
) -> Result<(), LeaseError> {
    let fence = lease.fence().clone();
    let mut wait = length / 3;
    loop {
        if sleep_or_shutdown(wait, &shutdown).await {
            return Ok(());
        }
        let at = Instant::now();
        match store.renew_lease(&fence, length).await {
            Ok(true) => {
                lease.extend(at, length);
                wait = length / 3;
            }
            Ok(false) => {
                lease.lose();
                let now = store.lease().await.ok();
                return Err(LeaseError::Deposed {
                    holder: fence.holder,
                    term: fence.term,
                    by: now.as_ref().map_or_else(String::new, |r| r.holder.clone()),
                    new_term: now.map_or(0, |r| r.term),
                });
            }
            Err(e) => {
                warn!(target: "m2pool::lease", error = %e, held = lease.is_held(),
                      "cannot renew the lease; retrying");
                wait = Duration::from_secs(1).min(length / 3);
            }
        }
    }
}

/// Gives the lease up after a clean stop, so a standby takes over at once.
pub async fn release(store: &Store, lease: &Lease) {
    match store.release_lease(lease.fence()).await {
        Ok(()) => info!(target: "m2pool::lease", term = lease.fence().term, "lease released"),
        Err(e) => {
            warn!(target: "m2pool::lease", error = %e, "cannot release the lease; a standby takes over when it expires")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_until_four_fifths_of_the_length_after_the_renewal_started() {
        let fence = Fence {
            holder: "a".into(),
            term: 1,
        };
        let start = Instant::now();
        let lease = Lease::new(fence.clone(), start, Duration::from_secs(10));
        assert!(lease.is_held());
        let old = Instant::now()
            .checked_sub(Duration::from_secs(9))
            .unwrap_or(start);
        let lapsed = Lease::new(fence.clone(), old, Duration::from_secs(10));
        assert!(!lapsed.is_held(), "8 s after a renewal that began 9 s ago");
        lapsed.extend(Instant::now(), Duration::from_secs(10));
        assert!(lapsed.is_held(), "a renewal extends it");
        lapsed.extend(old, Duration::from_secs(10));
        assert!(lapsed.is_held(), "an older renewal never shortens it");
        lapsed.lose();
        assert!(!lapsed.is_held(), "deposed is deposed");
    }

    #[test]
    fn the_lock_file_admits_one_holder_and_frees_on_drop() {
        let dir = tempfile::tempdir().expect("dir");
        let path = lock_path(&dir.path().join("msg.db"));
        assert!(path.ends_with("msg.db.lease"));
        let first = try_lock(&path).expect("lock").expect("free");
        assert!(try_lock(&path).expect("lock").is_none(), "held");
        drop(first);
        assert!(try_lock(&path).expect("lock").is_some(), "freed");
    }
}
