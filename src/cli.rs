//! The binary's command line: flags (Go-style `-key=…` included), where the
//! keys come from, tracing, and the small tools (`sign`, `check-config`,
//! `wallet`). `main.rs` parses, sets up tracing, loads the config and runs.
//!
//! The Go version was started as `m2pool-payment -key=SECRET`; Go's flag
//! package takes long flags with one dash, so `-key`, `-key-file` and `-config`
//! are rewritten to their two-dash forms before clap sees them.

mod webhook;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use m2pool_payment::Secrets;
use m2pool_payment::config::{Config, WalletStore as WalletStoreConfig};
use m2pool_payment::msg::sign::sign_message;
use m2pool_payment::secret::{CommKey, Scrubber, ScrubbingMakeWriter, Secret, redact_url};
use m2pool_payment::wallet::{self, Kek, Label, WalletStore};
use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// How long a shutdown may take before the process exits anyway.
pub(crate) const SHUTDOWN_LIMIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Long options that Go-style single-dash spelling may name.
const LONG_FLAGS: &[&str] = &["key", "key-file", "wallet-key-file", "config", "log-format"];

#[derive(Debug, Parser)]
#[command(
    name = "m2pool-payment",
    version,
    about = "Crypto payment gateway: RabbitMQ requests, Ethereum deposits and payouts"
)]
pub(crate) struct Cli {
    /// Communication key that signs every message. Prefer --key-file or the
    /// M2POOL_PAYMENT_KEY environment variable: argv is visible to every user.
    #[arg(long, global = true)]
    pub(crate) key: Option<String>,

    /// File holding the communication key (trailing newline ignored).
    #[arg(long, value_name = "PATH", global = true)]
    pub(crate) key_file: Option<PathBuf>,

    /// File holding the wallet key-encryption key (or M2POOL_WALLET_KEY): 64 hex
    /// digits, or a passphrase. Without it, wallet keys are encrypted with a key
    /// derived from the communication key.
    #[arg(long, value_name = "PATH", global = true)]
    pub(crate) wallet_key_file: Option<PathBuf>,

    /// Config file.
    #[arg(
        long,
        env = "CONFIG_PATH",
        default_value = "./config.json",
        global = true
    )]
    pub(crate) config: PathBuf,

    /// Log format on stdout (default: `log_config.format`, else text).
    #[arg(long, value_enum, global = true)]
    pub(crate) log_format: Option<LogFormat>,

    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the daemon (the default).
    Run,
    /// Print the `sign` of a JSON message (its own `sign` field is ignored).
    Sign {
        /// Message file, or `-` for standard input.
        #[arg(default_value = "-")]
        file: String,
    },
    /// Load and validate the config, and say what is wrong in plain words.
    CheckConfig,
    /// Manage hot wallets (keys are encrypted at rest and never printed).
    #[command(subcommand)]
    Wallet(WalletCommand),
    /// Webhook deliveries: the dead list, and sending them again.
    #[command(subcommand)]
    Webhook(webhook::WebhookCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum WalletCommand {
    /// Create wallets and print their addresses.
    New {
        /// How many.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Label them as the collection wallet (pays when a user wallet cannot).
        #[arg(long)]
        collection: bool,
        /// Chain.
        #[arg(long, default_value = "ETH")]
        chain: String,
    },
    /// Import a private key read from standard input (hex, optional 0x).
    Import {
        /// Label it as the collection wallet.
        #[arg(long)]
        collection: bool,
        /// Chain.
        #[arg(long, default_value = "ETH")]
        chain: String,
    },
    /// Enable a wallet already in the store on another network too (same
    /// key, same address; its own ledger and nonces there).
    Enable {
        /// The wallet's address.
        #[arg(long)]
        address: String,
        /// The network to enable it on.
        #[arg(long)]
        chain: String,
        /// Label it as that network's collection wallet.
        #[arg(long)]
        collection: bool,
    },
    /// List wallets with their labels and ledger balances, per network.
    List {
        /// Only this network (default: every network the config runs).
        #[arg(long)]
        chain: Option<String>,
    },
}

/// Rewrites Go-style `-key=…` / `-key …` to `--key=…` / `--key …`.
pub(crate) fn go_style_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut passthrough = false;
    for arg in args {
        if passthrough || arg == "--" {
            passthrough = true;
            out.push(arg);
            continue;
        }
        let name = arg
            .strip_prefix('-')
            .filter(|r| !r.starts_with('-'))
            .map(|r| r.split('=').next().unwrap_or(r));
        match name {
            Some(n) if LONG_FLAGS.contains(&n) => out.push(format!("-{arg}")),
            _ => out.push(arg),
        }
    }
    out
}

