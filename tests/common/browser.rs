//! A real browser from a test: Debian's headless Chromium driven through
//! chromedriver over the W3C WebDriver protocol (plain JSON over HTTP, so
//! no client library). Each [`Browser`] owns its chromedriver on a free
//! port and its session; both end when it is dropped or [`Browser::quit`].

use super::ChildGuard;
use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The WebDriver name of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where Debian installs them.
fn found(name: &str) -> Option<std::path::PathBuf> {
    ["/usr/bin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

/// A headless Chromium session.
pub struct Browser {
    _driver: ChildGuard,
    base: String,
    http: reqwest::Client,
}

impl Browser {
    /// Starts chromedriver and a session; `None` when Chromium or
    /// chromedriver is missing and `M2POOL_REQUIRE_BROWSER` is not set
    /// (bin/test.sh installs both and sets it).
    pub async fn start() -> Result<Option<Self>> {
        let (Some(chromium), Some(driver)) = (found("chromium"), found("chromedriver")) else {
            if std::env::var_os("M2POOL_REQUIRE_BROWSER").is_some() {
                bail!(
                    "chromium and chromedriver are required (apt-get install chromium chromium-driver)"
                );
            }
            eprintln!("skipped: no chromium/chromedriver on this machine");
            return Ok(None);
        };
        let port = super::http::free_port()?;
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start chromedriver")?;
        let driver = ChildGuard(child);
        let http = reqwest::Client::new();
        let root = format!("http://127.0.0.1:{port}");
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = http.get(format!("{root}/status")).send().await;
            if let Ok(r) = ready
                && let Ok(v) = r.json::<Value>().await
                && v["value"]["ready"] == true
            {
                break;
            }
            ensure!(Instant::now() < until, "chromedriver not ready in 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1000", "--lang=en-US"]
            }
        }}});
        let v: Value = http
            .post(format!("{root}/session"))
            .json(&caps)
            .send()
            .await?
            .json()
            .await?;
        let id = v["value"]["sessionId"]
            .as_str()
            .with_context(|| format!("no session: {v}"))?;
        Ok(Some(Self {
            _driver: driver,
            base: format!("{root}/session/{id}"),
            http,
        }))
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().await?.json().await?;
        if let Some(e) = v["value"]["error"].as_str() {
            bail!("webdriver {path}: {e}: {}", v["value"]["message"]);
        }
        Ok(v["value"].clone())
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) -> Result<()> {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await
            .map(|_| ())
    }

    /// The address shown.
    pub async fn url(&self) -> Result<String> {
        Ok(self
            .call(reqwest::Method::GET, "/url", None)
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// The page's HTML as the browser has it.
    pub async fn source(&self) -> Result<String> {
        Ok(self
            .call(reqwest::Method::GET, "/source", None)
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// The element matching `css`.
    async fn find(&self, css: &str) -> Result<String> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await
            .with_context(|| format!("find {css}"))?;
        Ok(v[ELEMENT]
            .as_str()
            .with_context(|| format!("element id of {css}: {v}"))?
            .to_owned())
    }

    /// The visible text of the element matching `css`, waiting (a bounded
    /// while) for it to be there: a click may still be loading the page.
    pub async fn text(&self, css: &str) -> Result<String> {
        let until = Instant::now() + super::WAIT;
        loop {
            let read = async {
                let id = self.find(css).await?;
                self.call(reqwest::Method::GET, &format!("/element/{id}/text"), None)
                    .await
            };
            match read.await {
                Ok(v) => return Ok(v.as_str().unwrap_or_default().to_owned()),
                Err(e) if Instant::now() > until => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Waits (a bounded while) until the address shown satisfies `want`.
    pub async fn wait_url(&self, what: &str, want: impl Fn(&str) -> bool) -> Result<String> {
        let until = Instant::now() + super::WAIT;
        loop {
            let url = self.url().await?;
            if want(&url) {
                return Ok(url);
            }
            ensure!(Instant::now() < until, "{what}: still at {url}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Types `text` into the element matching `css`.
    pub async fn type_into(&self, css: &str, text: &str) -> Result<()> {
        let id = self.find(css).await?;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/clear"),
            Some(json!({})),
        )
        .await?;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        )
        .await
        .map(|_| ())
    }

    /// Clicks the element matching `css`.
    pub async fn click(&self, css: &str) -> Result<()> {
        let id = self.find(css).await?;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await
        .map(|_| ())
    }

    /// The `title` attribute of the element matching `css`.
    pub async fn attribute(&self, css: &str, name: &str) -> Result<Option<String>> {
        let id = self.find(css).await?;
        let v = self
            .call(
                reqwest::Method::GET,
                &format!("/element/{id}/attribute/{name}"),
                None,
            )
            .await?;
        Ok(v.as_str().map(str::to_owned))
    }

    /// The browser's cookies for the page shown.
    pub async fn cookies(&self) -> Result<Vec<Value>> {
        Ok(self
            .call(reqwest::Method::GET, "/cookie", None)
            .await?
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Resizes the window (a phone: 390 × 844).
    pub async fn resize(&self, width: u32, height: u32) -> Result<()> {
        self.call(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await
        .map(|_| ())
    }

    /// Writes a PNG of the page shown to `path`.
    pub async fn screenshot(&self, path: &Path) -> Result<()> {
        let v = self.call(reqwest::Method::GET, "/screenshot", None).await?;
        let png = base64(v.as_str().context("screenshot data")?)?;
        ensure!(png.starts_with(b"\x89PNG"), "not a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png)?;
        Ok(())
    }

    /// Ends the session (chromedriver stops when dropped).
    pub async fn quit(self) -> Result<()> {
        self.http.delete(&self.base).send().await?;
        Ok(())
    }
}

/// Standard base64, as WebDriver sends screenshots.
fn base64(text: &str) -> Result<Vec<u8>> {
    let value = |c: u8| -> Result<u32> {
        Ok(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => bail!("not base64: {c}"),
        } as u32)
    };
    let clean: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= value(*c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Ok(out)
}
