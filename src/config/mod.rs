//! Configuration: the Go version's `config.json`, loaded unchanged, plus optional
//! new settings with defaults.
//!
//! Loading is two steps. serde reads the file into the raw structs of [`raw`]
//! (with `serde_path_to_error`, so a type error names its key, e.g.
//! `eth_config.confirm_height`); then [`Config::from_raw`] fills defaults and
//! checks every value, naming the key of the first one that is wrong. The result
//! is a fully validated [`Config`]: the rest of the daemon never re-checks it.

mod alerts;
mod api;
mod ha;
mod raw;
mod webhook;

pub use alerts::{ClassAlerts, WalletAlerts};
pub use api::{ApiConfig, CONSOLE_TOKEN_ENV, TOKEN_ENV as API_TOKEN_ENV};
pub use ha::{DEFAULT_LEASE_SECS, LeaseConfig};
pub use webhook::{WebhookConfig, check_url as check_notify_url, public as public_ip};

use crate::msg::parse_address;
use crate::secret::Secret;
use alloy::primitives::Address;
use raw::{RawConfig, RawMysql, RawQueue};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Deliveries a consumer may hold unacknowledged when the config does not say:
/// several of listen's batches, so the broker keeps sending while one commits.
pub const DEFAULT_PREFETCH: u16 = 4096;

/// Blocks looked back for a newly watched address (`lookback_blocks`).
pub const DEFAULT_LOOKBACK: u64 = 256;
/// Most blocks `lookback_blocks` may ask for: the block window grows with it.
pub const MAX_LOOKBACK: u64 = 10_000;

/// Mainnet USDT (TetherToken), the default token table's only entry.
pub const MAINNET_USDT: &str = "0xdAC17F958D2ee523a2206206994597C13D831ec7";

/// Networks whose native coin, fee model and block time are known, so their
/// section may leave them out: name, native symbol, fee model, block time (ms).
/// Any other EVM network runs too; its section names its native symbol.
pub const KNOWN_NETS: &[(&str, &str, FeeModel, u64)] = &[
    ("ETH", "ETH", FeeModel::Eip1559, 12_000),
    ("BSC", "BNB", FeeModel::Legacy, 3_000),
    ("POLYGON", "POL", FeeModel::Eip1559, 2_000),
    ("ARBITRUM", "ETH", FeeModel::Eip1559, 250),
    ("BASE", "ETH", FeeModel::Eip1559, 2_000),
    ("OPTIMISM", "ETH", FeeModel::Eip1559, 2_000),
    ("AVAX", "AVAX", FeeModel::Eip1559, 2_000),
];

/// How a network prices transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeeModel {
    /// EIP-1559: `maxFeePerGas` and `maxPriorityFeePerGas` from the node's
    /// fee history (type-2 transactions).
    Eip1559,
    /// One `gasPrice` from `eth_gasPrice` (type-0 transactions, EIP-155
    /// replay-protected): BNB Smart Chain and older networks.
    Legacy,
}

impl FeeModel {
    fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "eip1559" | "eip-1559" => Some(Self::Eip1559),
            "legacy" => Some(Self::Legacy),
            _ => None,
        }
    }

    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Eip1559 => "eip1559",
            Self::Legacy => "legacy",
        }
    }
}

/// The config section of network `name`: `eth_config` for ETH,
/// `bsc_config` for BSC, and so on.
pub fn section_key(name: &str) -> String {
    format!("{}_config", name.to_ascii_lowercase())
}

/// What went wrong while loading a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not JSON of the expected shape.
    #[error("config key `{key}`: {message}")]
    Parse {
        /// Dotted path of the key where parsing stopped (`.` for the top level).
        key: String,
        /// What serde said.
        message: String,
    },
    /// A value is present but unusable.
    #[error("config key `{key}`: {reason}")]
    Invalid {
        /// Dotted path of the offending key.
        key: String,
        /// Plain-words reason.
        reason: String,
    },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Networks to run, in the order `net` names them (default `["ETH"]`),
    /// each with its own section.
    pub networks: Vec<Network>,
    /// RabbitMQ connection and topology; `None` without `rmq_config`, when
    /// requests come over the HTTP API only.
    pub rmq: Option<RmqConfig>,
    /// SQLite file of the message store (inbox, outbox, watches, deposits,
    /// block cursor): `msg_config.sqlite_path`, default `./msg.db`.
    pub msg_store: PathBuf,
    /// The message store on MySQL/MariaDB instead (`mysql_config.msg`, same
    /// fields as `mysql_config.wallet`; may be the same database): what
    /// instances on several machines share.
    pub msg_mysql: Option<MysqlConfig>,
    /// Requests and sent responses older than this are deleted from the
    /// message store (`msg_config.keep_days`; `None`, the default: kept).
    pub keep: Option<Duration>,
    /// Where the wallets and their ledger live.
    pub wallet_store: WalletStore,
    /// Logs.
    pub log: LogConfig,
    /// Health and metrics endpoint (`http_config.listen`, e.g.
    /// `127.0.0.1:9100`; off by default).
    pub http_listen: Option<std::net::SocketAddr>,
    /// The HTTP API on `http_listen` (`http_config.api`; off by default).
    pub api: Option<ApiConfig>,
    /// How answers are POSTed to `notify_url`s (`http_config.webhooks`).
    pub webhooks: WebhookConfig,
    /// The operator console's token (`http_config.console_token_file` or
    /// `M2POOL_CONSOLE_TOKEN`); `None`: the console is off.
    pub console_token: Option<crate::secret::Secret<String>>,
    /// When `/healthz` says degraded besides lost connections and a stalled head.
    pub health: HealthLimits,
    /// Network sections present but not named in `net` (`bsc_config` …):
    /// ignored, and `check-config` says so.
    pub ignored_sections: Vec<String>,
    /// The lease that elects the active instance (`ha_config`).
    pub lease: LeaseConfig,
}

