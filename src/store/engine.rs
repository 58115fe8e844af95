//! The database engine behind the store (docs/architecture.md, "Adding a
//! store engine"). The rest of the daemon sees only [`Store`] and
//! [`StoreTx`](super::StoreTx); no `sqlx` type leaves this module's parent.
//! Statements go through `sqlx`'s `Any` driver and are written once in the
//! SQL the engines share; the few an engine words its own way are picked by
//! [`Engine`] where they are used. Opening, pragmas and migrations, which
//! differ most, are here.

use super::{Store, StoreError};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, install_default_drivers};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AnyPool, ConnectOptions, Executor};
use std::path::Path;
use std::time::Duration;

/// Which database holds the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// An embedded SQLite file (WAL, `synchronous=FULL`), written by this
    /// process alone.
    Sqlite,
}

/// How long a SQLite writer of another process (a tool) is waited for.
const SQLITE_BUSY: Duration = Duration::from_secs(30);

/// A pool of at most `connections` to the SQLite file at `path`: created
/// and written (WAL, `synchronous=FULL`, foreign keys) or, `read_only`,
/// looked at.
async fn sqlite_pool(
    path: &Path,
    connections: u32,
    read_only: bool,
) -> Result<AnyPool, StoreError> {
    install_default_drivers();
    let open_err = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    let file = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(!read_only)
        .read_only(read_only);
    let opts = AnyConnectOptions::from_url(&file.to_url_lossy()).map_err(open_err)?;
    let pragmas = if read_only {
        format!("PRAGMA busy_timeout = {}", SQLITE_BUSY.as_millis())
    } else {
        format!(
            "PRAGMA busy_timeout = {}; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = ON",
            SQLITE_BUSY.as_millis()
        )
    };
    AnyPoolOptions::new()
        .max_connections(connections)
        .after_connect(move |conn, _| {
            let pragmas = pragmas.clone();
            Box::pin(async move {
                conn.execute(sqlx::AssertSqlSafe(pragmas)).await?;
                Ok(())
            })
        })
        .connect_with(opts)
        .await
        .map_err(open_err)
}

impl Store {
    /// Opens (creating if needed) and migrates the SQLite store at `path`.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let pool = sqlite_pool(path, 4, false).await?;
        // SQLite has no migration lock: when another process (a tool, a test)
        // migrates the same file at the same moment, one of the two fails
        // half-way; running again finds the migration applied.
        let mut tries = 0;
        loop {
            match sqlx::migrate!("./migrations/store").run(&pool).await {
                Ok(()) => break,
                Err(_) if tries < 3 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100 * tries)).await;
                }
                Err(source) => {
                    return Err(StoreError::Migrate {
                        path: path.to_owned(),
                        source,
                    });
                }
            }
        }
        Ok(Self::new(pool, Engine::Sqlite))
    }

    /// Opens an existing SQLite store read-only, without migrating: for
    /// tools and tests that look while the daemon runs.
    pub async fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        Ok(Self::new(sqlite_pool(path, 1, true).await?, Engine::Sqlite))
    }

    /// The engine holding this store.
    pub fn engine(&self) -> Engine {
        self.engine
    }
}
