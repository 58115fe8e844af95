//! Test worlds: each test gets its own anvil on a free port, its own queues and
//! exchange on the local RabbitMQ, a fresh SQLite message store, and the daemon
//! running in-process against them. Nothing is mocked.
#![allow(dead_code)]

#[allow(dead_code)]
pub mod api;
pub mod broker;
#[allow(dead_code)]
pub mod browser;
#[allow(dead_code)]
pub mod http;
pub mod mariadb;
pub mod probe;
pub mod rpc_proxy;
#[allow(dead_code)]
pub mod webhooks;

#[allow(unused_imports)]
pub use probe::Probe;

use alloy::network::TransactionBuilder;
use alloy::primitives::{Address, B256, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use anyhow::{Context, Result, anyhow, bail, ensure};
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use m2pool_payment::Secrets;
use m2pool_payment::config::Config;
use m2pool_payment::msg::sign::sign_message;
use m2pool_payment::secret::Secret;
use m2pool_payment::store::Store;
use m2pool_payment::wallet::{Kek, Label, WalletStore};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const KEY: &[u8] = b"test-secret";
/// The wallet key-encryption key the tests configure (`M2POOL_WALLET_KEY`).
pub const WALLET_KEY: &str = "wallet-test-passphrase";
pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Generous bound for anything that should take milliseconds.
pub const WAIT: Duration = Duration::from_secs(30);

alloy::sol! {
    #[sol(rpc)]
    interface ITestUSDT {
        function mint(address to, uint256 value) external;
        function transfer(address to, uint256 value) external;
        function balanceOf(address owner) external view returns (uint256);
        function batchTransfer(address[] calldata to, uint256[] calldata value) external;
    }
}

/// Routes daemon logs to the test output once per test binary.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,m2pool=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// The anvil binary: `ANVIL_BIN`, or the one `bin/test.sh` installs.
pub fn anvil_bin() -> PathBuf {
    std::env::var_os("ANVIL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join(".tools/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")
        })
}

/// An anvil process on a free port; killed on drop.
pub struct Anvil {
    child: Child,
    pub port: u16,
}

impl Anvil {
    pub fn spawn(extra: &[&str]) -> Result<Self> {
        Self::spawn_on(0, extra)
    }