/// Limits beyond which `/healthz` answers 503 (`http_config` keys). A lost
/// broker or node connection and a stalled head (`eth_config.head_stall_secs`)
/// always degrade; these add the two backlogs an operator must not let grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthLimits {
    /// Blocks the cursor may trail the node's head (`max_cursor_lag`, default
    /// 50; 0 turns the check off): beyond it, deposits are reported late.
    pub max_cursor_lag: Option<u64>,
    /// Age of the oldest response the broker has not confirmed yet
    /// (`max_outbox_age_secs`, default 60; 0 turns the check off): beyond it,
    /// responses are not getting out. An age rather than a count, so a burst
    /// that drains in seconds does not flap the health.
    pub max_outbox_age: Option<Duration>,
}

impl Default for HealthLimits {
    fn default() -> Self {
        Self {
            max_cursor_lag: Some(DEFAULT_MAX_CURSOR_LAG),
            max_outbox_age: Some(Duration::from_secs(DEFAULT_MAX_OUTBOX_AGE_SECS)),
        }
    }
}

/// Default of `http_config.max_cursor_lag`.
pub const DEFAULT_MAX_CURSOR_LAG: u64 = 50;
/// Default of `http_config.max_outbox_age_secs`.
pub const DEFAULT_MAX_OUTBOX_AGE_SECS: u64 = 60;

/// Logging (`log_config`).
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Folder of the per-address transaction logs (`dir`, default `./logs`;
    /// an empty string turns them off).
    pub txlog_dir: Option<PathBuf>,
    /// Transaction log files kept open at once (`max_open_files`, default 256).
    pub max_open_files: usize,
    /// Folder for daily main-log files (`main_log_dir`; default: stdout only).
    pub main_log_dir: Option<PathBuf>,
    /// `json` for JSON lines (`format`, default `text`).
    pub json: bool,
}

/// RabbitMQ settings (`rmq_config`).
#[derive(Debug, Clone)]
pub struct RmqConfig {
    /// AMQP URI (`sub_addr`); may carry a password, hence secret.
    pub url: Secret<String>,
    /// Unacknowledged deliveries per consumer (`prefetch`, default
    /// [`DEFAULT_PREFETCH`]).
    pub prefetch: u16,
    /// Where requests that cannot be answered are published
    /// (`dead_letter_exchange`, a durable fanout exchange; none by default:
    /// they are then only recorded and logged).
    pub dead_letter_exchange: Option<String>,
    /// Deposit-watch requests.
    pub topup: QueueEntry,
    /// Withdrawal requests.
    pub withdraw: QueueEntry,
    /// Payment requests.
    pub pay: QueueEntry,
    /// Remove-watch requests; absent in the older layout.
    pub remove: Option<QueueEntry>,
    /// Deposit notifications.
    pub topup_resp: QueueEntry,
    /// Withdrawal results.
    pub withdraw_resp: QueueEntry,
    /// Payment results.
    pub pay_resp: QueueEntry,
    /// Remove results; absent in the older layout.
    pub remove_resp: Option<QueueEntry>,
}

impl RmqConfig {
    /// Every configured entry with its config key, requests first.
    pub fn entries(&self) -> Vec<(&'static str, &QueueEntry)> {
        let mut all = vec![
            ("topup", &self.topup),
            ("withdraw", &self.withdraw),
            ("pay", &self.pay),
        ];
        all.extend(self.remove.as_ref().map(|q| ("remove", q)));
        all.extend([
            ("topup_resp", &self.topup_resp),
            ("withdraw_resp", &self.withdraw_resp),
            ("pay_resp", &self.pay_resp),
        ]);
        all.extend(self.remove_resp.as_ref().map(|q| ("remove_resp", q)));
        all
    }
}

