//! The monitoring shipped in `deploy/`: every metric the Grafana dashboard
//! and the Prometheus alert rules query is one a real daemon exports (its
//! `/metrics` scraped over HTTP), with the labels they select on; promtool
//! accepts the rules and the Prometheus config; and the compose stack
//! provisions them as the files say.

mod common;

use anyhow::{Context, Result, bail, ensure};
use common::http::*;
use common::*;
use m2pool_payment::wallet::Label;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const DASHBOARD: &str = "deploy/grafana/m2pool-payment.json";
const ALERTS: &str = "deploy/prometheus/alerts.yml";
const PROMETHEUS: &str = "deploy/prometheus/prometheus.yml";
const DATASOURCE: &str = "deploy/grafana/provisioning/datasources/prometheus.yml";
const PROVIDER: &str = "deploy/grafana/provisioning/dashboards/m2pool.yml";

/// Labels Prometheus adds to every series it scrapes.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> Result<String> {
    std::fs::read_to_string(root().join(path)).with_context(|| format!("reading {path}"))
}

fn dashboard() -> Result<Value> {
    serde_json::from_str(&read(DASHBOARD)?).with_context(|| format!("{DASHBOARD} is not JSON"))
}

/// Every query of the dashboard as `(where, expr)`: each target of each
/// panel, panels inside rows included, and each query variable.
fn dashboard_exprs(d: &Value) -> Result<Vec<(String, String)>> {
    fn panels(list: &Value, out: &mut Vec<(String, String)>) -> Result<()> {
        for p in list.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("(untitled)");
            if p["type"] == "row" {
                panels(&p["panels"], out)?;
                continue;
            }
            let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            ensure!(!targets.is_empty(), "panel {title:?} has no query");
            for t in targets {
                let expr = t["expr"].as_str().unwrap_or_default();
                ensure!(
                    !expr.trim().is_empty(),
                    "panel {title:?} has a target without expr"
                );
                for ds in [&p["datasource"], &t["datasource"]] {
                    ensure!(
                        ds["uid"] == "prometheus",
                        "panel {title:?} queries data source {ds}, not the provisioned uid `prometheus`"
                    );
                }
                out.push((format!("panel {title:?}"), expr.to_owned()));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    panels(&d["panels"], &mut out)?;
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let q = v["query"]["query"]
                .as_str()
                .or_else(|| v["query"].as_str())
                .context("a query variable without query")?;
            out.push((format!("variable ${}", v["name"]), q.to_owned()));
        }
    }
    Ok(out)
}

/// Every rule of the alert file as `(alert, expr)`, by a line scan: `expr:`
/// with its value on the line or as a block scalar (`>-`, `|`) on the lines
/// indented below it.
fn alert_exprs(yaml: &str) -> Result<Vec<(String, String)>> {
    let lines: Vec<&str> = yaml.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out = Vec::new();
    let mut alert = String::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        if let Some(name) = t.strip_prefix("- alert:") {
            alert = name.trim().to_owned();
        }
        let Some(value) = t.strip_prefix("expr:") else {
            continue;
        };
        ensure!(!alert.is_empty(), "line {}: expr before any alert", i + 1);
        let value = value.trim();
        let expr = if value.is_empty() || value.starts_with(['>', '|']) {
            lines[i + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || indent(l) > indent(line))
                .map(|l| l.trim())
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            value.trim_matches(['"', '\'']).to_owned()
        };
        ensure!(!expr.trim().is_empty(), "alert {alert}: empty expr");
        out.push((alert.clone(), expr));
    }
    Ok(out)
}

/// One series selector of an expression: the metric and the label names it
/// matches on.
#[derive(Debug, PartialEq, Eq)]
struct Selector {
    metric: String,
    labels: Vec<String>,
}

