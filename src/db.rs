//! A failed database statement, named by what it was doing: the one error
//! both stores (the message store and the wallet store) wrap, and the one
//! [`Ctx`] that makes it.

/// A statement that failed, and what it was for.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {source}")]
pub struct DbError {
    /// What was being done.
    pub op: &'static str,
    /// Underlying error.
    #[source]
    pub source: sqlx::Error,
}

/// Names what a `sqlx` call was doing when it failed.
pub(crate) trait Ctx<T> {
    /// This result, its error named `op`.
    fn ctx(self, op: &'static str) -> Result<T, DbError>;
}

impl<T> Ctx<T> for Result<T, sqlx::Error> {
    fn ctx(self, op: &'static str) -> Result<T, DbError> {
        self.map_err(|source| DbError { op, source })
    }
}

/// The URL of the MySQL/MariaDB database `m` (password included: never
/// logged) and how to name it in messages (`mysql://user@host:port/db`,
/// no password).
pub(crate) fn mysql_url(m: &crate::config::MysqlConfig) -> (String, String) {
    let target = format!("mysql://{}", m.target());
    let mut url = match url::Url::parse("mysql://localhost") {
        Ok(u) => u,
        Err(_) => return (target.clone(), target),
    };
    let _ = url.set_host(Some(&m.host));
    let _ = url.set_port(Some(m.port));
    let _ = url.set_username(&m.user);
    if !m.password.expose().is_empty() {
        let _ = url.set_password(Some(m.password.expose()));
    }
    url.set_path(&m.database);
    (url.to_string(), target)
}

/// How long the server keeps a session that sends nothing (MySQL's
/// `wait_timeout`, 8 hours by default): a process frozen in the middle of a
/// transaction (stopped, or cut off) loses it after this long, which rolls
/// the transaction back and frees its row locks for the instance that took
/// over (docs/architecture.md, "High availability"). Idle connections of
/// the pool are closed before the server would.
pub const MYSQL_SESSION_IDLE: std::time::Duration = std::time::Duration::from_secs(20);

/// A pool sized as `m` says, whose sessions end after
/// [`MYSQL_SESSION_IDLE`] without a statement and then run `setup` (more
/// `SET SESSION …` statements, or nothing).
pub(crate) fn mysql_pool_options(
    m: &crate::config::MysqlConfig,
    setup: &'static str,
) -> sqlx::any::AnyPoolOptions {
    use sqlx::Executor;
    sqlx::any::AnyPoolOptions::new()
        .max_connections(m.max_open_conns)
        .min_connections(m.max_idle_conns.min(m.max_open_conns))
        .max_lifetime(m.conn_max_life)
        .idle_timeout(MYSQL_SESSION_IDLE * 3 / 4)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                conn.execute(sqlx::AssertSqlSafe(format!(
                    "SET SESSION wait_timeout = {}",
                    MYSQL_SESSION_IDLE.as_secs()
                )))
                .await?;
                if !setup.is_empty() {
                    conn.execute(setup).await?;
                }
                Ok(())
            })
        })
}

/// How long an instance waits for another to finish migrating the same
/// MySQL/MariaDB database before it gives up.
const MIGRATE_LOCK_WAIT_SECS: u32 = 600;

/// Runs `migrator` on the MySQL/MariaDB database `database` behind `pool`,
/// one instance at a time.
///
/// sqlx's own migration lock asks `GET_LOCK(name, -1)`, which MariaDB
/// answers with NULL at once instead of waiting: two instances starting
/// together on a fresh database (a standby and an active one, a tool and the
/// daemon) would both apply a migration and one would fail on a duplicate
/// row. So this takes a named lock of its own, with a finite wait both
/// servers honour, on the one connection the migrations then run on; the
/// lock goes with the session if the process dies.
pub(crate) async fn migrate_mysql(
    pool: &sqlx::AnyPool,
    mut migrator: sqlx::migrate::Migrator,
    database: &str,
) -> Result<(), sqlx::migrate::MigrateError> {
    use sqlx::migrate::MigrateError;
    // Lock names are at most 64 characters; a longer database name shares
    // its lock with another, which only makes them migrate in turn.
    let name: String = format!("m2pool-migrate:{database}")
        .chars()
        .take(64)
        .collect();
    let mut conn = pool.acquire().await?;
    let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, ?)")
        .bind(name.clone())
        .bind(i64::from(MIGRATE_LOCK_WAIT_SECS))
        .fetch_one(&mut *conn)
        .await?;
    if got != Some(1) {
        return Err(MigrateError::Execute(sqlx::Error::Protocol(format!(
            "another instance held the migration lock {name} for {MIGRATE_LOCK_WAIT_SECS} s"
        ))));
    }
    migrator.set_locking(false);
    // `run_direct` takes the connection itself: `run`'s `Acquire` bound
    // leaves the daemon's future not provably `Send` (sqlx says as much
    // beside it).
    let applied = migrator.run_direct(None, &mut *conn, false).await;
    let released = sqlx::query("SELECT RELEASE_LOCK(?)")
        .bind(name.clone())
        .execute(&mut *conn)
        .await;
    applied?;
    released?;
    Ok(())
}

/// Runs `migrator` on the SQLite file behind `pool`. SQLite has no
/// migration lock: when another process (a second instance, a tool, a test)
/// migrates the same file at the same moment, one of the two fails
/// half-way, and running again finds the migration applied.
pub(crate) async fn migrate_sqlite(
    pool: &sqlx::AnyPool,
    migrator: sqlx::migrate::Migrator,
) -> Result<(), sqlx::migrate::MigrateError> {
    let mut tries = 0;
    loop {
        match migrator.run(pool).await {
            Err(_) if tries < 3 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100 * tries)).await;
            }
            done => return done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_names_what_was_being_done() {
        let r: Result<(), sqlx::Error> = Err(sqlx::Error::RowNotFound);
        let e = r.ctx("read the cursor").expect_err("an error");
        assert_eq!(e.op, "read the cursor");
        assert!(e.to_string().starts_with("read the cursor: "), "{e}");
    }
}