/// One queue with its exchange and bindings.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueEntry {
    /// Durable queue name.
    pub queue: String,
    /// Exchange the queue is bound to.
    pub exchange: String,
    /// Binding keys; responses are published with the first.
    pub routing: Vec<String>,
    /// Exchange type (`exchange_type`, default `direct`; plugin types start with `x-`).
    pub exchange_type: String,
    /// Queue arguments (`arguments`, e.g. `x-queue-type`), passed to the broker as given.
    pub arguments: Map<String, Value>,
}

/// The wallet store: MySQL in production, an embedded SQLite file otherwise.
#[derive(Debug, Clone)]
pub enum WalletStore {
    /// `mysql_config.wallet` (or the older `eth_config.dbConfig`).
    Mysql(MysqlConfig),
    /// No MySQL configured: SQLite at `eth_config.sqlite_path`, default `./wallet.db`.
    Sqlite(PathBuf),
}

/// MySQL connection settings.
#[derive(Debug, Clone)]
pub struct MysqlConfig {
    /// User name.
    pub user: String,
    /// Password (may be empty).
    pub password: Secret<String>,
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Database (schema) name.
    pub database: String,
    /// Pool size (`maxOpenConns`, default 20).
    pub max_open_conns: u32,
    /// Connections kept idle (`maxIdleConns`, default 10).
    pub max_idle_conns: u32,
    /// Connection lifetime (`connMaxLife`; Go nanoseconds, or seconds when under 10^9).
    pub conn_max_life: Duration,
}

impl MysqlConfig {
    /// The database in words, without the password: `user@host:port/db`.
    pub fn target(&self) -> String {
        format!(
            "{}@{}:{}/{}",
            self.user, self.host, self.port, self.database
        )
    }
}

/// An ERC20 token the daemon knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// Symbol as requests spell it, upper case (`USDT`).
    pub symbol: String,
    /// Contract address.
    pub contract: Address,
    /// Decimals of the token's base unit.
    pub decimals: u8,
}

/// One EVM network's settings (`eth_config`, `bsc_config`, …).
#[derive(Debug, Clone)]
pub struct EthConfig {
    /// Symbol of the native coin (`native_symbol`: `ETH`, `BNB`, `POL` …).
    pub native: String,
    /// Decimals of the native coin (`native_decimals`, default 18).
    pub native_decimals: u8,
    /// How transactions are priced (`fee_model`: `eip1559` or `legacy`).
    pub fee_model: FeeModel,
    /// Typical time between blocks (`block_time_ms`): the defaults of the
    /// poll interval and the stall limit follow it.
    pub block_time: Duration,
    /// JSON-RPC endpoint (http, https, ws or wss).
    pub rpc_url: String,
    /// WebSocket endpoint for new-head notifications; without it the watcher polls.
    pub ws_url: Option<String>,
    /// More JSON-RPC endpoints, tried in turn when the current one keeps failing
    /// (`fallback_rpc_urls`).
    pub fallback_rpc_urls: Vec<String>,
    /// More WebSocket endpoints for new heads (`fallback_ws_urls`).
    pub fallback_ws_urls: Vec<String>,
    /// A head that has not advanced for this long is reported (`head_stall_secs`, default 120).
    pub head_stall: Duration,
    /// Blocks a transaction must be buried under before it is final (default 20).
    pub confirm_height: u64,
    /// Expected chain id; when set, the daemon refuses a node on another chain.
    pub chain_id: Option<u64>,
    /// ERC20 tokens (default: mainnet USDT). `ETH` is native ether, implicit.
    pub tokens: Vec<Token>,
    /// First block to scan on a fresh message store (default: the node's head then).
    pub start_block: Option<u64>,
    /// How often the watcher asks for the head when no WebSocket wakes it (default 2000 ms).
    pub poll_interval: Duration,
    /// Most blocks asked for in one `eth_getLogs` (default 500).
    pub max_block_range: u64,
    /// When an address starts being watched, transfers to it in this many
    /// blocks up to the one applied then are looked for too
    /// (`lookback_blocks`, default 256; 0: off).
    pub lookback_blocks: u64,
    /// A JSON-RPC request over HTTP with no answer by then fails and is
    /// retried, moving on to a fallback endpoint (`rpc_timeout_secs`, default 30).
    pub rpc_timeout: Duration,
    /// Most calls in one JSON-RPC batch (`max_rpc_batch`, default 100: Erigon's
    /// limit; geth's is 1000).
    pub max_rpc_batch: usize,
    /// Broadcast batches sent at once (`broadcasts_in_flight`, default 2).
    /// Batches sent at once can reach the node out of order; they are kept
    /// small enough that the transactions ahead of a gap never exceed what a
    /// node keeps per account for later (geth keeps 64).
    pub broadcasts_in_flight: usize,
    /// Payouts, gas and fees.
    pub payout: PayoutConfig,
    /// When its wallets are low on gas or tokens, and how often their
    /// balances are read (`wallet_alerts`, `balance_poll_secs`).
    pub alerts: WalletAlerts,
}

