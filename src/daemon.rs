//! Wiring: open the store, start the listen task, the chains and the broker,
//! and run them until shutdown or until one of them fails.
//!
//! Every long-lived task is critical: if one returns an error or panics, the
//! daemon cancels the others and [`run`] returns that error, so a supervisor
//! (systemd, Docker) restarts it loudly instead of it limping on.

use crate::backoff::{Backoff, sleep_or_shutdown};
use crate::chain::{self, ChainContext, ChainError, ChainEvent};
use crate::config::Config;
use crate::health::Health;
use crate::http::{self, ApiDeps, HttpDeps};
use crate::lease::{self, LeaseError};
use crate::ledger;
use crate::listen::{Inbound, Listen, ListenError, Wakers};
use crate::metrics::{Metrics, SharedMetrics};
use crate::queue::Broker;
use crate::secret::CommKey;
use crate::server::Router;
use crate::store::{Store, StoreError};
use crate::txlog::TxLog;
use crate::wallet::{Kek, WalletError, WalletStore};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

/// Capacity of the consumers → listen channel (requests in flight).
const REQUEST_CHANNEL: usize = 4096;
/// Capacity of the chains → listen channel (blocks in flight).
const CHAIN_CHANNEL: usize = 256;

/// Why the daemon stopped other than by request.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The message store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The wallet store could not be opened.
    #[error(transparent)]
    Wallet(#[from] WalletError),
    /// A chain could not be set up.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The listen task could not start.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The transaction-log folder cannot be used.
    #[error("transaction logs in {dir}: {source}")]
    Logs {
        /// The folder.
        dir: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The lease could not be waited for.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// A critical task failed.
    #[error("critical task `{task}` failed: {source}")]
    Task {
        /// Task name.
        task: String,
        /// How it ended.
        source: TaskEnd,
    },
}

/// How a critical task ended before the daemon was asked to stop.
#[derive(Debug, thiserror::Error)]
pub enum TaskEnd {
    /// It returned an error.
    #[error(transparent)]
    Failed(Box<dyn std::error::Error + Send + Sync>),
    /// It panicked or was aborted.
    #[error("panicked or was aborted: {0}")]
    Panicked(#[from] tokio::task::JoinError),
    /// It returned without an error while the daemon was still running.
    #[error("stopped although no shutdown was asked for")]
    Stopped,
}

/// First failure of any critical task.
type Failure = Arc<Mutex<Option<RunError>>>;

fn spawn_critical<F, E>(
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
    failure: &Failure,
    task: String,
    fut: F,
) where
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    let inner = tracker.spawn(fut);
    let (shutdown, failure) = (shutdown.clone(), failure.clone());
    tracker.spawn(async move {
        let end = match inner.await {
            Ok(Ok(())) if shutdown.is_cancelled() => {
                info!(target: "m2pool::daemon", task = %task, "task stopped");
                return;
            }
            Ok(Ok(())) => TaskEnd::Stopped,
            Ok(Err(e)) => TaskEnd::Failed(Box::new(e)),
            Err(join) => TaskEnd::Panicked(join),
        };
        error!(target: "m2pool::daemon", task = %task, error = %end, "critical task failed; shutting down");
        if let Ok(mut slot) = failure.lock()
            && slot.is_none()
        {
            *slot = Some(RunError::Task { task, source: end });
        }
        shutdown.cancel();
    });
}

/// How often old requests and responses are pruned (`msg_config.keep_days`).
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Deletes requests and sent responses older than `keep` from the message
/// store, at start and then every hour; a failure is logged and tried again
/// at the next round (it costs disk, never a message).
async fn retention(
    store: Store,
    keep: std::time::Duration,
    shutdown: CancellationToken,
) -> Result<(), StoreError> {
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let cutoff = now.saturating_sub(keep).as_millis() as i64;
        match store.prune(cutoff).await {
            Ok((0, 0)) => {}
            Ok((requests, responses)) => {
                info!(target: "m2pool::store", requests, responses, keep_days = keep.as_secs() / 86_400,
                      "old requests and responses deleted");
            }
            Err(e) => {
                warn!(target: "m2pool::store", error = %e, "pruning the message store failed; trying again later")
            }
        }
        match store.prune_webhooks(cutoff).await {
            Ok(0) => {}
            Ok(deliveries) => {
                info!(target: "m2pool::store", deliveries, "old delivered webhooks deleted")
            }
            Err(e) => {
                warn!(target: "m2pool::store", error = %e, "pruning webhook deliveries failed; trying again later")
            }
        }
        if crate::backoff::sleep_or_shutdown(PRUNE_EVERY, &shutdown).await {
            return Ok(());
        }
    }
}