/// The `m2pool_` metrics an expression reads, with the labels each selector
/// matches on; quoted strings (label values) are skipped.
fn selectors(expr: &str) -> Vec<Selector> {
    let b = expr.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\'' || c == b'`' {
            i = skip_quoted(b, i);
            continue;
        }
        if !ident(c) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && ident(b[i]) {
            i += 1;
        }
        let word = &expr[start..i];
        if !word.starts_with("m2pool_") {
            continue;
        }
        let mut labels = Vec::new();
        let mut j = i;
        while j < b.len() && b[j] == b' ' {
            j += 1;
        }
        if j < b.len() && b[j] == b'{' {
            let open = j + 1;
            let mut k = open;
            while k < b.len() && b[k] != b'}' {
                k = if b[k] == b'"' || b[k] == b'\'' {
                    skip_quoted(b, k)
                } else {
                    k + 1
                };
            }
            let mut matcher = String::new();
            let mut m = open;
            while m < k.min(b.len()) {
                if b[m] == b'"' || b[m] == b'\'' {
                    m = skip_quoted(b, m);
                    matcher.push('"');
                    continue;
                }
                matcher.push(b[m] as char);
                m += 1;
            }
            labels = matcher
                .split(',')
                .filter_map(|part| {
                    let name = part.split(['=', '!']).next()?.trim();
                    (!name.is_empty()).then(|| name.to_owned())
                })
                .collect();
            i = k + 1;
        }
        out.push(Selector {
            metric: word.to_owned(),
            labels,
        });
    }
    out
}

/// The index just past the quoted string starting at `i`.
fn skip_quoted(b: &[u8], i: usize) -> usize {
    let q = b[i];
    let mut j = i + 1;
    while j < b.len() && b[j] != q {
        j += if b[j] == b'\\' { 2 } else { 1 };
    }
    j + 1
}

/// What a scrape says: each family's type, and the label names its samples carry.
struct Scrape {
    types: BTreeMap<String, String>,
    labels: BTreeMap<String, BTreeSet<String>>,
}

impl Scrape {
    fn parse(text: &str) -> Self {
        let mut types = BTreeMap::new();
        let mut labels: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split(' ');
                if let (Some(name), Some(ty)) = (parts.next(), parts.next()) {
                    types.insert(name.to_owned(), ty.to_owned());
                }
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            let set = labels.entry(name.to_owned()).or_default();
            if let Some((_, rest)) = line.split_once('{') {
                let inside = rest.rsplit_once('}').map(|(l, _)| l).unwrap_or_default();
                let mut quoted = false;
                let mut name = String::new();
                for c in inside.chars() {
                    match c {
                        '"' => quoted = !quoted,
                        '=' if !quoted => {
                            set.insert(std::mem::take(&mut name).trim().to_owned());
                        }
                        ',' if !quoted => name.clear(),
                        _ if !quoted => name.push(c),
                        _ => {}
                    }
                }
            }
        }
        Self { types, labels }
    }

    /// Why `metric` (a name as a query writes it) is not what the scrape
    /// exports, if it is not: a family of its own (`# TYPE <name> `), or the
    /// `_bucket`, `_sum` or `_count` series of a histogram.
    fn missing(&self, metric: &str) -> Option<String> {
        if self.types.contains_key(metric) {
            return None;
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = metric.strip_suffix(suffix)
                && let Some(ty) = self.types.get(base)
            {
                return (ty != "histogram")
                    .then(|| format!("{metric}: {base} is a {ty}, not a histogram"));
            }
        }
        Some(format!("{metric}: no `# TYPE {metric} ` line"))
    }

    /// Labels `s` selects on that the samples of its metric do not carry
    /// (only checked when the scrape has samples of it).
    fn unknown_labels(&self, s: &Selector) -> Vec<String> {
        let Some(have) = self.labels.get(&s.metric) else {
            return Vec::new();
        };
        s.labels
            .iter()
            .filter(|l| !have.contains(*l) && !TARGET_LABELS.contains(&l.as_str()))
            .map(|l| format!("{}{{{l}}}: the scrape has no label {l:?}", s.metric))
            .collect()
    }
}

#[test]
fn queries_name_metrics_and_labels_as_written() -> Result<()> {
    let q =
        r#"histogram_quantile(0.99, sum by (le) (rate(m2pool_block_apply_seconds_bucket[5m])))"#;
    assert_eq!(
        selectors(q),
        vec![Selector {
            metric: "m2pool_block_apply_seconds_bucket".into(),
            labels: vec![],
        }]
    );
    let q = r#"max by (chain) (m2pool_chain_head{chain=~"$chain", job!="m2pool_x,y"}) - m2pool_chain_cursor {chain="a}b"} or up{job="m2pool_payment"}"#;
    assert_eq!(
        selectors(q),
        vec![
            Selector {
                metric: "m2pool_chain_head".into(),
                labels: vec!["chain".into(), "job".into()],
            },
            Selector {
                metric: "m2pool_chain_cursor".into(),
                labels: vec!["chain".into()],
            },
        ]
    );
    let yaml = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: m2pool_a > 0\n      - alert: B\n        expr: >-\n          m2pool_b\n          unless m2pool_c\n        labels:\n          severity: warning\n";
    assert_eq!(
        alert_exprs(yaml)?,
        vec![
            ("A".to_owned(), "m2pool_a > 0".to_owned()),
            ("B".to_owned(), "m2pool_b unless m2pool_c".to_owned()),
        ]
    );
    Ok(())
}

