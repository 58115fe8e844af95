//! The on-disk shape of `config.json`, exactly as serde reads it.
//!
//! Both layouts of the Go version load through these structs: the current one
//! (snake_case keys, `mysql_config.wallet`, `msg_config`) and the older one
//! (camelCase `rpcUrl`/`wsUrl`/`confirmHeight`, the wallet database under
//! `eth_config.dbConfig`). Another network's section (`bsc_config`, …) has
//! the keys of `eth_config`. Unknown keys are ignored. Every setting that the Go
//! version did not have is optional here; [`super::Config::from_raw`] fills in
//! the defaults and validates.

use serde::Deserialize;
use serde_json::{Map, Value};
use std::path::PathBuf;

#[derive(Debug, Deserialize)]
pub(super) struct RawConfig {
    pub net: Option<Vec<String>>,
    pub rmq_config: Option<RawRmq>,
    pub msg_config: Option<RawMsg>,
    pub mysql_config: Option<RawMysqlSection>,
    pub eth_config: Option<RawEth>,
    pub log_config: Option<RawLog>,
    pub http_config: Option<RawHttp>,
    pub ha_config: Option<super::ha::RawHa>,
    /// Every other top-level key: the sections of networks other than ETH
    /// (`bsc_config`, `polygon_config`, …), read once `net` names them.
    #[serde(flatten)]
    pub sections: std::collections::BTreeMap<String, Value>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawLog {
    pub dir: Option<PathBuf>,
    pub max_open_files: Option<usize>,
    pub main_log_dir: Option<PathBuf>,
    pub format: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawHttp {
    pub listen: Option<String>,
    pub api: Option<bool>,
    pub api_token_file: Option<PathBuf>,
    pub console_token_file: Option<PathBuf>,
    pub max_cursor_lag: Option<u64>,
    pub max_outbox_age_secs: Option<u64>,
    pub webhooks: Option<super::webhook::RawWebhooks>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawRmq {
    pub sub_addr: String,
    pub prefetch: Option<u16>,
    pub dead_letter_exchange: Option<String>,
    pub topup: RawQueue,
    pub withdraw: RawQueue,
    pub pay: RawQueue,
    pub remove: Option<RawQueue>,
    pub topup_resp: RawQueue,
    pub withdraw_resp: RawQueue,
    pub pay_resp: RawQueue,
    pub remove_resp: Option<RawQueue>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawQueue {
    pub queue: String,
    pub exchange: String,
    pub routing: Vec<String>,
    pub exchange_type: Option<String>,
    pub arguments: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawMsg {
    pub sqlite_path: Option<PathBuf>,
    pub keep_days: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawMysqlSection {
    pub wallet: Option<RawMysql>,
    pub msg: Option<RawMysql>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawMysql {
    pub user: String,
    #[serde(default)]
    pub password: String,
    pub host: String,
    pub port: u16,
    pub database: String,
    #[serde(rename = "maxOpenConns", alias = "max_open_conns")]
    pub max_open_conns: Option<u32>,
    // The older layout spells it `maxIdleCoons`.
    #[serde(
        rename = "maxIdleConns",
        alias = "maxIdleCoons",
        alias = "max_idle_conns"
    )]
    pub max_idle_conns: Option<u32>,
    /// Go `time.Duration` (nanoseconds) or, in the older layout, seconds.
    #[serde(rename = "connMaxLife", alias = "conn_max_life")]
    pub conn_max_life: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawEth {
    #[serde(alias = "rpcUrl")]
    pub rpc_url: String,
    #[serde(alias = "wsUrl")]
    pub ws_url: Option<String>,
    #[serde(alias = "confirmHeight")]
    pub confirm_height: Option<u64>,
    pub sqlite_path: Option<PathBuf>,
    #[serde(rename = "dbConfig", alias = "db_config")]
    pub db_config: Option<RawMysql>,
    pub chain_id: Option<u64>,
    pub tokens: Option<Vec<RawToken>>,
    pub start_block: Option<u64>,
    pub poll_interval_ms: Option<u64>,
    pub max_block_range: Option<u64>,
    pub lookback_blocks: Option<u64>,
    pub rpc_timeout_secs: Option<u64>,
    pub max_rpc_batch: Option<u64>,
    pub broadcasts_in_flight: Option<u64>,
    pub collection_address: Option<String>,
    pub max_fee_per_gas_gwei: Option<u64>,
    pub gas_limit_token: Option<u64>,
    pub gas_limit_eth: Option<u64>,
    pub rebroadcast_secs: Option<u64>,
    pub stuck_payout_secs: Option<u64>,
    pub head_stall_secs: Option<u64>,
    pub fallback_rpc_urls: Option<Vec<String>>,
    pub fallback_ws_urls: Option<Vec<String>>,
    pub native_symbol: Option<String>,
    pub native_decimals: Option<u8>,
    pub fee_model: Option<String>,
    pub block_time_ms: Option<u64>,
    pub balance_poll_secs: Option<u64>,
    pub wallet_alerts: Option<super::alerts::RawAlerts>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawToken {
    pub symbol: String,
    pub address: String,
    pub decimals: u8,
}