    /// An anvil on `port` (0: any free port).
    pub fn spawn_on(port: u16, extra: &[&str]) -> Result<Self> {
        let bin = anvil_bin();
        let mut child = Command::new(&bin)
            .args(["--port", &port.to_string()])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!("starting {} (run bin/test.sh to install it)", bin.display())
            })?;
        let stdout = child.stdout.take().context("anvil stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        // Read the port, then keep draining so anvil never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sent = false;
            // ANVIL_TEE=FILE appends anvil's output there: a line per RPC
            // call, to see what a test or a bench row asks of the node.
            let mut tee = std::env::var_os("ANVIL_TEE").and_then(|p| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .ok()
            });
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(f) = tee.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(f, "{line}");
                }
                if !sent && let Some(addr) = line.strip_prefix("Listening on ") {
                    let port = addr
                        .rsplit(':')
                        .next()
                        .and_then(|p| p.trim().parse::<u16>().ok());
                    let _ = tx.send(port);
                    sent = true;
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(20))
            .ok()
            .flatten()
            .ok_or_else(|| anyhow!("anvil did not report its port"))?;
        Ok(Self { child, port })
    }

    pub fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The anvil process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn ws(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// Stops anvil as an operator would, with SIGTERM (SIGKILL, as on drop,
    /// would skip writing `--dump-state`), and waits for it to exit.
    pub async fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        ensure!(sent.success(), "kill -TERM anvil failed");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            ensure!(
                Instant::now() < deadline,
                "anvil did not exit within {WAIT:?} of SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process that is killed when this drops, so a failing test leaves
/// nothing running.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A unique name for this test's queues.
pub fn unique(test: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("t.{test}.{}.{n}.{nanos:x}", std::process::id())
}

/// A running in-process daemon.
pub struct Daemon {
    token: CancellationToken,
    handle: JoinHandle<Result<(), m2pool_payment::RunError>>,
}

impl Daemon {
    /// Whether it has stopped (by itself, as nothing asked it to unless
    /// [`Daemon::stop`] was called).
    pub fn has_stopped(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits for it to stop by itself (a fatal error), without asking it to.
    pub async fn exited(self) -> Result<()> {
        tokio::time::timeout(WAIT, self.handle)
            .await
            .context("the daemon did not stop by itself")??
            .context("daemon stopped with an error")
    }

    /// Stops it and checks it stopped cleanly.
    pub async fn stop(self) -> Result<()> {
        self.token.cancel();
        tokio::time::timeout(WAIT, self.handle)
            .await
            .context("daemon did not stop in time")??
            .context("daemon stopped with an error")
    }
}

/// Deploys the test token (`tests/contracts/TestUSDT.sol`) from `from`.
pub async fn deploy_test_usdt(rpc: &DynProvider, from: Address) -> Result<Address> {
    let code = hex::decode(include_str!("../contracts/TestUSDT.bin").trim())?;
    let receipt = rpc
        .send_transaction(
            TransactionRequest::default()
                .with_from(from)
                .with_deploy_code(code),
        )
        .await?
        .get_receipt()
        .await?;
    receipt.contract_address.context("token deployed")
}

/// Directories of cleaned-up worlds kept until [`remove_deferred`], when
/// [`defer_removals`] was called (the benchmark: see benches/gateway.rs).
static DEFERRED: std::sync::Mutex<Option<Vec<tempfile::TempDir>>> = std::sync::Mutex::new(None);

/// From now on a cleaned-up world's files stay until [`remove_deferred`].
pub fn defer_removals() {
    let mut d = DEFERRED.lock().unwrap_or_else(|p| p.into_inner());
    d.get_or_insert_with(Vec::new);
}

/// Removes the files of every world cleaned up since [`defer_removals`].
pub fn remove_deferred() {
    let kept = DEFERRED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_mut()
        .map(std::mem::take);
    drop(kept);
}

/// One test's world.
pub struct World {
    pub name: String,
    pub anvil: Anvil,
    pub eth: DynProvider,
    pub accounts: Vec<Address>,
    pub token: Address,
    pub dir: tempfile::TempDir,
    pub amqp: Connection,
    pub publisher: Channel,
    pub config_json: Value,
}

impl World {
    pub async fn new(test: &str) -> Result<Self> {
        Self::with(test, &[], |_| {}).await
    }

    /// A world whose anvil gets `anvil_args` and whose config is edited by `edit`.
    pub async fn with(
        test: &str,
        anvil_args: &[&str],
        edit: impl FnOnce(&mut Value),
    ) -> Result<Self> {
        Self::on_broker(test, AMQP, anvil_args, edit).await
    }

    /// A world on the broker at `amqp_url`.
    pub async fn on_broker(
        test: &str,
        amqp_url: &str,
        anvil_args: &[&str],
        edit: impl FnOnce(&mut Value),
    ) -> Result<Self> {
        init_tracing();
        let anvil = Anvil::spawn(anvil_args)?;
        let eth = ProviderBuilder::new()
            .connect_http(anvil.http().parse()?)
            .erased();
        let accounts = eth.get_accounts().await?;
        let token = deploy_test_usdt(&eth, accounts[0]).await?;
        let usdt = ITestUSDT::new(token, &eth);
        usdt.mint(accounts[1], U256::from(1_000_000_000_000u64))
            .from(accounts[0])
            .send()
            .await?
            .get_receipt()
            .await?;

        let name = unique(test);
        let dir = tempfile::tempdir()?;
        let mut config_json = config_json(&name, &anvil, token, &dir);
        config_json["rmq_config"]["sub_addr"] = amqp_url.into();
        edit(&mut config_json);
        let amqp = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
        let publisher = amqp.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let world = Self {
            name,
            anvil,
            eth,
            accounts,
            token,
            dir,
            amqp,
            publisher,
            config_json,
        };
        // Declare the topology now, so responses published before a test
        // subscribes are already queued for it (a config without a broker
        // has none).
        if let Some(rmq) = &world.config()?.rmq {
            m2pool_payment::queue::declare(&world.amqp, rmq).await?;
        }
        Ok(world)
    }

    /// Opens a new broker connection for publishing and consuming (after the
    /// broker was stopped and started again).
    pub async fn reconnect(&mut self) -> Result<()> {
        let url = self.config_json["rmq_config"]["sub_addr"]
            .as_str()
            .unwrap_or(AMQP)
            .to_owned();
        self.amqp = Connection::connect(&url, ConnectionProperties::default()).await?;
        self.publisher = self.amqp.create_channel().await?;
        self.publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(())
    }

    pub fn config(&self) -> Result<Config> {
        Ok(Config::from_json(&serde_json::to_vec(&self.config_json)?)?)
    }

    pub fn user(&self) -> Address {
        self.accounts[1]
    }

    /// The daemon's message store, read-only (the daemon must have created it).
    pub async fn store(&self) -> Result<Store> {
        let config = self.config()?;
        match &config.msg_mysql {
            Some(m) => Ok(Store::open_mysql(m).await?),
            None => Ok(Store::open_read_only(&config.msg_store).await?),
        }
    }

    pub async fn start(&self) -> Result<Daemon> {
        self.start_with(|_| {})
    }

    /// A daemon in this process with this world's config edited by `edit`.
    pub fn start_with(&self, edit: impl FnOnce(&mut Value)) -> Result<Daemon> {
        let mut json = self.config_json.clone();
        edit(&mut json);
        let config = Config::from_json(&serde_json::to_vec(&json)?)?;
        let token = CancellationToken::new();
        let secrets = Secrets {
            comm: Secret::new(KEY.to_vec()),
            wallet: Some(Kek::from_material(WALLET_KEY.as_bytes())),
        };
        let handle = tokio::spawn(m2pool_payment::run(config, secrets, token.clone()));
        Ok(Daemon { token, handle })
    }

    /// Writes the config to a file, for a daemon run as a process.
    pub fn config_file(&self) -> Result<PathBuf> {
        let path = self.dir.path().join("config.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&self.config_json)?)?;
        Ok(path)
    }

    /// The daemon as a separate process (for crash tests), with extra env;
    /// killed when the guard drops.
    pub fn spawn_process(&self, env: &[(&str, &str)]) -> Result<ChildGuard> {
        let path = self.config_file()?;
        self.spawn_with(&path, self.daemon_log()?, env)
    }

    /// A daemon process named `name` with its own `config` (written to
    /// `{name}.json`) and log (`{name}.log`), beside this world's others.
    pub fn spawn_process_as(
        &self,
        name: &str,
        config: &Value,
        env: &[(&str, &str)],
    ) -> Result<ChildGuard> {
        let path = self.dir.path().join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(config)?)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))?;
        self.spawn_with(&path, log, env)
    }

    fn spawn_with(
        &self,
        config: &std::path::Path,
        log: std::fs::File,
        env: &[(&str, &str)],
    ) -> Result<ChildGuard> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_m2pool-payment"));
        cmd.arg("--config")
            .arg(config)
            .env("M2POOL_PAYMENT_KEY", std::str::from_utf8(KEY)?)
            .env("M2POOL_WALLET_KEY", WALLET_KEY)
            .env("RUST_LOG", "warn,m2pool=info")
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Ok(ChildGuard(cmd.spawn()?))
    }

    /// The log file of daemons run as processes (appended to by each).
    pub fn daemon_log_path(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    fn daemon_log(&self) -> Result<std::fs::File> {
        Ok(std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.daemon_log_path())?)
    }

    /// Waits until the transaction log `{stem}.log` holds a line containing
    /// every one of `parts`.
    pub async fn wait_txlog(&self, stem: &str, parts: &[&str]) -> Result<()> {
        let path = self.dir.path().join("logs").join(format!("{stem}.log"));
        eventually(
            &format!("a line with {parts:?} in {}", path.display()),
            || async {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                Ok(text.lines().any(|l| parts.iter().all(|p| l.contains(p))))
            },
        )
        .await
    }

    /// The wallet store of this world's config.
    pub async fn wallets(&self) -> Result<WalletStore> {
        Ok(WalletStore::open(&self.config()?.wallet_store).await?)
    }

    /// Creates a hot wallet in the wallet store.
    pub async fn new_wallet(&self, label: Label) -> Result<Address> {
        let store = self.wallets().await?;
        let kek = Kek::from_material(WALLET_KEY.as_bytes());
        let a = m2pool_payment::wallet::cli::create(&store, &kek, "ETH", 1, label).await?;
        store.close().await;
        a.first().copied().context("a wallet")
    }

    /// Gives `to` test USDT (base units) and ether (wei).
    pub async fn fund(&self, to: Address, usdt: u64, wei: U256) -> Result<()> {
        if usdt > 0 {
            ITestUSDT::new(self.token, &self.eth)
                .mint(to, U256::from(usdt))
                .from(self.accounts[0])
                .send()
                .await?
                .get_receipt()
                .await?;
        }
        if !wei.is_zero() {
            self.send_eth(self.accounts[0], to, wei).await?;
        }
        Ok(())
    }

    pub async fn usdt_balance(&self, of: Address) -> Result<U256> {
        Ok(ITestUSDT::new(self.token, &self.eth)
            .balanceOf(of)
            .call()
            .await?)
    }

    /// Confirmed transaction count of `of`.
    pub async fn nonce(&self, of: Address) -> Result<u64> {
        Ok(self.eth.get_transaction_count(of).await?)
    }

    /// Every USDT Transfer log sent by `from`, from genesis to now.
    pub async fn transfers_from(&self, from: Address) -> Result<Vec<alloy::rpc::types::Log>> {
        let filter = alloy::rpc::types::Filter::new()
            .from_block(0)
            .address(self.token)
            .event_signature(alloy::primitives::keccak256(
                "Transfer(address,address,uint256)",
            ))
            .topic1(from.into_word());
        Ok(self.eth.get_logs(&filter).await?)
    }

    /// The config entry `kind` (`topup`, `topup_resp`, …).
    pub fn entry(&self, kind: &str) -> (String, String, String) {
        let e = &self.config_json["rmq_config"][kind];
        (
            e["queue"].as_str().unwrap_or_default().to_owned(),
            e["exchange"].as_str().unwrap_or_default().to_owned(),
            e["routing"][0].as_str().unwrap_or_default().to_owned(),
        )
    }

    /// Publishes `body` as is to the request queue of `kind`.
    pub async fn publish_raw(&self, kind: &str, body: &[u8]) -> Result<()> {
        let (_, exchange, routing) = self.entry(kind);
        let confirm = self
            .publisher
            .basic_publish(
                exchange.as_str().into(),
                routing.as_str().into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?
            .await?;
        ensure!(confirm.is_ack(), "broker did not ack the test publish");
        Ok(())
    }

    /// Publishes `bodies` as they are to the request queue of `kind`, all in
    /// flight at once; confirms are awaited at the end.
    pub async fn publish_all(&self, kind: &str, bodies: &[Vec<u8>]) -> Result<()> {
        let (_, exchange, routing) = self.entry(kind);
        self.publish_to(&exchange, &routing, bodies).await
    }

    /// Publishes `bodies` persistent to `exchange` with `routing`, all in
    /// flight at once, and waits until the broker has confirmed each.
    pub async fn publish_to(
        &self,
        exchange: &str,
        routing: &str,
        bodies: &[Vec<u8>],
    ) -> Result<()> {
        let mut confirms = Vec::with_capacity(bodies.len());
        for b in bodies {
            confirms.push(
                self.publisher
                    .basic_publish(
                        exchange.into(),
                        routing.into(),
                        BasicPublishOptions::default(),
                        b,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await?,
            );
        }
        for c in confirms {
            ensure!(c.await?.is_ack(), "publish not confirmed");
        }
        Ok(())
    }

    /// Signs `body` with the test key and publishes it.
    pub async fn publish(&self, kind: &str, body: Value) -> Result<Vec<u8>> {
        let bytes = signed(body)?;
        self.publish_raw(kind, &bytes).await?;
        Ok(bytes)
    }

    /// Subscribes to the response queue of `kind` (`topup_resp`, …).
    pub async fn replies(&self, kind: &str) -> Result<Replies> {
        let (queue, _, _) = self.entry(kind);
        let ch = self.amqp.create_channel().await?;
        let mut consumer = ch
            .basic_consume(
                queue.as_str().into(),
                "test".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let _ch = ch;
            while let Some(Ok(d)) = consumer.next().await {
                let raw = String::from_utf8_lossy(&d.data).into_owned();
                let v = serde_json::from_slice::<Value>(&d.data)
                    .unwrap_or_else(|e| json!({"unparsable": e.to_string()}));
                if tx
                    .send(Reply {
                        v,
                        raw,
                        at: Instant::now(),
                    })
                    .is_err()
                {
                    break;
                }
            }
        });
        Ok(Replies {
            rx,
            seen: Vec::new(),
        })
    }

    /// Waits until the daemon has committed a watch on `address`.
    /// Also waits for the daemon's block cursor to exist, so that a transfer
    /// sent next is in a block the daemon will read (on a fresh store, the
    /// cursor starts at the head it first sees).
    pub async fn wait_watched(&self, symbol: &str, address: Address, watched: bool) -> Result<()> {
        let deadline = Instant::now() + WAIT;
        loop {
            // The daemon may not have created the file yet.
            if let Ok(store) = self.store().await {
                let now = store.is_watched("ETH", symbol, address).await;
                let anchored = store
                    .recent_blocks("ETH", 1)
                    .await
                    .is_ok_and(|b| !b.is_empty());
                store.close().await;
                if anchored && now.unwrap_or(!watched) == watched {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("{address} {symbol}: watched should be {watched} within {WAIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `units` of test USDT from `from` to `to`; returns the tx hash and block.
    pub async fn send_usdt(&self, from: Address, to: Address, units: u64) -> Result<(B256, u64)> {
        let r = ITestUSDT::new(self.token, &self.eth)
            .transfer(to, U256::from(units))
            .from(from)
            .send()
            .await?
            .get_receipt()
            .await?;
        ensure!(r.status(), "USDT transfer reverted");
        Ok((r.transaction_hash, r.block_number.context("mined")?))
    }

    /// Mints `units` of test USDT to `to` (a `Transfer` from the zero
    /// address, sent by the deployer); returns the tx hash and block.
    pub async fn mint_usdt(&self, to: Address, units: u64) -> Result<(B256, u64)> {
        let r = ITestUSDT::new(self.token, &self.eth)
            .mint(to, U256::from(units))
            .from(self.accounts[0])
            .send()
            .await?
            .get_receipt()
            .await?;
        ensure!(r.status(), "USDT mint reverted");
        Ok((r.transaction_hash, r.block_number.context("mined")?))
    }

    /// Sends `wei` of ether from `from` to `to`; returns the tx hash and block.
    pub async fn send_eth(&self, from: Address, to: Address, wei: U256) -> Result<(B256, u64)> {
        let r = self
            .eth
            .send_transaction(
                TransactionRequest::default()
                    .with_from(from)
                    .with_to(to)
                    .with_value(wei),
            )
            .await?
            .get_receipt()
            .await?;
        ensure!(r.status(), "ETH transfer reverted");
        Ok((r.transaction_hash, r.block_number.context("mined")?))
    }

    /// Mines `n` empty blocks.
    pub async fn mine(&self, n: u64) -> Result<()> {
        let _: Value = self
            .eth
            .raw_request("anvil_mine".into(), (format!("{n:#x}"),))
            .await?;
        Ok(())
    }

    pub async fn head(&self) -> Result<u64> {
        Ok(self.eth.get_block_number().await?)
    }

    /// Deletes this world's queues and exchange; its files go now, or at
    /// [`remove_deferred`] when removals are deferred.
    pub async fn cleanup(self) -> Result<()> {
        self.delete_topology().await?;
        let _ = self.amqp.close(200, "done".into()).await;
        if let Some(kept) = DEFERRED.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            kept.push(self.dir);
        }
        Ok(())
    }

    /// Deletes this world's queues and exchanges on the broker.
    pub async fn delete_topology(&self) -> Result<()> {
        let ch = self.amqp.create_channel().await?;
        let mut exchanges = std::collections::BTreeSet::new();
        if let Some(entries) = self.config_json["rmq_config"].as_object() {
            for e in entries.values() {
                if let Some(q) = e["queue"].as_str() {
                    ch.queue_delete(q.into(), QueueDeleteOptions::default())
                        .await?;
                }
                if let Some(x) = e["exchange"].as_str() {
                    exchanges.insert(x.to_owned());
                }
            }
        }
        for x in exchanges {
            ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
                .await?;
        }
        let _ = ch.close(200, "deleted".into()).await;
        Ok(())
    }
}

/// `n` ether in wei.
pub fn ether(n: u64) -> U256 {
    U256::from(n) * U256::from(10u64).pow(U256::from(18u64))
}

/// Polls `check` until it says yes, for at most [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if check().await? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A fresh database on the local MariaDB for a wallet store; returns its name
/// and the `mysql_config` that points at it.
pub async fn mariadb_database(tag: &str) -> Result<(String, Value)> {
    use sqlx::Executor;
    let name = format!(
        "m2pool_t_{tag}_{}_{:x}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed) as u32
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .subsec_nanos()
    );
    let admin = sqlx::MySqlPool::connect("mysql://root@127.0.0.1:3306/").await?;
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await?;
    admin.close().await;
    let cfg = json!({"wallet": {"user": "root", "password": "", "host": "127.0.0.1", "port": 3306,
                                "database": name, "maxOpenConns": 4, "maxIdleConns": 1}});
    Ok((name, cfg))
}

/// Drops a database made by [`mariadb_database`].
pub async fn drop_mariadb_database(name: &str) -> Result<()> {
    use sqlx::Executor;
    let admin = sqlx::MySqlPool::connect("mysql://root@127.0.0.1:3306/").await?;
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name}"
        )))
        .await?;
    admin.close().await;
    Ok(())
}

/// `body` with its `sign` computed with the test key.
pub fn signed(mut body: Value) -> Result<Vec<u8>> {
    let s = sign_message(KEY, &serde_json::to_vec(&body)?)?;
    body["sign"] = s.into();
    Ok(serde_json::to_vec(&body)?)
}

pub fn topup(address: &str, symbol: &str) -> Value {
    json!({"chain": "ETH", "symbol": symbol, "address": address, "timestamp": 1758610297})
}

/// A deposit answer for transaction `tx` with `status`.
pub fn deposit_of(tx: B256, status: u64) -> impl Fn(&Value) -> bool {
    let hash = format!("{tx:#x}");
    move |v| v["tx_hash"] == hash && v["status"] == status
}

/// A signed-to-be withdrawal of `amount` (JSON number text) USDT on ETH.
pub fn withdraw(queue_id: &str, from: Address, to: Address, amount: &str) -> Result<Value> {
    let mut v = json!({"queue_id": queue_id, "from_address": hex_addr(from), "to_address": hex_addr(to),
                       "chain": "ETH", "symbol": "USDT", "timestamp": 1758610297});
    v["amount"] = serde_json::from_str(amount)?;
    Ok(v)
}

/// A payout answer for `queue_id` with `status`.
pub fn payout_of(queue_id: &str, status: u64) -> impl Fn(&Value) -> bool {
    let q = queue_id.to_owned();
    move |v| v["queue_id"] == q && v["status"] == status
}

/// Lower-case hex of an address.
pub fn hex_addr(a: Address) -> String {
    format!("{a:#x}")
}

fn config_json(name: &str, anvil: &Anvil, token: Address, dir: &tempfile::TempDir) -> Value {
    let entry = |kind: &str| {
        json!({
            "queue": format!("{name}.{kind}"),
            "exchange": format!("{name}.x"),
            "routing": [format!("{name}.{kind}.key")],
            // Leftovers of a failed test expire by themselves.
            "arguments": {"x-expires": 900000}
        })
    };
    json!({
        "net": ["ETH"],
        "rmq_config": {
            "sub_addr": AMQP,
            "topup": entry("topup"), "withdraw": entry("withdraw"), "pay": entry("pay"), "remove": entry("remove"),
            "topup_resp": entry("topup_resp"), "withdraw_resp": entry("withdraw_resp"),
            "pay_resp": entry("pay_resp"), "remove_resp": entry("remove_resp")
        },
        "msg_config": {"sqlite_path": dir.path().join("msg.db")},
        "log_config": {"dir": dir.path().join("logs")},
        "eth_config": {
            "rpc_url": anvil.http(),
            "ws_url": anvil.ws(),
            "confirm_height": 20,
            "sqlite_path": dir.path().join("wallet.db"),
            "chain_id": 31337,
            "poll_interval_ms": 500,
            // anvil's automine can strand a transaction whose predecessor is
            // mined while it is being admitted (foundry-rs/foundry#10122): it
            // stays in the pool, never mined, until replaced. The daemon's
            // stuck-payout replacement is the cure; tests use it promptly.
            "rebroadcast_secs": 2,
            "stuck_payout_secs": 4,
            "tokens": [{"symbol": "USDT", "address": hex_addr(token), "decimals": 6}]
        }
    })
}

/// One response as received.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Parsed body.
    pub v: Value,
    /// Body text, for exact number checks.
    pub raw: String,
    /// When it arrived.
    pub at: Instant,
}