/// How payouts are paid (`eth_config` keys).
#[derive(Debug, Clone)]
pub struct PayoutConfig {
    /// The wallet that pays when the requested one holds too little
    /// (`collection_address`; default: the wallet store's collection wallet).
    pub collection: Option<Address>,
    /// Ceiling on `maxFeePerGas`, in wei (`max_fee_per_gas_gwei`, default 200 gwei).
    pub max_fee_per_gas: u128,
    /// Gas limit of a token transfer (`gas_limit_token`, default 100000).
    pub gas_limit_token: u64,
    /// Gas limit of an ether transfer to an address without code (`gas_limit_eth`, default 21000).
    pub gas_limit_eth: u64,
    /// How often payouts sent but not yet mined are broadcast again, same bytes
    /// (`rebroadcast_secs`, default 30).
    pub rebroadcast: Duration,
    /// A payout not mined this long after its last transaction was signed is
    /// replaced with the same nonce and higher fees (`stuck_payout_secs`, default 180).
    pub stuck_after: Duration,
}

impl EthConfig {
    /// Every JSON-RPC endpoint, the configured one first.
    pub fn rpc_urls(&self) -> Vec<String> {
        std::iter::once(self.rpc_url.clone())
            .chain(self.fallback_rpc_urls.iter().cloned())
            .collect()
    }

    /// Every WebSocket endpoint, the configured one first.
    pub fn ws_urls(&self) -> Vec<String> {
        self.ws_url
            .iter()
            .cloned()
            .chain(self.fallback_ws_urls.iter().cloned())
            .collect()
    }
}

impl EthConfig {
    /// Blocks kept to find a reorganisation's fork point and to check what a
    /// lookback finds: twice the confirmation depth, `lookback_blocks`, and
    /// never fewer than 128.
    pub fn block_window(&self) -> u64 {
        (self.confirm_height * 2).max(128).max(self.lookback_blocks)
    }

    /// Every symbol with its decimals: the native coin first, then the tokens.
    pub fn symbols(&self) -> impl Iterator<Item = (String, u8)> + '_ {
        std::iter::once((self.native.clone(), self.native_decimals))
            .chain(self.tokens.iter().map(|t| (t.symbol.clone(), t.decimals)))
    }

    /// Whether `symbol` is the native coin (`ETH` on Ethereum).
    pub fn is_native(&self, symbol: &str) -> bool {
        symbol.eq_ignore_ascii_case(&self.native)
    }

    /// Decimals of `symbol`: the native coin's, or the token's.
    pub fn decimals(&self, symbol: &str) -> Option<u8> {
        if self.is_native(symbol) {
            Some(self.native_decimals)
        } else {
            self.token(symbol).map(|t| t.decimals)
        }
    }

    /// The token with this symbol (case-insensitive), if configured.
    pub fn token(&self, symbol: &str) -> Option<&Token> {
        self.tokens
            .iter()
            .find(|t| t.symbol.eq_ignore_ascii_case(symbol))
    }
}

/// One network the daemon runs: a value built from the config, from which
/// the chain layer starts its scanner, sender, watch set and cursor.
#[derive(Debug, Clone)]
pub struct Network {
    /// Its name in requests, the `net` list and every stored row (`ETH`).
    pub name: String,
    /// Its EVM settings: node, tokens, confirmations, fees.
    pub evm: EthConfig,
}

impl Config {
    /// Where the message store is, in words (no password).
    pub fn msg_store_target(&self) -> String {
        match &self.msg_mysql {
            Some(m) => format!("MySQL {}", m.target()),
            None => format!("SQLite {}", self.msg_store.display()),
        }
    }

    /// Warnings about the configuration that do not stop the daemon, in
    /// plain words: ignored sections, and a shared message store whose
    /// wallet store is a local file.
    pub fn warnings(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .ignored_sections
            .iter()
            .map(|s| format!("`{s}` is not a network `net` names; it is ignored"))
            .collect();
        if self.msg_mysql.is_some() && matches!(self.wallet_store, WalletStore::Sqlite(_)) {
            out.push(
                "the message store is on MySQL (mysql_config.msg) but the wallet store is a local \
                 SQLite file: another machine taking over would have the messages but not the \
                 wallets' keys and ledger; put the wallet store on MySQL too (mysql_config.wallet)"
                    .to_owned(),
            );
        }
        out
    }

    /// The network named `name` (upper case), if it runs.
    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.name == name)
    }

    /// The names of the networks that run, in `net` order.
    pub fn net_names(&self) -> Vec<String> {
        self.networks.iter().map(|n| n.name.clone()).collect()
    }
}