fn comm_key(cli: &Cli) -> Result<CommKey> {
    if let Some(k) = &cli.key {
        if k.is_empty() {
            bail!("the communication key is empty");
        }
        return Ok(Secret::new(k.as_bytes().to_vec()));
    }
    if let Some(path) = &cli.key_file {
        let mut bytes =
            std::fs::read(path).with_context(|| format!("reading key file {}", path.display()))?;
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        if bytes.is_empty() {
            bail!("key file {} is empty", path.display());
        }
        return Ok(Secret::new(bytes));
    }
    match std::env::var("M2POOL_PAYMENT_KEY") {
        Ok(k) if !k.is_empty() => Ok(Secret::new(k.into_bytes())),
        _ => bail!(
            "no communication key: pass -key=SECRET, --key-file PATH, or set M2POOL_PAYMENT_KEY"
        ),
    }
}

/// The wallet key-encryption key, if one is configured.
fn wallet_key(cli: &Cli) -> Result<Option<Kek>> {
    if let Some(path) = &cli.wallet_key_file {
        let material = zeroize::Zeroizing::new(
            std::fs::read(path)
                .with_context(|| format!("reading wallet key file {}", path.display()))?,
        );
        if material.trim_ascii().is_empty() {
            bail!("wallet key file {} is empty", path.display());
        }
        return Ok(Some(Kek::from_material(&material)));
    }
    match std::env::var("M2POOL_WALLET_KEY") {
        Ok(k) if !k.is_empty() => Ok(Some(Kek::from_material(
            zeroize::Zeroizing::new(k).as_bytes(),
        ))),
        _ => Ok(None),
    }
}

/// The wallet KEK for the wallet commands: configured, or derived from the
/// communication key (which is then needed).
fn kek(cli: &Cli) -> Result<Kek> {
    match wallet_key(cli)? {
        Some(k) => Ok(k),
        None => Ok(Kek::from_comm_key(comm_key(cli)?.expose())),
    }
}

pub(crate) fn secrets(cli: &Cli) -> Result<Secrets> {
    Ok(Secrets {
        comm: comm_key(cli)?,
        wallet: wallet_key(cli)?,
    })
}

async fn wallet_command(cli: &Cli, cmd: &WalletCommand) -> Result<()> {
    let config =
        Config::load(&cli.config).with_context(|| format!("config {}", cli.config.display()))?;
    let store = WalletStore::open(&config.wallet_store).await?;
    let label = |collection: bool| {
        if collection {
            Label::Collection
        } else {
            Label::User
        }
    };
    match cmd {
        WalletCommand::New {
            count,
            collection,
            chain,
        } => {
            let kek = kek(cli)?;
            for a in wallet::cli::create(&store, &kek, chain, *count, label(*collection)).await? {
                println!("{a:#x}");
            }
        }
        WalletCommand::Import { collection, chain } => {
            let kek = kek(cli)?;
            let mut text = zeroize::Zeroizing::new(String::new());
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading the key from standard input")?;
            let a = wallet::cli::import(&store, &kek, chain, &text, label(*collection)).await?;
            println!("{a:#x}");
        }
        WalletCommand::Enable {
            address,
            chain,
            collection,
        } => {
            let address = m2pool_payment::msg::parse_address(address)
                .map_err(|e| anyhow::anyhow!("--address: {e}"))?;
            let chain = chain.to_ascii_uppercase();
            wallet::cli::enable(&store, &chain, address, label(*collection)).await?;
            println!("{address:#x} enabled on {chain}");
        }
        WalletCommand::List { chain } => {
            let names = match chain {
                Some(c) => vec![c.to_ascii_uppercase()],
                None => config.net_names(),
            };
            let nets: Vec<(String, HashMap<String, u8>)> = names
                .into_iter()
                .map(|name| {
                    let decimals = config
                        .network(&name)
                        .map(|n| n.evm.symbols().collect())
                        .unwrap_or_default();
                    (name, decimals)
                })
                .collect();
            print!("{}", wallet::cli::list(&store, &nets).await?);
        }
    }
    store.close().await;
    Ok(())
}

/// The main log's filter without `RUST_LOG`: `info`, without alloy's own
/// WebSocket errors (a dropped new-heads connection is reported once, as a
/// warning, by the daemon, which makes it again).
const DEFAULT_LOG_FILTER: &str = "info,alloy_transport_ws=off,alloy_pubsub=off";

