//! A private RabbitMQ node for one test, on its own ports and data folder, so a
//! test can stop and start the broker (`rabbitmqctl stop_app` / `start_app`)
//! without disturbing the tests that share the machine's broker.

use anyhow::{Context, Result, bail};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

static SEQ: AtomicU64 = AtomicU64::new(0);

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn wait_port(port: u16, open: bool, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    while port_open(port) != open {
        if Instant::now() > deadline {
            bail!(
                "broker port {port} did not {} within {within:?}",
                if open { "open" } else { "close" }
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The running node; stopped when dropped.
pub struct PrivateBroker {
    pub port: u16,
    node: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl PrivateBroker {
    /// Starts a node (a few seconds).
    pub fn start() -> Result<Self> {
        let port = free_port()?;
        let dist = free_port()?;
        let node = format!(
            "m2t{}x{}@localhost",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::Builder::new().prefix("m2pool-rmq").tempdir()?;
        let d = dir.path();
        std::fs::create_dir_all(d.join("mnesia"))?;
        std::fs::create_dir_all(d.join("log"))?;
        std::fs::write(d.join("plugins"), "")?;
        // The server drops to the rabbitmq user; its folders must be its own.
        let chown = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(d)
            .status()?;
        if !chown.success() {
            bail!(
                "cannot hand {} to the rabbitmq user (run the tests as root)",
                d.display()
            );
        }
        let child = Command::new("rabbitmq-server")
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("plugins"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq"))
            .env("RABBITMQ_FEATURE_FLAGS_FILE", d.join("feature_flags"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting rabbitmq-server")?;
        let broker = Self {
            port,
            node,
            child,
            _dir: dir,
        };
        wait_port(port, true, Duration::from_secs(90))?;
        Ok(broker)
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn ctl(&self, args: &[&str]) -> Result<()> {
        let out = Command::new("rabbitmqctl")
            .args(["-n", &self.node])
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "rabbitmqctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// `rabbitmqctl stop_app`: the broker goes away, its data stays.
    pub fn stop_app(&self) -> Result<()> {
        self.ctl(&["stop_app"])?;
        wait_port(self.port, false, Duration::from_secs(30))
    }

    /// `rabbitmqctl start_app`.
    pub fn start_app(&self) -> Result<()> {
        self.ctl(&["start_app"])?;
        wait_port(self.port, true, Duration::from_secs(60))
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self.ctl(&["stop"]);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