impl Config {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&text)
    }

    /// Parses and validates a config from JSON text.
    pub fn from_json(text: &[u8]) -> Result<Self, ConfigError> {
        let de = &mut serde_json::Deserializer::from_slice(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::Parse {
                key,
                message: e.into_inner().to_string(),
            }
        })?;
        Self::from_raw(raw)
    }

    fn from_raw(raw: RawConfig) -> Result<Self, ConfigError> {
        let nets = raw.net.unwrap_or_else(|| vec!["ETH".to_owned()]);
        if nets.is_empty() {
            return Err(invalid("net", "lists no chain; use [\"ETH\"]"));
        }
        let mut names: Vec<String> = Vec::with_capacity(nets.len());
        for n in nets {
            let up = n.trim().to_ascii_uppercase();
            let plain = !up.is_empty()
                && up.len() <= 16
                && up.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !plain {
                return Err(invalid(
                    "net",
                    format!("`{n}` is not a network name (letters, digits and _, at most 16)"),
                ));
            }
            if names.contains(&up) {
                return Err(invalid("net", format!("`{up}` is named twice")));
            }
            names.push(up);
        }

        let rmq = raw.rmq_config.map(rmq_config).transpose()?;

        let (msg_store, keep_days) = match raw.msg_config {
            Some(m) => (m.sqlite_path, m.keep_days),
            None => (None, None),
        };
        let msg_store = msg_store.unwrap_or_else(|| PathBuf::from("./msg.db"));
        let keep = match keep_days {
            None | Some(0) => None,
            Some(d @ 1..=36_500) => Some(Duration::from_secs(d * 86_400)),
            Some(d) => {
                return Err(invalid(
                    "msg_config.keep_days",
                    format!("{d} is out of range; use 1 to 36500, or 0 to keep everything"),
                ));
            }
        };

        let mut eth_section = raw.eth_config;
        let db_config = eth_section.as_mut().and_then(|e| e.db_config.take());
        let (wallet_mysql, msg_mysql) = match raw.mysql_config {
            Some(m) => (m.wallet, m.msg),
            None => (None, None),
        };
        let msg_mysql = msg_mysql
            .map(|m| mysql("mysql_config.msg", m))
            .transpose()?;
        let mysql = match (wallet_mysql, db_config) {
            (Some(m), _) => Some(mysql("mysql_config.wallet", m)?),
            (None, Some(m)) => Some(mysql("eth_config.dbConfig", m)?),
            (None, None) => None,
        };
        let wallet_store = match mysql {
            Some(m) => WalletStore::Mysql(m),
            None => WalletStore::Sqlite(
                eth_section
                    .as_ref()
                    .and_then(|e| e.sqlite_path.clone())
                    .unwrap_or_else(|| PathBuf::from("./wallet.db")),
            ),
        };
        let ignored_sections: Vec<String> = raw
            .sections
            .keys()
            .filter(|k| {
                !k.starts_with("//")
                    && k.ends_with("_config")
                    && !names.iter().any(|n| section_key(n) == **k)
            })
            .cloned()
            .collect();
        let networks = networks(names, eth_section, raw.sections)?;

        let l = raw.log_config;
        let (dir, max_open, main, format) = match l {
            Some(l) => (l.dir, l.max_open_files, l.main_log_dir, l.format),
            None => (None, None, None, None),
        };
        let json = match format.as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                return Err(invalid(
                    "log_config.format",
                    format!("`{other}` is not text or json"),
                ));
            }
        };
        let log = LogConfig {
            txlog_dir: match dir {
                None => Some(PathBuf::from("./logs")),
                Some(d) if d.as_os_str().is_empty() => None,
                Some(d) => Some(d),
            },
            max_open_files: max_open.unwrap_or(256).max(1),
            main_log_dir: main.filter(|d| !d.as_os_str().is_empty()),
            json,
        };
        let (listen, max_lag, max_age, api_on, token_file, hooks, console_file) =
            match raw.http_config {
                Some(h) => (
                    h.listen,
                    h.max_cursor_lag,
                    h.max_outbox_age_secs,
                    h.api,
                    h.api_token_file,
                    h.webhooks,
                    h.console_token_file,
                ),
                None => (None, None, None, None, None, None, None),
            };
        let health = HealthLimits {
            max_cursor_lag: Some(max_lag.unwrap_or(DEFAULT_MAX_CURSOR_LAG)).filter(|n| *n > 0),
            max_outbox_age: Some(max_age.unwrap_or(DEFAULT_MAX_OUTBOX_AGE_SECS))
                .filter(|n| *n > 0)
                .map(Duration::from_secs),
        };
        let http_listen = match listen.filter(|l| !l.trim().is_empty()) {
            None => None,
            Some(l) => Some(l.parse().map_err(|_| {
                invalid(
                    "http_config.listen",
                    format!("`{l}` is not an address:port such as 127.0.0.1:9100"),
                )
            })?),
        };
        let api = api::api(api_on, token_file, http_listen.is_some())?;
        let console_token = api::console_token(console_file, http_listen.is_some(), api.as_ref())?;
        if rmq.is_none() && api.is_none() {
            return Err(invalid(
                "rmq_config",
                "is required unless requests come over the HTTP API (http_config.api)",
            ));
        }
        Ok(Self {
            networks,
            rmq,
            msg_store,
            msg_mysql,
            keep,
            wallet_store,
            log,
            http_listen,
            api,
            webhooks: webhook::webhooks(hooks)?,
            console_token,
            health,
            ignored_sections,
            lease: ha::lease(raw.ha_config)?,
        })
    }
}

