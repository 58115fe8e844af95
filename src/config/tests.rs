use super::*;

/// The `ETH` network's section.
fn eth(c: &Config) -> &EthConfig {
    &c.network("ETH").expect("ETH runs").evm
}

const V1: &[u8] = include_bytes!("../../tests/fixtures/compat/config.go-v1.json");
const V2: &[u8] = include_bytes!("../../tests/fixtures/compat/config.go-v2.json");

/// The broker section of a config that has one.
fn rmq(c: &Config) -> &RmqConfig {
    c.rmq.as_ref().expect("rmq_config")
}

#[test]
fn go_v2_config_loads_unchanged() {
    let c = Config::from_json(V2).expect("v2 config loads");
    assert_eq!(c.net_names(), vec!["ETH"]);
    assert_eq!(rmq(&c).url.expose(), "amqp://m2pool:m2pool@localhost:5672");
    assert_eq!(rmq(&c).topup.queue, "pay.recharge.queue");
    assert_eq!(rmq(&c).topup.exchange, "pay.exchange");
    assert_eq!(rmq(&c).topup.exchange_type, "direct");
    assert_eq!(
        rmq(&c).remove_resp.as_ref().map(|q| q.routing[0].as_str()),
        Some("pay.remove.return.routing.key")
    );
    assert_eq!(c.msg_store, PathBuf::from("./msg.db"));
    assert_eq!(eth(&c).rpc_url, "http://localhost:8545");
    assert_eq!(eth(&c).ws_url.as_deref(), Some("ws://localhost:8546"));
    assert_eq!(eth(&c).confirm_height, 20);
    assert_eq!(eth(&c).rpc_timeout, std::time::Duration::from_secs(30));
    assert_eq!(eth(&c).max_rpc_batch, 100);
    assert_eq!(c.keep, None, "everything kept unless asked");
    assert_eq!(eth(&c).tokens.len(), 1);
    assert_eq!(eth(&c).tokens[0].symbol, "USDT");
    assert_eq!(eth(&c).tokens[0].decimals, 6);
    match &c.wallet_store {
        WalletStore::Mysql(m) => {
            assert_eq!(m.user, "root");
            assert_eq!(m.password.expose(), "your_password");
            assert_eq!(m.database, "payment");
            assert_eq!(m.max_open_conns, 20);
            assert_eq!(m.max_idle_conns, 10);
            assert_eq!(m.conn_max_life, Duration::from_secs(120));
        }
        other => panic!("expected MySQL wallet store, got {other:?}"),
    }
    assert_eq!(rmq(&c).entries().len(), 8);
}

#[test]
fn go_v1_config_loads_unchanged() {
    let c = Config::from_json(V1).expect("v1 config loads");
    assert_eq!(c.net_names(), vec!["ETH"]);
    assert!(rmq(&c).remove.is_none() && rmq(&c).remove_resp.is_none());
    assert_eq!(rmq(&c).entries().len(), 6);
    assert_eq!(eth(&c).rpc_url, "http://localhost:8545");
    assert_eq!(eth(&c).ws_url.as_deref(), Some("ws://localhost:8546"));
    assert_eq!(eth(&c).confirm_height, 20);
    assert_eq!(c.msg_store, PathBuf::from("./msg.db"));
    match &c.wallet_store {
        WalletStore::Mysql(m) => {
            assert_eq!(m.port, 3306);
            // `maxIdleCoons`, the older spelling, is read.
            assert_eq!(m.max_idle_conns, 20);
            assert_eq!(m.conn_max_life, Duration::from_secs(120));
        }
        other => panic!("expected MySQL wallet store, got {other:?}"),
    }
}

#[test]
fn secrets_do_not_print() {
    let c = Config::from_json(V2).expect("v2 config loads");
    let dump = format!("{c:?}");
    assert!(!dump.contains("your_password"), "{dump}");
    assert!(!dump.contains("m2pool:m2pool"), "{dump}");
}

fn v2_with(edit: impl FnOnce(&mut Value)) -> Result<Config, ConfigError> {
    let mut v: Value = serde_json::from_slice(V2).expect("fixture is JSON");
    edit(&mut v);
    Config::from_json(&serde_json::to_vec(&v).expect("serializes"))
}

fn key_of(e: ConfigError) -> String {
    match e {
        ConfigError::Parse { key, .. } | ConfigError::Invalid { key, .. } => key,
        ConfigError::Read { .. } => "<read>".into(),
    }
}