/// Responses received on one queue, in order.
pub struct Replies {
    rx: mpsc::UnboundedReceiver<Reply>,
    pub seen: Vec<Reply>,
}

impl Replies {
    /// Waits for the first response (seen or new) matching `pred`.
    pub async fn wait(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Result<Reply> {
        if let Some(hit) = self.seen.iter().find(|r| pred(&r.v)) {
            return Ok(hit.clone());
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.rx.recv()).await;
            match next {
                Ok(Some(item)) => {
                    self.seen.push(item.clone());
                    if pred(&item.v) {
                        return Ok(item);
                    }
                }
                Ok(None) => bail!("response stream closed while waiting for {what}"),
                Err(_) => bail!(
                    "no response {what} within {WAIT:?}; got {}",
                    self.seen
                        .iter()
                        .map(|r| r.raw.as_str())
                        .collect::<Vec<_>>()
                        .join("\n")
                ),
            }
        }
    }

    /// Waits until `n` responses (seen or new) match `pred`; returns them.
    pub async fn wait_count(
        &mut self,
        what: &str,
        n: usize,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Vec<Reply>> {
        let deadline = tokio::time::Instant::now() + WAIT * 10;
        // Counted as they arrive: rescanning everything per arrival would be
        // quadratic, and at benchmark sizes it would eat the CPU it measures.
        let mut hits = self.seen.iter().filter(|r| pred(&r.v)).count();
        while hits < n {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(item)) => {
                    hits += usize::from(pred(&item.v));
                    self.seen.push(item);
                }
                Ok(None) => bail!("response stream closed while waiting for {what}"),
                Err(_) => bail!("only {hits} of {n} responses {what}"),
            }
        }
        Ok(self.matching(&pred))
    }

    /// Takes what has arrived without waiting.
    pub fn drain(&mut self) {
        while let Ok(item) = self.rx.try_recv() {
            self.seen.push(item);
        }
    }

    /// Every response seen so far that matches `pred`.
    pub fn matching(&self, pred: impl Fn(&Value) -> bool) -> Vec<Reply> {
        self.seen.iter().filter(|r| pred(&r.v)).cloned().collect()
    }
}