/// The networks `names` lists, in that order, each read from its section:
/// ETH from `eth_config`, any other from `<name>_config` (`bsc_config`).
/// Two networks may not share a chain id: a node of one would pass for the
/// other's.
fn networks(
    names: Vec<String>,
    mut eth: Option<raw::RawEth>,
    mut sections: std::collections::BTreeMap<String, Value>,
) -> Result<Vec<Network>, ConfigError> {
    let mut out: Vec<Network> = Vec::with_capacity(names.len());
    for name in names {
        let key = section_key(&name);
        let section = if name == "ETH" {
            eth.take()
        } else {
            sections
                .remove(&key)
                .map(|v| {
                    serde_path_to_error::deserialize(v).map_err(|e| ConfigError::Parse {
                        key: format!("{key}.{}", e.path()),
                        message: e.into_inner().to_string(),
                    })
                })
                .transpose()?
        };
        let section = section.ok_or_else(|| {
            invalid(
                "net",
                format!("names {name}, but the config has no `{key}` section"),
            )
        })?;
        let evm = evm_config(&key, &name, section)?;
        if let Some(id) = evm.chain_id
            && let Some(other) = out.iter().find(|n| n.evm.chain_id == Some(id))
        {
            return Err(invalid(
                format!("{key}.chain_id"),
                format!("{id} is {}'s chain id too", other.name),
            ));
        }
        out.push(Network { name, evm });
    }
    Ok(out)
}

fn queue_entry(key: &str, raw: RawQueue) -> Result<QueueEntry, ConfigError> {
    if raw.queue.trim().is_empty() {
        return Err(invalid(format!("{key}.queue"), "must not be empty"));
    }
    if raw.routing.is_empty() {
        return Err(invalid(
            format!("{key}.routing"),
            "needs at least one routing key",
        ));
    }
    let exchange_type = raw.exchange_type.unwrap_or_else(|| "direct".to_owned());
    let known = ["direct", "fanout", "topic", "headers"].contains(&exchange_type.as_str());
    if !known && !exchange_type.starts_with("x-") {
        return Err(invalid(
            format!("{key}.exchange_type"),
            format!(
                "`{exchange_type}` is not one of direct, fanout, topic, headers \
                 or a plugin type starting with x-"
            ),
        ));
    }
    if raw.exchange.is_empty() {
        return Err(invalid(
            format!("{key}.exchange"),
            "must name an exchange (the default exchange cannot be declared or bound)",
        ));
    }
    Ok(QueueEntry {
        queue: raw.queue,
        exchange: raw.exchange,
        routing: raw.routing,
        exchange_type,
        arguments: raw.arguments.unwrap_or_default(),
    })
}

fn mysql(key: &str, m: RawMysql) -> Result<MysqlConfig, ConfigError> {
    if m.host.is_empty() {
        return Err(invalid(format!("{key}.host"), "must not be empty"));
    }
    if m.database.is_empty() {
        return Err(invalid(format!("{key}.database"), "must not be empty"));
    }
    let life = m.conn_max_life.unwrap_or(120);
    // Go marshals time.Duration as nanoseconds; the older layout wrote seconds.
    let conn_max_life = if life >= 1_000_000_000 {
        Duration::from_nanos(life)
    } else {
        Duration::from_secs(life)
    };
    Ok(MysqlConfig {
        user: m.user,
        password: Secret::new(m.password),
        host: m.host,
        port: m.port,
        database: m.database,
        max_open_conns: m.max_open_conns.unwrap_or(20).max(1),
        max_idle_conns: m.max_idle_conns.unwrap_or(10),
        conn_max_life,
    })
}