/// Opens with `open` until it succeeds, waiting (with a warning each time)
/// while it fails in a way `unreachable` says a wait may cure; `None` if
/// `shutdown` came first.
async fn patiently<T, E, F, Fut>(
    what: &'static str,
    shutdown: &CancellationToken,
    unreachable: impl Fn(&E) -> bool,
    mut open: F,
) -> Result<Option<T>, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
    loop {
        match open().await {
            Ok(t) => return Ok(Some(t)),
            Err(e) if unreachable(&e) => {
                let (delay, attempt) = backoff.next_delay();
                warn!(target: "m2pool::daemon", store = what, attempt, error = %e, "cannot reach the store; waiting");
                if sleep_or_shutdown(delay, shutdown).await {
                    return Ok(None);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// The daemon's secrets.
#[derive(Debug, Clone)]
pub struct Secrets {
    /// Signs and verifies every message.
    pub comm: CommKey,
    /// Encrypts the wallet keys; derived from `comm` when `None`.
    pub wallet: Option<Kek>,
}

impl Secrets {
    /// The wallet key-encryption key (configured, or derived from `comm`).
    pub fn kek(&self) -> Kek {
        self.wallet
            .clone()
            .unwrap_or_else(|| Kek::from_comm_key(self.comm.expose()))
    }
}

/// Runs the daemon until `shutdown` is cancelled or a critical task fails.
pub async fn run(
    config: Config,
    secrets: Secrets,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    // A database server that cannot be reached yet (it is starting, or
    // restarting) is waited for; anything else stops the daemon.
    let Some(store) = patiently(
        "message store",
        &shutdown,
        |e: &StoreError| config.msg_mysql.is_some() && matches!(e, StoreError::Open { .. }),
        || async {
            match &config.msg_mysql {
                Some(m) => Store::open_mysql(m).await,
                None => Store::open(&config.msg_store).await,
            }
        },
    )
    .await?
    else {
        return Ok(());
    };
    let mysql_wallets = matches!(config.wallet_store, crate::config::WalletStore::Mysql(_));
    let Some(wallets) = patiently(
        "wallet store",
        &shutdown,
        |e: &WalletError| mysql_wallets && matches!(e, WalletError::Connect { .. }),
        || WalletStore::open(&config.wallet_store),
    )
    .await?
    else {
        store.close().await;
        return Ok(());
    };
    if secrets.wallet.is_none() {
        warn!(target: "m2pool::daemon",
              "no wallet key configured: wallet keys are encrypted with a key derived from the communication key");
    }
    for w in config.warnings() {
        warn!(target: "m2pool::daemon", warning = %w, "configuration");
    }
    info!(target: "m2pool::daemon", store = %config.msg_store_target(), nets = ?config.net_names(),
          "starting");
    let health = Health::default();
    let metrics: SharedMetrics = Arc::new(Metrics::default());
    let tracker = TaskTracker::new();
    let failure: Failure = Arc::new(Mutex::new(None));
    let wakers = Wakers {
        outbox: Arc::new(Notify::new()),
        stream: Arc::new(Notify::new()),
        ledger: Arc::new(Notify::new()),
        payouts: config
            .net_names()
            .into_iter()
            .map(|n| (n, Arc::new(Notify::new())))
            .collect(),
        lookback: config
            .net_names()
            .into_iter()
            .map(|n| (n, Arc::new(Notify::new())))
            .collect(),
    };
    let (req_tx, req_rx) = mpsc::channel::<Inbound>(REQUEST_CHANNEL);
    let (chain_tx, chain_rx) = mpsc::channel::<ChainEvent>(CHAIN_CHANNEL);
    // Opened by the broker once the requests queued at start are handed over.
    let (caught_up_tx, caught_up_rx) = watch::channel(false);

    // The stream of answers, numbered by its sequencer (which also plans
    // the webhooks) once this instance is active; served when the API is on.
    let hub = http::stream::Hub::new(wakers.stream.clone());
    if let Some(addr) = config.http_listen {
        let api = config.api.as_ref().map(|a| ApiDeps {
            router: Router::new(&config, secrets.comm.clone()),
            tokens: Arc::new(crate::listen::Tokens::new(&config)),
            token: a.token.clone().map(Arc::new),
            stream: hub.clone(),
            shutdown: shutdown.clone(),
        });
        let limits = crate::health::Limits {
            head_stall: config
                .networks
                .iter()
                .map(|n| (n.name.clone(), n.evm.head_stall))
                .collect(),
            balance_poll: config
                .networks
                .iter()
                .map(|n| (n.name.clone(), n.evm.alerts.poll))
                .collect(),
            max_cursor_lag: config.health.max_cursor_lag,
            max_outbox_age: config.health.max_outbox_age,
        };
        let console = match &config.console_token {
            None => None,
            Some(_) => crate::console::Console::new(
                &config,
                Store::open_reader(&config).await?,
                wallets.clone(),
                health.clone(),
                metrics.clone(),
                limits.clone(),
            ),
        };
        let deps = HttpDeps {
            api,
            console,
            health: health.clone(),
            metrics: metrics.clone(),
            store: store.clone(),
            requests: req_tx.downgrade(),
            chain: chain_tx.downgrade(),
            limits,
            nets: config.net_names(),
        };
        spawn_critical(
            &tracker,
            &shutdown,
            &failure,
            "http".into(),
            http::serve(addr, deps, shutdown.clone()),
        );
    }

    // A standby until this instance holds the lease (docs/architecture.md,
    // "High availability"): only the endpoint above runs meanwhile.
    let lock = config
        .msg_mysql
        .is_none()
        .then(|| lease::lock_path(&config.msg_store));
    let warm = CancellationToken::new();
    match &config.rmq {
        Some(rmq) => {
            tracker.spawn(crate::queue::keep_warm(
                rmq.clone(),
                health.clone(),
                warm.clone(),
                shutdown.clone(),
            ));
        }
        None => health.set_no_broker(),
    }
    let acquired = lease::acquire(&store, &config.lease, lock.as_deref(), &health, &shutdown).await;
    warm.cancel();
    let held = match acquired {
        Ok(Some(held)) => held,
        Ok(None) => return wind_down(tracker, failure, &store, &wallets, None).await,
        Err(e) => {
            shutdown.cancel();
            wind_down(tracker, failure, &store, &wallets, None).await?;
            return Err(e.into());
        }
    };
    // Renewed until every other task has finished, so that a drain at
    // shutdown (listen's last commit, the relay's flush) still holds it;
    // its own tracker, waited for after theirs.
    let keeper = TaskTracker::new();
    let keep_until = CancellationToken::new();
    spawn_critical(
        &keeper,
        &shutdown,
        &failure,
        "lease".into(),
        lease::keep(
            store.clone(),
            held.lease.clone(),
            config.lease.length,
            keep_until.clone(),
        ),
    );
    let keeping = Keeping {
        keeper,
        keep_until,
        lease: held.lease.clone(),
    };

    // No other program may consume the request queues (a second gateway
    // with a store of its own): wait while one does.
    if let Some(rmq) = &config.rmq
        && !crate::queue::wait_for_queues(rmq, &health, &shutdown).await
    {
        return wind_down(tracker, failure, &store, &wallets, Some(keeping)).await;
    }

    let (txlog, txlog_writer) = match &config.log.txlog_dir {
        Some(dir) => {
            let (log, _, writer) =
                TxLog::start(dir, config.log.max_open_files).map_err(|source| RunError::Logs {
                    dir: dir.clone(),
                    source,
                })?;
            (log, Some(writer))
        }
        None => (TxLog::disabled(), None),
    };
    let listen = Listen::new(
        store.clone(),
        &config,
        wakers.clone(),
        txlog.clone(),
        metrics.clone(),
        health.clone(),
    )
    .await?;
    // Set when listen has committed its last batch: the relay's cue to finish.
    let drained = CancellationToken::new();
    let listen_done = drained.clone();
    let stop = shutdown.clone();
    let facts: Arc<dyn chain::PayoutFacts> = Arc::new(listen.recorder());
    spawn_critical(&tracker, &shutdown, &failure, "listen".into(), async move {
        let r = listen.run(req_rx, chain_rx, caught_up_rx, stop).await;
        listen_done.cancel();
        r
    });

    let webhooks_wake = Arc::new(Notify::new());
    spawn_critical(
        &tracker,
        &shutdown,
        &failure,
        "stream".into(),
        http::stream::sequence(
            store.clone(),
            hub,
            crate::webhook::Planner::new(&config.webhooks),
            webhooks_wake.clone(),
            shutdown.clone(),
        ),
    );
    spawn_critical(
        &tracker,
        &shutdown,
        &failure,
        "webhooks".into(),
        crate::webhook::dispatch::dispatch(
            store.clone(),
            config.webhooks.clone(),
            secrets.comm.clone(),
            webhooks_wake,
            metrics.clone(),
            shutdown.clone(),
        ),
    );

    let kek = secrets.kek();
    for network in &config.networks {
        let net = &network.name;
        let ctx = ChainContext {
            store: store.clone(),
            wallets: wallets.clone(),
            kek: kek.clone(),
            payout_wake: wakers.payouts.get(net).cloned().unwrap_or_default(),
            lookback_wake: wakers.lookback.get(net).cloned().unwrap_or_default(),
            facts: facts.clone(),
            health: health.clone(),
            metrics: metrics.clone(),
        };
        let c = chain::build(network, ctx).await?;
        let name = format!("chain-{}", c.name());
        spawn_critical(
            &tracker,
            &shutdown,
            &failure,
            name,
            c.run(chain_tx.clone(), shutdown.clone()),
        );
    }
    drop(chain_tx);

    if let Some(keep) = config.keep {
        spawn_critical(
            &tracker,
            &shutdown,
            &failure,
            "retention".into(),
            retention(store.clone(), keep, shutdown.clone()),
        );
    }

    spawn_critical(
        &tracker,
        &shutdown,
        &failure,
        "ledger".into(),
        ledger::relay(
            store.clone(),
            wallets.clone(),
            wakers.ledger.clone(),
            shutdown.clone(),
        ),
    );

    match &config.rmq {
        Some(rmq) => {
            let broker = Broker {
                cfg: rmq.clone(),
                router: Router::new(&config, secrets.comm.clone()),
                requests: req_tx,
                store: store.clone(),
                outbox: wakers.outbox.clone(),
                health: health.clone(),
                txlog,
                metrics: metrics.clone(),
                caught_up: caught_up_tx,
                lease: held.lease.clone(),
            };
            spawn_critical(
                &tracker,
                &shutdown,
                &failure,
                "broker".into(),
                broker.run(shutdown.clone(), drained),
            );
        }
        None => {
            // Requests come over HTTP only: nothing is queued elsewhere
            // for listen to wait for. The channel stays open until
            // shutdown (the HTTP handlers hold only weak handles), as the
            // broker task keeps it while its consumers run.
            let _ = caught_up_tx.send(true);
            let until = shutdown.clone();
            tracker.spawn(async move {
                until.cancelled().await;
                drop(req_tx);
            });
            spawn_critical(
                &tracker,
                &shutdown,
                &failure,
                "outbox".into(),
                crate::queue::settle(
                    store.clone(),
                    wakers.outbox.clone(),
                    txlog,
                    held.lease.clone(),
                    shutdown.clone(),
                    drained,
                ),
            );
        }
    }

    let stopped = wind_down(tracker, failure, &store, &wallets, Some(keeping)).await;
    drop(held.lock);
    if let Some(writer) = txlog_writer {
        // Every handle is gone with its task: the writer drains and ends.
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    }
    stopped
}

/// The lease's renewal, run apart from the other tasks so that it outlives
/// them.
struct Keeping {
    keeper: TaskTracker,
    keep_until: CancellationToken,
    lease: lease::Lease,
}

/// Waits for every task, then stops renewing the lease and gives it up (a
/// standby need not wait for it to expire), closes the stores, and returns
/// the first task failure.
async fn wind_down(
    tracker: TaskTracker,
    failure: Failure,
    store: &Store,
    wallets: &WalletStore,
    keeping: Option<Keeping>,
) -> Result<(), RunError> {
    tracker.close();
    tracker.wait().await;
    if let Some(k) = keeping {
        k.keep_until.cancel();
        k.keeper.close();
        k.keeper.wait().await;
        lease::release(store, &k.lease).await;
    }
    store.close().await;
    wallets.close().await;
    let failed = failure.lock().ok().and_then(|mut f| f.take());
    match failed {
        Some(e) => Err(e),
        None => {
            info!(target: "m2pool::daemon", "stopped");
            Ok(())
        }
    }
}