/// The main log: stdout (text or JSON), plus daily files in `dir` when
/// configured; `RUST_LOG` filters both (default `info`). The returned guard
/// flushes the file writer when dropped.
/// Every URL of `config` whose credentials must not reach a log: the node
/// endpoints and the broker.
pub(crate) fn scrubber(config: &Config) -> Scrubber {
    let mut urls: Vec<String> = Vec::new();
    for n in &config.networks {
        urls.extend(n.evm.rpc_urls());
        urls.extend(n.evm.ws_urls());
    }
    if let Some(rmq) = &config.rmq {
        urls.push(rmq.url.expose().clone());
    }
    Scrubber::new(urls.iter().map(String::as_str))
}

/// Logs to stdout (and daily files in `dir`), with `scrubber` taking node
/// and broker credentials out of every line.
pub(crate) fn init_tracing(
    json: bool,
    dir: Option<&std::path::Path>,
    scrubber: Scrubber,
) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer, fmt};
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let out = ScrubbingMakeWriter::new(std::io::stdout, scrubber.clone());
    let stdout = if json {
        fmt::layer().json().with_writer(out).boxed()
    } else {
        // Colours only on a terminal: journald, docker logs and files get
        // plain text.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
        fmt::layer().with_ansi(ansi).with_writer(out).boxed()
    };
    let (file, guard) = match dir {
        Some(dir) => {
            let appender = tracing_appender::rolling::daily(dir, "m2pool-payment.log");
            let (writer, guard) = tracing_appender::non_blocking(appender);
            let writer = ScrubbingMakeWriter::new(writer, scrubber);
            let layer = if json {
                fmt::layer().json().with_writer(writer).boxed()
            } else {
                fmt::layer().with_ansi(false).with_writer(writer).boxed()
            };
            (Some(layer), Some(guard))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(stdout)
        .with(file)
        .init();
    guard
}

/// A wallet class's thresholds in words (`gas < 0.02 ETH, USDT < 500`).
fn thresholds(
    a: &m2pool_payment::config::ClassAlerts,
    e: &m2pool_payment::config::EthConfig,
) -> String {
    use m2pool_payment::msg::amount::format_units;
    let mut parts: Vec<String> = a
        .min_gas
        .iter()
        .map(|g| format!("gas < {} {}", format_units(*g, e.native_decimals), e.native))
        .collect();
    for (symbol, min) in &a.min_balance {
        let decimals = e.decimals(symbol).unwrap_or(18);
        parts.push(format!("{symbol} < {}", format_units(*min, decimals)));
    }
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

fn describe(c: &Config) -> String {
    let broker = match &c.rmq {
        None => "none (requests over the HTTP API only)".to_owned(),
        Some(r) => {
            let url = match url::Url::parse(r.url.expose()) {
                Ok(mut u) => {
                    if u.password().is_some() {
                        let _ = u.set_password(Some("***"));
                    }
                    u.to_string()
                }
                Err(_) => "(unparsable)".to_owned(),
            };
            format!(
                "{url}, {} queues{}",
                r.entries().len(),
                if r.remove.is_none() {
                    " (no remove queues: older layout)"
                } else {
                    ""
                }
            )
        }
    };
    let wallet = match &c.wallet_store {
        WalletStoreConfig::Mysql(m) => {
            format!("MySQL {}", m.target())
        }
        WalletStoreConfig::Sqlite(p) => format!("SQLite {}", p.display()),
    };
    let nets: Vec<String> = c
        .networks
        .iter()
        .map(|n| {
            let e = &n.evm;
            let tokens: Vec<String> = e
                .tokens
                .iter()
                .map(|t| format!("{} {:#x} ({} decimals)", t.symbol, t.contract, t.decimals))
                .collect();
            format!(
                "\n  {}: native {} ({} decimals), fees {}, block time {} ms, poll {} ms\
                 \n  {}: node: rpc {}, ws {}, chain id {}\n  {}: confirm_height: {}\n  {}: tokens: {}",
                n.name,
                e.native,
                e.native_decimals,
                e.fee_model.as_str(),
                e.block_time.as_millis(),
                e.poll_interval.as_millis(),
                n.name,
                redact_url(&e.rpc_url),
                e.ws_url
                    .as_deref()
                    .map_or("(none: polling)".to_owned(), redact_url),
                e.chain_id
                    .map_or("from the node".to_owned(), |id| id.to_string()),
                n.name,
                e.confirm_height,
                n.name,
                tokens.join(", "),
            ) + &format!(
                "\n  {}: wallet balances every {} s; alerts: collection {}, hot wallets {}",
                n.name,
                e.alerts.poll.as_secs(),
                thresholds(&e.alerts.collection, e),
                thresholds(&e.alerts.user, e),
            )
        })
        .collect();
    let http = match c.http_listen {
        None => "off".to_owned(),
        Some(a) => format!(
            "{a} (health, metrics{}{})",
            if c.api.is_some() { ", API" } else { "" },
            if c.console_token.is_some() {
                ", console"
            } else {
                ""
            }
        ),
    };
    let warnings: Vec<String> = c
        .warnings()
        .iter()
        .map(|w| format!("\n  warning: {w}"))
        .collect();
    format!(
        "config OK\n  nets: {}\n  broker: {broker}\n  message store: {}\n  wallet store: {wallet}\n  http: {http}\n  lease: {} s, this instance `{}`{}{}",
        c.net_names().join(", "),
        c.msg_store_target(),
        c.lease.length.as_secs(),
        c.lease.instance,
        nets.concat(),
        warnings.concat(),
    )
}

pub(crate) async fn shutdown_signal(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
        _ = token.cancelled() => return,
    }
    token.cancel();
}

/// The config at `--config`, loaded and validated.
pub(crate) fn load_config(cli: &Cli) -> Result<Config> {
    Config::load(&cli.config).with_context(|| format!("config {}", cli.config.display()))
}

/// `check-config`: load the config and say what it holds, or what is wrong.
pub(crate) fn check_config(cli: &Cli) -> Result<()> {
    println!("{}", describe(&load_config(cli)?));
    Ok(())
}

/// `sign FILE|-`: print the `sign` of a JSON message.
pub(crate) fn sign(cli: &Cli, file: &str) -> Result<()> {
    let key = comm_key(cli)?;
    let mut body = Vec::new();
    if file == "-" {
        std::io::stdin()
            .read_to_end(&mut body)
            .context("reading standard input")?;
    } else {
        body = std::fs::read(file).with_context(|| format!("reading {file}"))?;
    }
    println!("{}", sign_message(key.expose(), &body)?);
    Ok(())
}

/// `webhook …`: the dead list and replays.
pub(crate) fn webhook(cli: &Cli, cmd: &webhook::WebhookCommand) -> Result<()> {
    webhook::run(&load_config(cli)?, cmd)
}

/// `wallet …`: the wallet commands, on their own runtime.
pub(crate) fn wallet(cli: &Cli, cmd: &WalletCommand) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(wallet_command(cli, cmd))
}