/// Network `name`'s settings from its section (`section` is the key it was
/// read from), with defaults from [`KNOWN_NETS`] where the section is silent.
fn evm_config(section: &str, name: &str, e: raw::RawEth) -> Result<EthConfig, ConfigError> {
    let k = |key: &str| format!("{section}.{key}");
    check_url(&k("rpc_url"), &e.rpc_url, &["http", "https", "ws", "wss"])?;
    let ws_url = e.ws_url.filter(|u| !u.trim().is_empty());
    if let Some(ws) = &ws_url {
        check_url(&k("ws_url"), ws, &["ws", "wss"])?;
    }
    let confirm_height = e.confirm_height.unwrap_or(20);
    if !(1..=10_000).contains(&confirm_height) {
        return Err(invalid(
            k("confirm_height"),
            format!("{confirm_height} is out of range; use 1 to 10000 (20 is usual)"),
        ));
    }
    // The watch set keeps a bit per symbol in a u64, ETH included.
    const MAX_TOKENS: usize = 63;
    let known = KNOWN_NETS.iter().find(|(n, ..)| *n == name);
    let native = match (e.native_symbol.as_deref().map(str::trim), known) {
        (Some(s), _) if !s.is_empty() => s.to_ascii_uppercase(),
        (_, Some((_, s, ..))) => (*s).to_owned(),
        _ => {
            return Err(invalid(
                k("native_symbol"),
                format!(
                    "`{name}` is not a network this build knows: name its native coin (e.g. \"BNB\")"
                ),
            ));
        }
    };
    let native_decimals = e.native_decimals.unwrap_or(18);
    if native_decimals > 36 {
        return Err(invalid(k("native_decimals"), "must be at most 36"));
    }
    let fee_model = match (e.fee_model.as_deref(), known) {
        (Some(f), _) => FeeModel::parse(f)
            .ok_or_else(|| invalid(k("fee_model"), format!("`{f}` is not eip1559 or legacy")))?,
        (None, Some((_, _, f, _))) => *f,
        (None, None) => FeeModel::Eip1559,
    };
    let block_time = match (e.block_time_ms, known) {
        (Some(0), _) => return Err(invalid(k("block_time_ms"), "must be above 0")),
        (Some(ms), _) => ms,
        (None, Some((.., ms))) => *ms,
        (None, None) => 2_000,
    };
    let tokens = match e.tokens {
        None if name != "ETH" => Vec::new(),
        None => vec![Token {
            symbol: "USDT".to_owned(),
            contract: parse_address(MAINNET_USDT).map_err(|r| invalid(k("tokens"), r))?,
            decimals: 6,
        }],
        Some(list) => {
            if list.len() > MAX_TOKENS {
                return Err(invalid(
                    k("tokens"),
                    format!("{} tokens; at most {MAX_TOKENS} are supported", list.len()),
                ));
            }
            let mut tokens: Vec<Token> = Vec::with_capacity(list.len());
            for (i, t) in list.into_iter().enumerate() {
                let key = format!("{section}.tokens[{i}]");
                let symbol = t.symbol.trim().to_ascii_uppercase();
                if symbol.is_empty() || symbol == native {
                    return Err(invalid(
                        format!("{key}.symbol"),
                        format!("must name an ERC20 token ({native} is native and always known)"),
                    ));
                }
                if tokens.iter().any(|x| x.symbol == symbol) {
                    return Err(invalid(format!("{key}.symbol"), "appears twice"));
                }
                let contract =
                    parse_address(&t.address).map_err(|r| invalid(format!("{key}.address"), r))?;
                if t.decimals > 36 {
                    return Err(invalid(format!("{key}.decimals"), "must be at most 36"));
                }
                tokens.push(Token {
                    symbol,
                    contract,
                    decimals: t.decimals,
                });
            }
            tokens
        }
    };
    // Half a block, at most the 2 s Ethereum has always used.
    let poll = e
        .poll_interval_ms
        .unwrap_or((block_time / 2).clamp(100, 2_000));
    if poll == 0 {
        return Err(invalid(k("poll_interval_ms"), "must be above 0"));
    }
    let max_block_range = e.max_block_range.unwrap_or(500);
    if max_block_range == 0 {
        return Err(invalid(k("max_block_range"), "must be above 0"));
    }
    let lookback_blocks = e.lookback_blocks.unwrap_or(DEFAULT_LOOKBACK);
    if lookback_blocks > MAX_LOOKBACK {
        return Err(invalid(
            k("lookback_blocks"),
            format!("must be at most {MAX_LOOKBACK}"),
        ));
    }
    let collection = e
        .collection_address
        .as_deref()
        .map(|a| parse_address(a).map_err(|r| invalid(k("collection_address"), r)))
        .transpose()?;
    let gwei = e.max_fee_per_gas_gwei.unwrap_or(200);
    if gwei == 0 {
        return Err(invalid(k("max_fee_per_gas_gwei"), "must be above 0"));
    }
    let gas_limit_token = e.gas_limit_token.unwrap_or(100_000);
    let gas_limit_eth = e.gas_limit_eth.unwrap_or(21_000);
    for (key, v) in [
        (&k("gas_limit_token"), gas_limit_token),
        (&k("gas_limit_eth"), gas_limit_eth),
    ] {
        if !(21_000..=30_000_000).contains(&v) {
            return Err(invalid(
                key,
                format!("{v} is out of range; use 21000 to 30000000"),
            ));
        }
    }
    let positive = |key: &str, v: Option<u64>, default: u64| -> Result<Duration, ConfigError> {
        match v.unwrap_or(default) {
            0 => Err(invalid(key, "must be above 0")),
            n => Ok(Duration::from_secs(n)),
        }
    };
    let rebroadcast = positive(&k("rebroadcast_secs"), e.rebroadcast_secs, 30)?;
    let stuck_after = positive(&k("stuck_payout_secs"), e.stuck_payout_secs, 180)?;
    // Ten blocks, never under the 2 minutes Ethereum has always used.
    let head_stall = positive(
        &k("head_stall_secs"),
        e.head_stall_secs,
        (block_time * 10 / 1000).max(120),
    )?;
    let rpc_timeout = positive(&k("rpc_timeout_secs"), e.rpc_timeout_secs, 30)?;
    let max_rpc_batch = match e.max_rpc_batch.unwrap_or(100) {
        n @ 1..=10_000 => n as usize,
        n => {
            return Err(invalid(
                k("max_rpc_batch"),
                format!("{n} is out of range; use 1 to 10000 (100 suits every common node)"),
            ));
        }
    };
    let broadcasts_in_flight = match e.broadcasts_in_flight.unwrap_or(2) {
        n @ 1..=16 => n as usize,
        n => {
            return Err(invalid(
                k("broadcasts_in_flight"),
                format!("{n} is out of range; use 1 to 16"),
            ));
        }
    };
    let fallback_rpc_urls = e.fallback_rpc_urls.unwrap_or_default();
    for (i, u) in fallback_rpc_urls.iter().enumerate() {
        check_url(
            &format!("{section}.fallback_rpc_urls[{i}]"),
            u,
            &["http", "https", "ws", "wss"],
        )?;
    }
    let fallback_ws_urls = e.fallback_ws_urls.unwrap_or_default();
    for (i, u) in fallback_ws_urls.iter().enumerate() {
        check_url(
            &format!("{section}.fallback_ws_urls[{i}]"),
            u,
            &["ws", "wss"],
        )?;
    }
    let alerts = alerts::wallet_alerts(
        section,
        e.wallet_alerts,
        e.balance_poll_secs,
        &alerts::Coins {
            native: (&native, native_decimals),
            tokens: tokens
                .iter()
                .map(|t| (t.symbol.as_str(), t.decimals))
                .collect(),
            one_transfer: alloy::primitives::U256::from(gas_limit_token)
                * alloy::primitives::U256::from(u128::from(gwei) * 1_000_000_000),
        },
    )?;
    let payout = PayoutConfig {
        collection,
        max_fee_per_gas: u128::from(gwei) * 1_000_000_000,
        gas_limit_token,
        gas_limit_eth,
        rebroadcast,
        stuck_after,
    };
    Ok(EthConfig {
        native,
        native_decimals,
        fee_model,
        block_time: Duration::from_millis(block_time),
        rpc_url: e.rpc_url,
        ws_url,
        fallback_rpc_urls,
        fallback_ws_urls,
        head_stall,
        confirm_height,
        chain_id: e.chain_id,
        tokens,
        start_block: e.start_block,
        poll_interval: Duration::from_millis(poll),
        max_block_range,
        lookback_blocks,
        rpc_timeout,
        max_rpc_batch,
        broadcasts_in_flight,
        payout,
        alerts,
    })
}