#[test]
fn without_mysql_the_wallet_store_is_embedded_sqlite() {
    let c = v2_with(|v| {
        v.as_object_mut().expect("object").remove("mysql_config");
    })
    .expect("loads");
    match c.wallet_store {
        WalletStore::Sqlite(p) => assert_eq!(p, PathBuf::from("./eth.db")),
        other => panic!("expected SQLite, got {other:?}"),
    }
}

#[test]
fn new_settings_are_read() {
    let c = v2_with(|v| {
        v["eth_config"]["chain_id"] = 31337.into();
        v["eth_config"]["tokens"] = serde_json::json!([
            {"symbol": "usdt", "address": "0x5fbdb2315678afecb367f032d93f642f64180aa3", "decimals": 6},
            {"symbol": "USDC", "address": "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48", "decimals": 6}
        ]);
        v["rmq_config"]["topup"]["arguments"] = serde_json::json!({"x-queue-type": "quorum"});
    })
    .expect("loads");
    assert_eq!(eth(&c).chain_id, Some(31337));
    assert_eq!(eth(&c).tokens[0].symbol, "USDT");
    assert_eq!(eth(&c).token("usdc").map(|t| t.decimals), Some(6));
    assert!(eth(&c).token("DAI").is_none());
    assert_eq!(rmq(&c).topup.arguments["x-queue-type"], "quorum");
}

#[test]
fn errors_name_the_key() {
    type Edit = Box<dyn FnOnce(&mut Value)>;
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|v| v["eth_config"]["confirm_height"] = "twenty".into()),
            "eth_config.confirm_height",
        ),
        (
            Box::new(|v| v["eth_config"]["confirm_height"] = 0.into()),
            "eth_config.confirm_height",
        ),
        (
            Box::new(|v| {
                v["eth_config"]["tokens"] = (0..64)
                    .map(|i| {
                        serde_json::json!({"symbol": format!("T{i}"),
                            "address": format!("0x{i:040x}"), "decimals": 6})
                    })
                    .collect();
            }),
            "eth_config.tokens",
        ),
        (
            Box::new(|v| {
                v["eth_config"]
                    .as_object_mut()
                    .expect("obj")
                    .remove("rpc_url");
            }),
            "eth_config",
        ),
        (
            Box::new(|v| v["eth_config"]["rpc_url"] = "localhost:8545".into()),
            "eth_config.rpc_url",
        ),
        (
            Box::new(|v| v["eth_config"]["ws_url"] = "http://localhost:8546".into()),
            "eth_config.ws_url",
        ),
        (
            Box::new(|v| v["rmq_config"]["sub_addr"] = "localhost".into()),
            "rmq_config.sub_addr",
        ),
        (
            Box::new(|v| v["rmq_config"]["pay"]["routing"] = serde_json::json!([])),
            "rmq_config.pay.routing",
        ),
        (
            Box::new(|v| v["rmq_config"]["topup"]["exchange_type"] = "weird".into()),
            "rmq_config.topup.exchange_type",
        ),
        (Box::new(|v| v["net"] = serde_json::json!(["TRON"])), "net"),
        (
            Box::new(|v| {
                v["eth_config"]["tokens"] =
                    serde_json::json!([{"symbol": "USDT", "address": "0x12", "decimals": 6}])
            }),
            "eth_config.tokens[0].address",
        ),
        (
            Box::new(|v| {
                v["rmq_config"]
                    .as_object_mut()
                    .expect("obj")
                    .remove("remove_resp");
            }),
            "rmq_config.remove_resp",
        ),
        (
            Box::new(|v| v["mysql_config"]["wallet"]["port"] = "3306".into()),
            "mysql_config.wallet.port",
        ),
        (
            Box::new(|v| v["eth_config"]["rpc_timeout_secs"] = 0.into()),
            "eth_config.rpc_timeout_secs",
        ),
        (
            Box::new(|v| v["eth_config"]["max_rpc_batch"] = 0.into()),
            "eth_config.max_rpc_batch",
        ),
        (
            Box::new(|v| v["msg_config"]["keep_days"] = 100_000.into()),
            "msg_config.keep_days",
        ),
    ];
    for (edit, want) in cases {
        let err = v2_with(edit).expect_err("must be refused");
        let msg = err.to_string();
        assert_eq!(key_of(err), want, "{msg}");
    }
}

#[test]
fn not_json_is_an_error_not_a_panic() {
    assert!(Config::from_json(b"{").is_err());
    assert!(Config::from_json(b"[]").is_err());
    assert!(Config::from_json(b"").is_err());
}