/// Whether the main log is JSON: `--log-format`, else `log_config.format`.
pub(crate) fn json_logs(cli: &Cli, config: &Config) -> bool {
    match cli.log_format {
        Some(f) => matches!(f, LogFormat::Json),
        None => config.log.json,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        go_style_args(a.iter().map(|s| s.to_string()))
    }

    #[test]
    fn check_config_describes_each_network_and_warns_of_an_ignored_section() {
        let mut v: serde_json::Value =
            serde_json::from_slice(include_bytes!("../docs/config.three-networks.json"))
                .expect("json");
        v["base_config"] = serde_json::json!({"rpc_url": "http://localhost:1"});
        let c = Config::from_json(&serde_json::to_vec(&v).expect("json")).expect("loads");
        let text = describe(&c);
        assert!(text.contains("nets: ETH, BSC, POLYGON"), "{text}");
        assert!(text.contains("lease: 10 s, this instance `"), "{text}");
        assert!(
            text.contains(
                "BSC: native BNB (18 decimals), fees legacy, block time 3000 ms, poll 1500 ms"
            ),
            "{text}"
        );
        assert!(
            text.contains("ETH: native ETH (18 decimals), fees eip1559"),
            "{text}"
        );
        assert!(text.contains("BSC: tokens: USDT 0x55d3"), "{text}");
        assert!(
            text.contains("warning: `base_config` is not a network `net` names; it is ignored"),
            "{text}"
        );
        let go = Config::from_json(include_bytes!("../tests/fixtures/compat/config.go-v2.json"))
            .expect("loads");
        assert!(!describe(&go).contains("warning"), "{}", describe(&go));
    }

    #[test]
    fn go_style_flags_are_accepted() {
        assert_eq!(args(&["bin", "-key=abc"]), ["bin", "--key=abc"]);
        assert_eq!(
            args(&["bin", "-key", "abc", "-config", "c.json"]),
            ["bin", "--key", "abc", "--config", "c.json"]
        );
        assert_eq!(args(&["bin", "--key", "x"]), ["bin", "--key", "x"]);
        assert_eq!(args(&["bin", "sign", "-"]), ["bin", "sign", "-"]);
        assert_eq!(args(&["bin", "-h"]), ["bin", "-h"]);
        assert_eq!(args(&["bin", "--", "-key"]), ["bin", "--", "-key"]);
        let cli = Cli::parse_from(args(&["bin", "-key=s3cret", "-config=/etc/m2.json"]));
        assert_eq!(cli.key.as_deref(), Some("s3cret"));
        assert_eq!(cli.config, PathBuf::from("/etc/m2.json"));
    }
}
