//! The command line: Go-style flags, `sign`, `check-config`.

use std::io::Write;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_m2pool-payment");

fn fixture(name: &str) -> String {
    format!(
        "{}/tests/fixtures/compat/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn check_config_accepts_both_go_layouts() {
    for f in ["config.go-v1.json", "config.go-v2.json"] {
        let out = Command::new(BIN)
            .args(["check-config", "--config", &fixture(f)])
            .output()
            .expect("runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("config OK"), "{stdout}");
        // The broker password is not printed.
        assert!(
            !stdout.contains("password@") && !stdout.contains("m2pool:m2pool"),
            "{stdout}"
        );
    }
    // Go-style single-dash flag and the CONFIG_PATH variable.
    let out = Command::new(BIN)
        .args(["-config", &fixture("config.go-v2.json"), "check-config"])
        .output()
        .expect("runs");
    assert!(out.status.success());
    let out = Command::new(BIN)
        .arg("check-config")
        .env("CONFIG_PATH", fixture("config.go-v1.json"))
        .output()
        .expect("runs");
    assert!(out.status.success());
}

#[test]
fn the_example_and_deployment_configs_are_valid() {
    for f in [
        "config/config.example.json",
        "deploy/docker-config.json",
        "deploy/docker-config.ha.json",
        "deploy/docker-config.ha-b.json",
    ] {
        let path = format!("{}/{f}", env!("CARGO_MANIFEST_DIR"));
        let out = Command::new(BIN)
            .args(["check-config", "--config", &path])
            .output()
            .expect("runs");
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn check_config_names_the_bad_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.json");
    let text = std::fs::read_to_string(fixture("config.go-v2.json"))
        .expect("fixture")
        .replace("\"confirm_height\": 20", "\"confirm_height\": \"many\"");
    std::fs::write(&path, text).expect("write");
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("eth_config.confirm_height"), "{stderr}");
}

fn sign(args: &[&str], env_key: Option<&str>, body: &str) -> (bool, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.env_remove("M2POOL_PAYMENT_KEY");
    if let Some(k) = env_key {
        cmd.env("M2POOL_PAYMENT_KEY", k);
    }
    let mut child = cmd.spawn().expect("runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("waits");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    )
}

#[test]
fn sign_prints_the_design_vectors() {
    let topup = r#"{"chain":"ETH","symbol":"USDT","address":"0x4e5b2e1dc63f6b91cb6cd759936495434c7e972f","timestamp":1758610297,"sign":"x"}"#;
    let want = "dc23568e23e62f8a5e989693d165b4b0efc348e0982c2c1f4e547794eef90f8a";
    assert_eq!(
        sign(&["-key=test-secret", "sign"], None, topup),
        (true, want.to_owned())
    );
    assert_eq!(
        sign(&["-key", "test-secret", "sign", "-"], None, topup),
        (true, want.to_owned())
    );
    assert_eq!(
        sign(&["sign"], Some("test-secret"), topup),
        (true, want.to_owned())
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("key");
    std::fs::write(&key, "test-secret\n").expect("write");
    let withdraw = r#"{"queue_id":"withdraw_123","from_address":"0x1111111111111111111111111111111111111111","to_address":"0x2222222222222222222222222222222222222222","amount":50.25,"chain":"ETH","symbol":"USDT","timestamp":1758610297}"#;
    let (ok, out) = sign(
        &["--key-file", key.to_str().expect("utf8"), "sign"],
        Some("other"),
        withdraw,
    );
    assert!(ok);
    assert_eq!(
        out,
        "3395a064fd0f7626285e0f630f674a6e37180a4353e5c30777452affb51ef346"
    );

    // No key at all is an error, not a signature with an empty key.
    assert!(!sign(&["sign"], None, topup).0);
}

/// A config whose wallet store is an SQLite file in `dir`.
fn sqlite_wallet_config(dir: &std::path::Path) -> std::path::PathBuf {
    let mut v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("config.go-v2.json")).expect("fixture"),
    )
    .expect("json");
    v.as_object_mut().expect("object").remove("mysql_config");
    v["eth_config"]["sqlite_path"] = dir.join("wallet.db").to_string_lossy().into_owned().into();
    let path = dir.join("config.json");
    std::fs::write(&path, serde_json::to_vec(&v).expect("json")).expect("write");
    path
}

fn wallet(config: &std::path::Path, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .arg("wallet")
        .args(args)
        .env("M2POOL_WALLET_KEY", "cli-test-wallet-key")
        .env_remove("M2POOL_PAYMENT_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("waits");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn wallet_commands_create_import_and_list_without_key_material() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = sqlite_wallet_config(dir.path());
    let (ok, out, err) = wallet(&config, &["new", "--count", "2"], "");
    assert!(ok, "{err}");
    let created: Vec<&str> = out.lines().collect();
    assert_eq!(created.len(), 2);
    assert!(
        created.iter().all(|a| a.starts_with("0x") && a.len() == 42),
        "{out}"
    );

    // anvil's well-known account 2.
    let key = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a";
    let (ok, out, err) = wallet(&config, &["import", "--collection"], &format!("{key}\n"));
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc");
    let (ok, _, err) = wallet(&config, &["import"], "not a key");
    assert!(!ok && err.contains("not a private key"), "{err}");

    let (ok, out, err) = wallet(&config, &["list"], "");
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(
        out.contains(created[0]) && out.contains("collection"),
        "{out}"
    );
    assert!(
        !out.contains(&key[2..]) && !out.contains("v1:"),
        "no key material: {out}"
    );
    assert!(out.lines().all(|l| l.starts_with("ETH ")), "{out}");

    // The same wallet, enabled on a second network.
    let enable = |address: &str| {
        wallet(
            &config,
            &["enable", "--address", address, "--chain", "bsc"],
            "",
        )
    };
    let (ok, out, err) = enable(created[0]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("{} enabled on BSC", created[0]));
    let (ok, _, err) = enable(created[0]);
    assert!(!ok && err.contains("already in the store"), "{err}");
    let (ok, _, err) = enable("0x1111111111111111111111111111111111111111");
    assert!(
        !ok && err.contains("not in the store on any network"),
        "{err}"
    );
    let (ok, _, err) = enable("0x12");
    assert!(!ok && err.contains("--address"), "{err}");
    let (ok, out, err) = wallet(&config, &["list", "--chain", "BSC"], "");
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.starts_with("BSC ") && out.contains(created[0]), "{out}");
}

#[test]
fn start_sh_runs_the_daemon_with_the_key_out_of_the_process_list() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A config whose broker and node cannot be reached: the daemon keeps
    // retrying, which is all this test needs.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let mut v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("config.go-v2.json")).expect("fixture"),
    )
    .expect("json");
    v.as_object_mut().expect("object").remove("mysql_config");
    v["rmq_config"]["sub_addr"] = format!("amqp://guest:guest@127.0.0.1:{dead}").into();
    v["eth_config"]["rpc_url"] = format!("http://127.0.0.1:{dead}").into();
    v["eth_config"]
        .as_object_mut()
        .expect("object")
        .remove("ws_url");
    v["msg_config"]["sqlite_path"] = dir
        .path()
        .join("msg.db")
        .to_string_lossy()
        .into_owned()
        .into();
    v["eth_config"]["sqlite_path"] = dir
        .path()
        .join("wallet.db")
        .to_string_lossy()
        .into_owned()
        .into();
    let config = dir.path().join("config.json");
    std::fs::write(&config, serde_json::to_vec(&v).expect("json")).expect("write");
    let script = format!("{}/bin/start.sh", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(&script)
        .arg("start-sh-secret-key")
        .arg(&config)
        .current_dir(dir.path())
        .env("M2POOL_BIN", BIN)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = std::fs::read_to_string(dir.path().join("m2pool-payment.pid")).expect("pid file");
    let pid = pid.trim().to_owned();
    // Until the background child has exec'd the daemon it is a copy of the
    // script's shell (whose argv holds the key, as the Go interface has it),
    // then `nohup`: wait, bounded, for the daemon's own argv.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let cmdline = loop {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        if argv0 == BIN.as_bytes() || std::time::Instant::now() > deadline {
            break cmdline;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let _ = Command::new("kill").arg(&pid).status();
    let argv = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        argv.starts_with(BIN),
        "the daemon did not start within 10 s (argv: {argv})"
    );
    assert!(
        !argv.contains("start-sh-secret-key"),
        "the key is not in argv: {argv}"
    );
}