/// Every alert has a severity, a summary and a description.
#[test]
fn every_alert_says_how_bad_and_what_to_do() -> Result<()> {
    let yaml = read(ALERTS)?;
    let rules = alert_exprs(&yaml)?;
    ensure!(!rules.is_empty(), "{ALERTS} has no rules");
    let count = |key: &str| {
        yaml.lines()
            .filter(|l| l.trim_start().starts_with(key))
            .count()
    };
    for key in ["severity:", "summary:", "description:"] {
        ensure!(
            count(key) == rules.len(),
            "{} alerts but {} `{key}` lines in {ALERTS}",
            rules.len(),
            count(key)
        );
    }
    for line in yaml
        .lines()
        .filter(|l| l.trim_start().starts_with("severity:"))
    {
        let s = line.trim_start()["severity:".len()..].trim();
        ensure!(
            s == "critical" || s == "warning",
            "severity {s:?}: critical or warning"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_query_only_metrics_a_daemon_exports() -> Result<()> {
    let mut queries = dashboard_exprs(&dashboard()?)?;
    let alerts = alert_exprs(&read(ALERTS)?)?;
    ensure!(!alerts.is_empty(), "{ALERTS} has no rules");
    queries.extend(alerts.into_iter().map(|(a, e)| (format!("alert {a}"), e)));

    // A daemon with a hot wallet under both of its class's thresholds, its
    // node seen and its balances read: every family there, with samples.
    let port = free_port()?;
    let w = World::with("dashboards", &[], |c| {
        with_http(port, json!({}))(c);
        c["eth_config"]["wallet_alerts"] =
            json!({"user": {"min_gas": "1000", "min_balance": {"USDT": "1000000"}}});
    })
    .await?;
    let hot = w.new_wallet(Label::User).await?;
    w.fund(hot, 100_000_000, ether(1)).await?;
    let daemon = w.start().await?;
    wait_health(port, "answering", WAIT, |s, _| s != 0).await?;
    let text = scrape_until(port, |m| {
        ["gas", "balance"].iter().all(|kind| {
            m.lines().any(|l| {
                l.starts_with("m2pool_wallets_low{") && l.contains(&format!("kind=\"{kind}\""))
            })
        }) && m.contains("m2pool_wallet_balances_age_seconds{")
            && m.contains("m2pool_chain_head{")
    })
    .await?;
    daemon.stop().await?;
    w.cleanup().await?;
    let scrape = Scrape::parse(&text);

    let mut used = BTreeSet::new();
    let mut wrong = BTreeSet::new();
    for (place, expr) in &queries {
        let found = selectors(expr);
        if found.is_empty() {
            ensure!(
                expr.contains("up{"),
                "{place}: {expr:?} reads no m2pool_ metric"
            );
        }
        for s in found {
            if let Some(why) = scrape.missing(&s.metric) {
                wrong.insert(format!("{place}: {why}"));
            }
            for why in scrape.unknown_labels(&s) {
                wrong.insert(format!("{place}: {why}"));
            }
            used.insert(s.metric);
        }
    }
    if !wrong.is_empty() {
        bail!(
            "the dashboard or the alerts query what /metrics does not export:\n  {}\n\n{text}",
            wrong.into_iter().collect::<Vec<_>>().join("\n  ")
        );
    }
    // Families nothing shows yet: a hint for the next panel, not a failure.
    let unshown: Vec<&String> = scrape
        .types
        .keys()
        .filter(|f| {
            !["", "_bucket", "_sum", "_count"]
                .iter()
                .any(|s| used.contains(&format!("{f}{s}")))
        })
        .collect();
    if !unshown.is_empty() {
        eprintln!("exported but neither on the dashboard nor in an alert: {unshown:?}");
    }
    Ok(())
}

/// Scrapes `/metrics` until `ready` says the text has what the test needs.
async fn scrape_until(port: u16, ready: impl Fn(&str) -> bool) -> Result<String> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let m = metrics(port).await?;
        if ready(&m) {
            return Ok(m);
        }
        if std::time::Instant::now() > deadline {
            bail!("/metrics not complete within {WAIT:?}:\n{m}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// promtool: on PATH or Debian's /usr/bin/promtool.
fn promtool() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("promtool"))
        .find(|p| p.is_file())
}

fn run_promtool(bin: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(bin)
        .args(args)
        .current_dir(root())
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "promtool {}: {}\n{text}",
        args.join(" "),
        out.status
    );
    Ok(text)
}

/// `promtool check rules` and `check config` accept the files (skipped
/// where promtool is absent, unless `M2POOL_REQUIRE_PROMTOOL` is set, as
/// `bin/test.sh` does after installing it).
#[test]
fn promtool_accepts_the_rules_and_the_config() -> Result<()> {
    let Some(bin) = promtool() else {
        if std::env::var_os("M2POOL_REQUIRE_PROMTOOL").is_some() {
            bail!(
                "promtool is not installed and M2POOL_REQUIRE_PROMTOOL is set \
                 (Debian: apt-get install --no-install-recommends prometheus; bin/test.sh does)"
            );
        }
        eprintln!("promtool not found: skipped checking {ALERTS} and {PROMETHEUS}");
        return Ok(());
    };
    let rules = run_promtool(&bin, &["check", "rules", ALERTS])?;
    let n = alert_exprs(&read(ALERTS)?)?.len();
    ensure!(
        rules.contains(&format!("SUCCESS: {n} rules found")),
        "promtool found other rules than the {n} alerts:\n{rules}"
    );
    let config = run_promtool(&bin, &["check", "config", PROMETHEUS])?;
    ensure!(
        config.contains("SUCCESS: 1 rule files found"),
        "{PROMETHEUS} loads no rule file:\n{config}"
    );
    Ok(())
}

/// The compose stack mounts what the provisioning files name: the data
/// source uid the dashboard queries, the folder the dashboard provider
/// reads, the rule file Prometheus loads, and the daemon's port it scrapes.
#[test]
fn compose_provisions_prometheus_and_grafana_with_these_files() -> Result<()> {
    let compose = read("docker-compose.yml")?;
    let mounts: BTreeMap<&str, &str> = compose
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- ./"))
        .filter_map(|l| {
            let mut parts = l.split(':');
            Some((parts.next()?, parts.next()?))
        })
        .collect();
    let target = |f: &str| -> Result<&str> {
        mounts
            .get(f)
            .copied()
            .with_context(|| format!("docker-compose.yml does not mount {f}"))
    };
    ensure!(target(DASHBOARD)? == "/var/lib/grafana/dashboards/m2pool-payment.json");
    ensure!(target(DATASOURCE)?.starts_with("/etc/grafana/provisioning/datasources/"));
    ensure!(target(PROVIDER)?.starts_with("/etc/grafana/provisioning/dashboards/"));
    let prometheus_dir = Path::new(target(PROMETHEUS)?)
        .parent()
        .context("config dir")?
        .to_owned();
    ensure!(Path::new(target(ALERTS)?).parent() == Some(prometheus_dir.as_path()));

    let provider = read(PROVIDER)?;
    ensure!(
        provider.contains("path: /var/lib/grafana/dashboards"),
        "{PROVIDER} reads another folder"
    );
    let datasource = read(DATASOURCE)?;
    ensure!(datasource.contains("uid: prometheus"), "{DATASOURCE}: uid");
    ensure!(
        datasource.contains("url: http://prometheus:9090") && compose.contains("\n  prometheus:\n"),
        "{DATASOURCE}: the compose service prometheus"
    );
    ensure!(compose.contains("\n  grafana:\n"), "a grafana service");

    let prometheus = read(PROMETHEUS)?;
    ensure!(
        prometheus.contains("- alerts.yml"),
        "{PROMETHEUS} loads alerts.yml"
    );
    let config: Value = serde_json::from_str(&read("deploy/docker-config.json")?)?;
    let listen = config["http_config"]["listen"]
        .as_str()
        .context("docker-config.json: http_config.listen")?;
    let port = listen.rsplit(':').next().unwrap_or_default();
    ensure!(
        prometheus.contains(&format!("\"m2pool-payment:{port}\"")),
        "{PROMETHEUS} scrapes m2pool-payment:{port}, where the daemon listens"
    );
    ensure!(prometheus.contains("scrape_interval: 15s"));
    Ok(())
}
