use super::*;
use crate::secret::Secret;
use serde_json::{Value, json};

const CONFIG: &[u8] = include_bytes!("../../tests/fixtures/compat/config.go-v2.json");
const KEY: &[u8] = b"test-secret";
const ADDR: &str = "0x4e5b2e1dc63f6b91cb6cd759936495434c7e972f";

fn router() -> Router {
    let config = Config::from_json(CONFIG).expect("config");
    Router::new(&config, Secret::new(KEY.to_vec()))
}

fn signed(mut v: Value) -> Vec<u8> {
    let body = serde_json::to_vec(&v).expect("json");
    let s = sign::sign_message(KEY, &body).expect("signs");
    v["sign"] = s.into();
    serde_json::to_vec(&v).expect("json")
}

fn topup() -> Value {
    json!({"chain": "ETH", "symbol": "USDT", "address": ADDR, "timestamp": 1758610297})
}

fn reply_json(r: &Routed) -> Value {
    match r {
        Routed::Refuse { replies, .. } => {
            serde_json::from_slice(&replies[0].body).expect("reply json")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_signed_topup_is_watched() {
    let req = router().route(Kind::Topup, signed(topup()));
    match req.routed {
        Routed::Watch(w) => {
            assert_eq!(w.chain, "ETH");
            assert_eq!(w.symbol, "USDT");
            assert_eq!(msg::addr_hex(&w.address), ADDR);
        }
        other => panic!("expected Watch, got {other:?}"),
    }
}

#[test]
fn the_design_vector_message_verifies() {
    let mut v = topup();
    v["sign"] = "DC23568E23E62F8A5E989693D165B4B0EFC348E0982C2C1F4E547794EEF90F8A".into();
    let req = router().route(Kind::Topup, serde_json::to_vec(&v).expect("json"));
    assert!(matches!(req.routed, Routed::Watch(_)), "{:?}", req.routed);
}

#[test]
fn symbols_and_addresses_are_normalised() {
    let mut v = topup();
    v["symbol"] = "usdt".into();
    v["chain"] = "eth".into();
    v["address"] = ADDR.to_uppercase().replace("0X", "0x").into();
    match router().route(Kind::Topup, signed(v)).routed {
        Routed::Watch(w) => {
            assert_eq!((w.chain.as_str(), w.symbol.as_str()), ("ETH", "USDT"));
            assert_eq!(msg::addr_hex(&w.address), ADDR);
        }
        other => panic!("expected Watch, got {other:?}"),
    }
}

#[test]
fn bad_signatures_get_status_3() {
    let r = router();
    let mut tampered: Value = serde_json::from_slice(&signed(topup())).expect("json");
    tampered["symbol"] = "ETH".into();
    let mut unsigned = topup();
    unsigned.as_object_mut().expect("obj").remove("sign");
    let mut wrong_type = topup();
    wrong_type["sign"] = 5.into();
    for v in [tampered, unsigned, wrong_type] {
        let routed = r
            .route(Kind::Topup, serde_json::to_vec(&v).expect("json"))
            .routed;
        assert!(matches!(
            routed,
            Routed::Refuse {
                outcome: Outcome::BadSignature,
                ..
            }
        ));
        let reply = reply_json(&routed);
        assert_eq!(reply["status"], 3);
        assert_eq!(reply["address"], ADDR);
        assert!(reply["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    // Signed with another key.
    let mut v = topup();
    v["sign"] = sign::sign_message(b"other", &serde_json::to_vec(&v).expect("json"))
        .expect("signs")
        .into();
    let routed = r
        .route(Kind::Topup, serde_json::to_vec(&v).expect("json"))
        .routed;
    assert_eq!(reply_json(&routed)["status"], 3);
}

#[test]
fn invalid_requests_get_status_0_with_a_reason() {
    let r = router();
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"chain": "BTC", "symbol": "USDT", "address": ADDR, "timestamp": 1}),
            "unknown chain",
        ),
        (
            json!({"chain": "ETH", "symbol": "DAI", "address": ADDR, "timestamp": 1}),
            "unknown symbol",
        ),
        (
            json!({"chain": "ETH", "symbol": "USDT", "address": "0x1111...", "timestamp": 1}),
            "not a valid address",
        ),
        (
            json!({"chain": "ETH", "symbol": "USDT", "address": "0x0000000000000000000000000000000000000000", "timestamp": 1}),
            "zero address",
        ),
        (
            json!({"chain": "ETH", "symbol": "USDT", "address": ADDR}),
            "missing field `timestamp`",
        ),
        (
            json!({"chain": "ETH", "symbol": "USDT", "address": ADDR, "timestamp": "now"}),
            "`timestamp` must be a number",
        ),
        (
            json!({"chain": 1, "symbol": "USDT", "address": ADDR, "timestamp": 1}),
            "`chain` must be a string",
        ),
        (
            json!({"symbol": "USDT", "address": ADDR, "timestamp": 1}),
            "missing field `chain`",
        ),
    ];
    for (v, want) in cases {
        let routed = r.route(Kind::Topup, signed(v.clone())).routed;
        let reply = reply_json(&routed);
        assert_eq!(reply["status"], 0, "{v}");
        let error = reply["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(want),
            "{v}: {error:?} should mention {want:?}"
        );
        assert_eq!(reply["amount"], 0);
        assert_eq!(reply["tx_hash"], "");
    }
}

#[test]
fn what_cannot_be_addressed_is_dropped_with_a_reason() {
    let r = router();
    for body in [
        &b"not json"[..],
        b"",
        b"[1,2]",
        b"{\"address\": 5}",
        b"{\"chain\":\"ETH\"}",
        b"{\"address\":\"0x1\",\"address\":\"0x2\"}",
        b"\xff\x00\x13",
    ] {
        let routed = r.route(Kind::Topup, body.to_vec()).routed;
        assert!(matches!(routed, Routed::Unaddressable { .. }), "{routed:?}");
    }
    let huge = vec![b' '; MAX_BODY + 1];
    assert!(matches!(
        r.route(Kind::Topup, huge).routed,
        Routed::Unaddressable { .. }
    ));
}

#[test]
fn a_field_given_twice_is_refused_and_answered_where_it_can_be() {
    let r = router();
    // Another field twice: answered, naming it.
    let body = String::from_utf8(signed(topup())).expect("utf8");
    let twice = body.replacen('{', r#"{"symbol":"ETH","#, 1);
    let routed = r.route(Kind::Remove, twice.into_bytes()).routed;
    let v = reply_json(&routed);
    assert_eq!(v["status"], 0);
    assert_eq!(v["address"], ADDR);
    assert_eq!(v["error"], "field `symbol` appears twice");
    // The addressing field twice with one value: answered too.
    let body = String::from_utf8(signed(withdraw())).expect("utf8");
    let twice = body.replacen('{', r#"{"queue_id":"withdraw_123","#, 1);
    let v = replies_json(&r.route(Kind::Withdraw, twice.into_bytes()).routed);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["queue_id"], "withdraw_123");
    assert_eq!(v[0]["error"], "field `queue_id` appears twice");
    // With two values it names nobody for sure: not answered.
    let twice = body.replacen('{', r#"{"queue_id":"other","#, 1);
    assert!(matches!(
        r.route(Kind::Withdraw, twice.into_bytes()).routed,
        Routed::Unaddressable { .. }
    ));
}

#[test]
fn remove_unwatches_or_cancels() {
    let r = router();
    assert!(matches!(
        r.route(Kind::Remove, signed(topup())).routed,
        Routed::Unwatch(_)
    ));
    let mut v = topup();
    v["queue_id"] = "withdraw_123".into();
    match r.route(Kind::Remove, signed(v)).routed {
        Routed::Cancel { queue_id, .. } => assert_eq!(queue_id, "withdraw_123"),
        other => panic!("expected Cancel, got {other:?}"),
    }
    let mut bad = topup();
    bad["symbol"] = "XYZ".into();
    let routed = r.route(Kind::Remove, signed(bad)).routed;
    match &routed {
        Routed::Refuse { replies, .. } => assert_eq!(replies[0].kind, "remove_resp"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(reply_json(&routed)["status"], 0);
}

#[test]
fn redeliveries_hash_the_same_and_kinds_differ() {
    let r = router();
    let body = signed(topup());
    let a = r.route(Kind::Topup, body.clone());
    let b = r.route(Kind::Topup, body.clone());
    let c = r.route(Kind::Remove, body);
    assert_eq!(a.body_hash, b.body_hash);
    assert_ne!(a.body_hash, c.body_hash);
}

fn withdraw() -> Value {
    json!({"queue_id": "withdraw_123", "from_address": "0x1111111111111111111111111111111111111111",
           "to_address": "0x2222222222222222222222222222222222222222", "amount": 50.25,
           "chain": "ETH", "symbol": "USDT", "timestamp": 1758610297})
}

fn replies_json(r: &Routed) -> Vec<Value> {
    match r {
        Routed::Refuse { replies, .. } => replies
            .iter()
            .map(|x| serde_json::from_slice(&x.body).expect("reply json"))
            .collect(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_signed_withdrawal_becomes_one_payout() {
    let body = withdraw();
    // The README's test vector: this exact message signs to 3395a064….
    assert_eq!(
        sign::sign_message(KEY, &serde_json::to_vec(&body).expect("json")).expect("signs"),
        "3395a064fd0f7626285e0f630f674a6e37180a4353e5c30777452affb51ef346"
    );
    match router().route(Kind::Withdraw, signed(body)).routed {
        Routed::Payout(p) => {
            assert_eq!(p.len(), 1);
            assert_eq!(p[0].kind, Kind::Withdraw);
            assert_eq!(p[0].order_id, "");
            assert_eq!(p[0].amount, alloy::primitives::U256::from(50_250_000u64));
            assert_eq!(
                msg::addr_hex(&p[0].to),
                "0x2222222222222222222222222222222222222222"
            );
            assert_ne!(p[0].content_hash, [0u8; 32]);
        }
        other => panic!("expected Payout, got {other:?}"),
    }
}

#[test]
fn content_hash_tells_repeats_from_conflicts() {
    let r = router();
    let one = |v: Value| match r.route(Kind::Withdraw, signed(v)).routed {
        Routed::Payout(p) => p[0].content_hash,
        other => panic!("expected Payout, got {other:?}"),
    };
    let a = one(withdraw());
    let mut later = withdraw();
    later["timestamp"] = 1758619999.into();
    later["amount"] = serde_json::from_str("50.250").expect("number");
    assert_eq!(
        a,
        one(later),
        "timestamp and number spelling do not change what is asked"
    );
    let mut other = withdraw();
    other["amount"] = 50.26.into();
    assert_ne!(a, one(other));
}

#[test]
fn pay_single_and_batch() {
    let r = router();
    let mut single = withdraw();
    single["queue_id"] = "pay_456".into();
    single["order_id"] = "order_789".into();
    match r.route(Kind::Pay, signed(single)).routed {
        Routed::Payout(p) => assert_eq!(
            (p.len(), p[0].order_id.as_str(), p[0].kind),
            (1, "order_789", Kind::Pay)
        ),
        other => panic!("expected Payout, got {other:?}"),
    }
    let batch = json!({"queue_id": "pay_9", "from_address": "0x1111111111111111111111111111111111111111",
    "chain": "ETH", "symbol": "USDT", "timestamp": 1,
    "transactions": [
        {"order_id": "a", "to_address": "0x2222222222222222222222222222222222222222", "amount": 1},
        {"order_id": "b", "to_address": "0x3333333333333333333333333333333333333333", "amount": 2.5},
        {"order_id": "c", "to_address": "0x4444444444444444444444444444444444444444", "amount": 0.000001}
    ]});
    match r.route(Kind::Pay, signed(batch.clone())).routed {
        Routed::Payout(p) => {
            let ids: Vec<&str> = p.iter().map(|x| x.order_id.as_str()).collect();
            assert_eq!(ids, ["a", "b", "c"]);
            assert_eq!(p[2].amount, alloy::primitives::U256::from(1u64));
        }
        other => panic!("expected Payout, got {other:?}"),
    }
    // A duplicate order_id refuses the whole batch, one answer per item.
    let mut dup = batch.clone();
    dup["transactions"][2]["order_id"] = "a".into();
    let replies = replies_json(&r.route(Kind::Pay, signed(dup)).routed);
    assert_eq!(replies.len(), 3);
    assert!(
        replies
            .iter()
            .all(|v| v["status"] == 0 && v["queue_id"] == "pay_9")
    );
    assert_eq!(replies[1]["order_id"], "b");
    assert!(
        replies[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("transactions[2]")),
        "{}",
        replies[0]
    );
    // A bad signature on a batch: status 3 for each item.
    let mut forged: Value = serde_json::from_slice(&signed(batch)).expect("json");
    forged["transactions"][0]["amount"] = 1000.into();
    let replies = replies_json(
        &r.route(Kind::Pay, serde_json::to_vec(&forged).expect("json"))
            .routed,
    );
    assert_eq!(replies.len(), 3);
    assert!(replies.iter().all(|v| v["status"] == 3));
    assert_eq!(replies[0]["amount"], 1000);
}

#[test]
fn bad_payouts_are_refused_in_plain_words() {
    let r = router();
    let cases: Vec<(&str, Value, &str)> = vec![
        ("amount", json!(0), "greater than zero"),
        ("amount", json!(-1), "greater than zero"),
        (
            "amount",
            serde_json::from_str("1.0000001").expect("n"),
            "decimal places",
        ),
        ("amount", json!("50"), "must be a JSON number"),
        (
            "amount",
            serde_json::from_str("1e300").expect("n"),
            "too large",
        ),
        (
            "to_address",
            json!("0x1111111111111111111111111111111111111111"),
            "same as `from_address`",
        ),
        (
            "to_address",
            json!("0x0000000000000000000000000000000000000000"),
            "zero address",
        ),
        ("to_address", json!("0x22"), "not a valid address"),
        ("from_address", json!(17), "must be a string"),
        ("symbol", json!("DAI"), "unknown symbol"),
        ("chain", json!("TRON"), "unknown chain"),
        ("queue_id", json!(""), "queue_id"),
    ];
    for (field, value, want) in cases {
        let mut v = withdraw();
        v[field] = value.clone();
        let replies = replies_json(&r.route(Kind::Withdraw, signed(v)).routed);
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0]["status"], 0, "{field}={value}");
        assert_eq!(replies[0]["tx_hash"], "");
        let e = replies[0]["error"].as_str().unwrap_or_default();
        assert!(
            e.contains(want),
            "{field}={value}: {e:?} should mention {want:?}"
        );
    }
    // The refusal echoes the request's own amount text.
    let mut v = withdraw();
    v["amount"] = serde_json::from_str("1.0000001").expect("n");
    let replies = replies_json(&r.route(Kind::Withdraw, signed(v)).routed);
    assert_eq!(replies[0]["amount"].to_string(), "1.0000001");
    // No queue_id: nothing to answer to.
    let mut v = withdraw();
    v.as_object_mut().expect("obj").remove("queue_id");
    assert!(matches!(
        r.route(Kind::Withdraw, signed(v)).routed,
        Routed::Unaddressable { .. }
    ));
}

#[test]
fn notify_url_is_signed_checked_and_kept_with_its_target() {
    let r = router();
    let mut v = topup();
    v["notify_url"] = "https://shop.example.com/m2pool?k=1".into();
    let req = r.route(Kind::Topup, signed(v.clone()));
    assert!(matches!(req.routed, Routed::Watch(_)), "{:?}", req.routed);
    let n = req.notify.expect("kept");
    assert_eq!(n.url, "https://shop.example.com/m2pool?k=1");
    let obj = RawObject::parse(&signed(v.clone())).expect("json");
    assert_eq!(n.target, crate::webhook::request_target(Kind::Topup, &obj));
    // The signature covers it: changed after signing, status 3.
    let mut swapped: Value = serde_json::from_slice(&signed(v)).expect("json");
    swapped["notify_url"] = "https://evil.example.net/".into();
    let req = r.route(Kind::Topup, serde_json::to_vec(&swapped).expect("json"));
    assert_eq!(reply_json(&req.routed)["status"], 3);
    // A target this gateway does not call, or not a string: status 0,
    // named, and nothing kept.
    for (url, words) in [
        (json!("http://169.254.169.254/latest"), "private"),
        (json!("gopher://example.com/"), "http or https"),
        (json!(7), "must be a string"),
    ] {
        let mut v = topup();
        v["notify_url"] = url;
        let req = r.route(Kind::Topup, signed(v));
        assert!(req.notify.is_none());
        let answer = reply_json(&req.routed);
        assert_eq!(answer["status"], 0);
        let error = answer["error"].as_str().expect("error");
        assert!(
            error.contains("notify_url") && error.contains(words),
            "{error}"
        );
    }
}