/// `rmq_config`, validated.
fn rmq_config(r: raw::RawRmq) -> Result<RmqConfig, ConfigError> {
    if !r.sub_addr.starts_with("amqp://") && !r.sub_addr.starts_with("amqps://") {
        return Err(invalid(
            "rmq_config.sub_addr",
            "must be an amqp:// or amqps:// URI",
        ));
    }
    if (r.remove.is_some()) != (r.remove_resp.is_some()) {
        return Err(invalid(
            "rmq_config.remove_resp",
            "`remove` and `remove_resp` must be given together",
        ));
    }
    let q = |key: &str, raw: RawQueue| queue_entry(&format!("rmq_config.{key}"), raw);
    Ok(RmqConfig {
        url: Secret::new(r.sub_addr),
        prefetch: r.prefetch.unwrap_or(DEFAULT_PREFETCH).max(1),
        dead_letter_exchange: r.dead_letter_exchange.filter(|x| !x.trim().is_empty()),
        topup: q("topup", r.topup)?,
        withdraw: q("withdraw", r.withdraw)?,
        pay: q("pay", r.pay)?,
        remove: r.remove.map(|x| q("remove", x)).transpose()?,
        topup_resp: q("topup_resp", r.topup_resp)?,
        withdraw_resp: q("withdraw_resp", r.withdraw_resp)?,
        pay_resp: q("pay_resp", r.pay_resp)?,
        remove_resp: r.remove_resp.map(|x| q("remove_resp", x)).transpose()?,
    })
}

fn check_url(key: &str, value: &str, schemes: &[&str]) -> Result<(), ConfigError> {
    let url = url::Url::parse(value).map_err(|e| invalid(key, format!("is not a URL: {e}")))?;
    if !schemes.contains(&url.scheme()) {
        return Err(invalid(
            key,
            format!(
                "scheme `{}` is not one of {}",
                url.scheme(),
                schemes.join(", ")
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
