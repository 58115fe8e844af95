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
    /// A MySQL 8 or MariaDB 10.6+ database (InnoDB, `READ COMMITTED`
    /// transactions), which instances on several machines can share.
    MySql,
}

impl Engine {
    /// `table` (with an alias, if any) naming the index a statement must
    /// read, so that the planner cannot pick a full scan: SQLite's
    /// `INDEXED BY` (its partial indexes hold only the rows asked for),
    /// MySQL's `FORCE INDEX`.
    pub(super) fn indexed(self, table: &str, sqlite: &str, mysql: &str) -> String {
        match self {
            Engine::Sqlite => format!("{table} INDEXED BY {sqlite}"),
            Engine::MySql => format!("{table} FORCE INDEX ({mysql})"),
        }
    }
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
        target: path.display().to_string(),
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
        // A connection to a local file does not go stale: no ping (a round
        // trip to the connection's thread) before each use.
        .test_before_acquire(false)
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
        crate::db::migrate_sqlite(&pool, sqlx::migrate!("./migrations/store/sqlite"))
            .await
            .map_err(|source| StoreError::Migrate {
                target: path.display().to_string(),
                source,
            })?;
        Ok(Self::new(pool, Engine::Sqlite))
    }

    /// Opens an existing SQLite store read-only, without migrating: for
    /// tools and tests that look while the daemon runs.
    pub async fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        Ok(Self::new(sqlite_pool(path, 1, true).await?, Engine::Sqlite))
    }

    /// Connects to and migrates the MySQL/MariaDB store `m`
    /// (`mysql_config.msg`).
    pub async fn open_mysql(m: &crate::config::MysqlConfig) -> Result<Self, StoreError> {
        install_default_drivers();
        let (url, target) = crate::db::mysql_url(m);
        // Each transaction reads what others committed before its
        // statements: the row locks, not a snapshot, order writers.
        let pool = crate::db::mysql_pool_options(
            m,
            "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
        )
        .connect(&url)
        .await
        .map_err(|source| StoreError::Open {
            target: target.clone(),
            source,
        })?;
        // Its own migrations table: the wallet store may share the database
        // and keeps its migrations in sqlx's default one.
        let mut migrator = sqlx::migrate!("./migrations/store/mysql");
        migrator.dangerous_set_table_name("_m2pool_msg_migrations");
        crate::db::migrate_mysql(&pool, migrator, &m.database)
            .await
            .map_err(|source| StoreError::Migrate { target, source })?;
        Ok(Self::new(pool, Engine::MySql))
    }

    /// A second handle on the store `config` names, with one connection of
    /// its own, for readers that must never take a connection the writers
    /// wait for (the operator console). It does not migrate: the daemon's
    /// own handle has.
    pub async fn open_reader(config: &crate::config::Config) -> Result<Self, StoreError> {
        match &config.msg_mysql {
            None => Self::open_read_only(&config.msg_store).await,
            Some(m) => {
                install_default_drivers();
                let (url, target) = crate::db::mysql_url(m);
                let pool = crate::db::mysql_pool_options(
                    m,
                    "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
                )
                .max_connections(1)
                .min_connections(0)
                .connect(&url)
                .await
                .map_err(|source| StoreError::Open { target, source })?;
                Ok(Self::new(pool, Engine::MySql))
            }
        }
    }

    /// The engine holding this store.
    pub fn engine(&self) -> Engine {
        self.engine
    }
}