#[test]
fn health_limits_default_and_zero_turns_them_off() {
    let c = Config::from_json(V2).expect("loads");
    assert_eq!(c.health, HealthLimits::default());
    assert_eq!(c.health.max_cursor_lag, Some(DEFAULT_MAX_CURSOR_LAG));
    let c = v2_with(|v| {
        v["http_config"] =
            serde_json::json!({"listen": "127.0.0.1:9100", "max_cursor_lag": 0, "max_outbox_age_secs": 5})
    })
    .expect("loads");
    assert_eq!(c.health.max_cursor_lag, None);
    assert_eq!(c.health.max_outbox_age, Some(Duration::from_secs(5)));
    let err = v2_with(|v| v["http_config"] = serde_json::json!({"max_cursor_lag": -1}))
        .expect_err("negative");
    assert_eq!(key_of(err), "http_config.max_cursor_lag");
}

#[test]
fn lookback_defaults_to_256_blocks_and_widens_the_block_window() {
    let c = Config::from_json(V2).expect("loads");
    assert_eq!(eth(&c).lookback_blocks, DEFAULT_LOOKBACK);
    assert_eq!(
        eth(&c).block_window(),
        256,
        "twice 20 is less than the lookback"
    );
    let c = v2_with(|v| {
        v["eth_config"]["lookback_blocks"] = 0.into();
        v["eth_config"]["confirm_height"] = 100.into();
    })
    .expect("loads");
    assert_eq!(eth(&c).lookback_blocks, 0, "0 turns it off");
    assert_eq!(eth(&c).block_window(), 200);
    let err = v2_with(|v| v["eth_config"]["lookback_blocks"] = (MAX_LOOKBACK + 1).into())
        .expect_err("too many");
    assert_eq!(key_of(err), "eth_config.lookback_blocks");
}

const THREE: &[u8] = include_bytes!("../../docs/config.three-networks.json");

/// `THREE` edited by `edit`.
fn three_with(edit: impl FnOnce(&mut serde_json::Value)) -> Result<Config, ConfigError> {
    let mut v: serde_json::Value = serde_json::from_slice(THREE).expect("json");
    edit(&mut v);
    Config::from_json(&serde_json::to_vec(&v).expect("json"))
}

#[test]
fn three_networks_load_each_from_its_own_section() {
    let c = Config::from_json(THREE).expect("the documented example loads");
    assert_eq!(c.net_names(), vec!["ETH", "BSC", "POLYGON"]);
    let net = |n: &str| &c.network(n).expect("runs").evm;
    let (eth, bsc, pol) = (net("ETH"), net("BSC"), net("POLYGON"));
    assert_eq!(
        (
            eth.native.as_str(),
            bsc.native.as_str(),
            pol.native.as_str()
        ),
        ("ETH", "BNB", "POL")
    );
    assert_eq!(
        (eth.fee_model, bsc.fee_model, pol.fee_model),
        (FeeModel::Eip1559, FeeModel::Legacy, FeeModel::Eip1559)
    );
    assert_eq!(eth.decimals("USDT"), Some(6));
    assert_eq!(bsc.decimals("USDT"), Some(18));
    assert_eq!(bsc.decimals("bnb"), Some(18));
    assert_eq!(bsc.decimals("ETH"), None, "ether is not BSC's coin");
    assert!(bsc.is_native("BNB") && !bsc.is_native("ETH"));
    assert_eq!((bsc.chain_id, pol.confirm_height), (Some(56), 64));
    assert_eq!(
        bsc.poll_interval,
        Duration::from_millis(1_500),
        "half a block"
    );
    assert_eq!(eth.poll_interval, Duration::from_millis(2_000));
    assert_eq!(bsc.payout.max_fee_per_gas, 5_000_000_000);
    assert_eq!(
        bsc.symbols().collect::<Vec<_>>(),
        vec![
            ("BNB".to_owned(), 18),
            ("USDT".to_owned(), 18),
            ("USDC".to_owned(), 18)
        ]
    );
}

#[test]
fn the_go_config_keeps_ethereums_defaults() {
    let c = Config::from_json(V2).expect("loads");
    let e = eth(&c);
    assert_eq!((e.native.as_str(), e.native_decimals), ("ETH", 18));
    assert_eq!(e.fee_model, FeeModel::Eip1559);
    assert_eq!(e.poll_interval, Duration::from_millis(2_000));
    assert_eq!(e.head_stall, Duration::from_secs(120));
}

