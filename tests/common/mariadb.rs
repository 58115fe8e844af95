//! A private MariaDB server for one test, on its own port and data folder,
//! so a test can stop and start the database without disturbing the tests
//! that share the machine's MariaDB.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The running server; stopped when dropped.
pub struct PrivateMariadb {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

impl PrivateMariadb {
    /// Creates the data folder and starts the server (a few seconds).
    pub fn start() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("m2pool-mariadb")
            .tempdir()?;
        let install = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.path().join("data").display()))
            .args([
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("mariadb-install-db (bin/test.sh installs MariaDB)")?;
        if !install.success() {
            bail!("mariadb-install-db failed");
        }
        let mut db = Self {
            port: super::http::free_port()?,
            child: None,
            dir,
        };
        db.start_server()?;
        Ok(db)
    }

    /// Starts the server on its data folder and port; waits until it answers.
    pub fn start_server(&mut self) -> Result<()> {
        let d = self.dir.path();
        let child = Command::new("mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", d.join("data").display()))
            .arg(format!("--socket={}", d.join("sock").display()))
            .arg(format!("--pid-file={}", d.join("pid").display()))
            .arg(format!("--port={}", self.port))
            .args([
                "--user=root",
                "--bind-address=127.0.0.1",
                "--skip-grant-tables",
                "--innodb-buffer-pool-size=64M",
                "--skip-log-bin",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("server.log"))?)
            .spawn()
            .context("starting mariadbd")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !port_open(self.port) {
            if Instant::now() > deadline {
                bail!("mariadbd on port {} did not start", self.port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops the server as a restart does (SIGTERM, waiting for it).
    pub fn stop_server(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Creates database `name`; returns the `mysql_config` entry for it.
    pub async fn database(&self, name: &str) -> Result<Value> {
        use sqlx::Executor;
        let admin =
            sqlx::MySqlPool::connect(&format!("mysql://root@127.0.0.1:{}/", self.port)).await?;
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await?;
        admin.close().await;
        Ok(
            json!({"user": "root", "password": "", "host": "127.0.0.1", "port": self.port,
                  "database": name, "maxOpenConns": 4, "maxIdleConns": 1}),
        )
    }
}

impl Drop for PrivateMariadb {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