#[test]
fn a_network_without_a_well_formed_section_is_refused_by_key() {
    type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|v| {
                v.as_object_mut().expect("obj").remove("bsc_config");
            }),
            "net",
        ),
        (
            Box::new(|v| v["net"] = serde_json::json!(["ETH", "eth"])),
            "net",
        ),
        (
            Box::new(|v| v["polygon_config"]["chain_id"] = 56.into()),
            "polygon_config.chain_id",
        ),
        (
            Box::new(|v| {
                v["bsc_config"]["tokens"][0]
                    .as_object_mut()
                    .expect("obj")
                    .remove("decimals");
            }),
            "bsc_config.tokens[0]",
        ),
        (
            Box::new(|v| v["bsc_config"]["tokens"][0]["symbol"] = "bnb".into()),
            "bsc_config.tokens[0].symbol",
        ),
        (
            Box::new(|v| v["bsc_config"]["fee_model"] = "cheap".into()),
            "bsc_config.fee_model",
        ),
        (
            Box::new(|v| v["bsc_config"]["rpc_url"] = "bsc.example.net".into()),
            "bsc_config.rpc_url",
        ),
        (
            Box::new(|v| {
                v["net"] = serde_json::json!(["ETH", "FANTOM"]);
                v["fantom_config"] = serde_json::json!({"rpc_url": "http://localhost:1"});
            }),
            "fantom_config.native_symbol",
        ),
    ];
    for (edit, want) in cases {
        let err = three_with(edit).expect_err("must be refused");
        let msg = err.to_string();
        assert_eq!(key_of(err), want, "{msg}");
    }
    let c = three_with(|v| {
        v["net"] = serde_json::json!(["ETH", "FANTOM"]);
        v["fantom_config"] =
            serde_json::json!({"rpc_url": "http://localhost:1", "native_symbol": "ftm"});
    })
    .expect("an unknown network naming its coin runs");
    let f = &c.network("FANTOM").expect("runs").evm;
    assert_eq!((f.native.as_str(), f.fee_model), ("FTM", FeeModel::Eip1559));
    assert!(f.tokens.is_empty(), "mainnet USDT is Ethereum's alone");
}

#[test]
fn the_message_store_may_live_on_mysql_and_a_local_wallet_store_is_warned_of() {
    let msg = serde_json::json!({"user": "m2", "password": "pw", "host": "db.internal", "port": 3306,
                                 "database": "payment"});
    let c = v2_with(|v| v["mysql_config"]["msg"] = msg.clone()).expect("loads");
    let m = c.msg_mysql.as_ref().expect("on MySQL");
    assert_eq!(
        (m.host.as_str(), m.database.as_str()),
        ("db.internal", "payment")
    );
    assert_eq!(c.msg_store_target(), "MySQL m2@db.internal:3306/payment");
    assert!(c.warnings().is_empty(), "the wallet store is on MySQL too");
    let c = v2_with(|v| {
        v["mysql_config"]["msg"] = msg.clone();
        v["mysql_config"]
            .as_object_mut()
            .expect("obj")
            .remove("wallet");
    })
    .expect("loads");
    let w = c.warnings();
    assert!(
        w.len() == 1 && w[0].contains("wallet store is a local SQLite file"),
        "{w:?}"
    );
    let go = Config::from_json(V2).expect("loads");
    assert!(go.msg_mysql.is_none() && go.warnings().is_empty());
    assert_eq!(go.msg_store_target(), "SQLite ./msg.db");
    let err = v2_with(|v| {
        v["mysql_config"]["msg"] = msg.clone();
        v["mysql_config"]["msg"]["host"] = "".into();
    })
    .expect_err("no host");
    assert_eq!(key_of(err), "mysql_config.msg.host");
}

#[test]
fn without_rmq_config_requests_need_the_http_api() {
    let mut v: serde_json::Value = serde_json::from_slice(V2).expect("json");
    if let Some(o) = v.as_object_mut() {
        o.remove("rmq_config");
    }
    let err = Config::from_json(&serde_json::to_vec(&v).expect("serializes"))
        .expect_err("no way in for requests");
    assert!(
        matches!(err, ConfigError::Invalid { ref key, .. } if key == "rmq_config"),
        "{err}"
    );
    v["http_config"] = serde_json::json!({"listen": "127.0.0.1:9100", "api": true});
    let c = Config::from_json(&serde_json::to_vec(&v).expect("serializes"))
        .expect("the HTTP API alone");
    assert!(c.rmq.is_none() && c.api.is_some());
}
