//! Secrets that cannot be printed by accident.
//!
//! [`Secret`] wraps a value (a key, a password, a URL with credentials) so that
//! `{:?}` prints `[redacted]` and there is no `Display` at all: the only way to the
//! value is [`Secret::expose`], which makes every use easy to find in review. The
//! value is zeroized when the wrapper is dropped.
//!
//! Node URLs of hosted providers carry their API key in the path, the query or
//! the user part (`https://mainnet.infura.io/v3/KEY`, `wss://…?apikey=KEY`).
//! The daemon names an endpoint by [`redact_url`] (scheme, host and port), and
//! [`Scrubber`] takes those parts out of every log line as a backstop, since
//! transport errors quote the URL they failed on.

use std::fmt;
use zeroize::Zeroize;

/// A value that must never reach a log line or a response.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T: Zeroize>(T);

impl<T: Zeroize> Secret<T> {
    /// Wraps `value`.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// Borrows the secret value. Call sites are the audit trail: keep them few.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T: Zeroize> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<T: Zeroize> Drop for Secret<T> {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// The communication key that signs and verifies every message (`-key`).
pub type CommKey = Secret<Vec<u8>>;

/// `url` as scheme, host and port only (`https://mainnet.infura.io:443`):
/// what logs, errors and `/healthz` may show of a node endpoint. Text that is
/// no URL shows as `(unparsable URL)`.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or_default();
            match u.port_or_known_default() {
                Some(port) => format!("{}://{host}:{port}", u.scheme()),
                None => format!("{}://{host}", u.scheme()),
            }
        }
        Err(_) => "(unparsable URL)".to_owned(),
    }
}

/// Shortest part of a URL that [`Scrubber`] takes out: shorter ones (`/`,
/// `v3`, a user name like `user`) would mangle ordinary log text and are no
/// credentials.
const MIN_FRAGMENT: usize = 6;

/// Takes the credential-bearing parts of some URLs (user, password, path,
/// query and their pieces) out of text; cheap to clone.
#[derive(Clone, Default)]
pub struct Scrubber {
    /// Longest first, so a whole query goes before one of its values.
    fragments: std::sync::Arc<Vec<String>>,
}

impl fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scrubber({} fragments)", self.fragments.len())
    }
}

impl Scrubber {
    /// A scrubber for the secret parts of `urls`.
    pub fn new<'a>(urls: impl IntoIterator<Item = &'a str>) -> Self {
        let mut out: Vec<String> = Vec::new();
        let mut add = |s: &str| {
            if s.len() >= MIN_FRAGMENT && !out.iter().any(|o| o == s) {
                out.push(s.to_owned());
            }
        };
        for raw in urls {
            let Ok(u) = url::Url::parse(raw) else {
                continue;
            };
            add(u.username());
            if let Some(p) = u.password() {
                add(p);
            }
            if u.path() != "/" {
                add(u.path());
                u.path().split('/').for_each(&mut add);
            }
            if let Some(q) = u.query() {
                add(q);
                for pair in q.split('&') {
                    add(pair);
                    if let Some((_, v)) = pair.split_once('=') {
                        add(v);
                    }
                }
            }
            // As written in the config, should the parsed form differ.
            if let Some(rest) = raw.split_once("://").map(|(_, r)| r)
                && let Some(i) = rest.find(['/', '?'])
            {
                add(&rest[i..]);
            }
        }
        out.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Self {
            fragments: std::sync::Arc::new(out),
        }
    }

    /// Whether there is anything to take out.
    pub fn is_empty(&self) -> bool {
        self.fragments.is_empty()
    }

    /// `text` with every fragment replaced by `[redacted]`.
    pub fn scrub<'t>(&self, text: &'t str) -> std::borrow::Cow<'t, str> {
        if !self.fragments.iter().any(|f| text.contains(f.as_str())) {
            return std::borrow::Cow::Borrowed(text);
        }
        let mut out = text.to_owned();
        for f in self.fragments.iter() {
            if out.contains(f.as_str()) {
                out = out.replace(f.as_str(), "[redacted]");
            }
        }
        std::borrow::Cow::Owned(out)
    }
}

/// A log writer that scrubs each event it is handed before writing it
/// (the `fmt` layer hands over one whole event per write).
pub struct ScrubbingWriter<W> {
    inner: W,
    scrubber: Scrubber,
}

impl<W: std::io::Write> std::io::Write for ScrubbingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(text) if !self.scrubber.is_empty() => {
                self.inner.write_all(self.scrubber.scrub(text).as_bytes())?
            }
            _ => self.inner.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Makes [`ScrubbingWriter`]s around another `MakeWriter`.
#[derive(Clone)]
pub struct ScrubbingMakeWriter<M> {
    inner: M,
    scrubber: Scrubber,
}

impl<M> ScrubbingMakeWriter<M> {
    /// Wraps `inner`.
    pub fn new(inner: M, scrubber: Scrubber) -> Self {
        Self { inner, scrubber }
    }
}

impl<'a, M: tracing_subscriber::fmt::MakeWriter<'a>> tracing_subscriber::fmt::MakeWriter<'a>
    for ScrubbingMakeWriter<M>
{
    type Writer = ScrubbingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        ScrubbingWriter {
            inner: self.inner.make_writer(),
            scrubber: self.scrubber.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_urls_show_scheme_host_and_port_only() {
        assert_eq!(
            redact_url("https://mainnet.infura.io/v3/0123456789abcdef"),
            "https://mainnet.infura.io:443"
        );
        assert_eq!(
            redact_url("wss://user:pa55word@node.example:8546/ws?apikey=SECRET"),
            "wss://node.example:8546"
        );
        assert_eq!(redact_url("not a url"), "(unparsable URL)");
    }

    #[test]
    fn the_scrubber_takes_every_credential_out() {
        let s = Scrubber::new([
            "https://mainnet.infura.io/v3/0123456789abcdef",
            "wss://nodeuser:pa55word@node.example:8546/?apikey=SECRETKEY42&x=1",
            "http://127.0.0.1:8545",
        ]);
        let text = "error sending request for url (https://mainnet.infura.io/v3/0123456789abcdef): \
                    connection refused; wss://nodeuser:pa55word@node.example:8546/?apikey=SECRETKEY42&x=1 \
                    and the key alone 0123456789abcdef, SECRETKEY42";
        let out = s.scrub(text);
        for secret in ["0123456789abcdef", "pa55word", "SECRETKEY42", "nodeuser"] {
            assert!(!out.contains(secret), "{secret} in {out}");
        }
        assert!(out.contains("mainnet.infura.io"), "{out}");
        // Nothing to take out of a plain URL, and ordinary text is untouched.
        let plain = "listening on http://127.0.0.1:8545/ as user";
        assert!(matches!(s.scrub(plain), std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn the_writer_scrubs_what_it_writes() {
        use std::io::Write;
        let mut w = ScrubbingWriter {
            inner: Vec::new(),
            scrubber: Scrubber::new(["https://h.example/v3/topsecretkey"]),
        };
        w.write_all(b"failed: https://h.example/v3/topsecretkey\n")
            .expect("written");
        assert_eq!(
            String::from_utf8(w.inner).expect("utf8"),
            "failed: https://h.example[redacted]\n"
        );
    }

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new(String::from("hunter2"));
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(s.expose(), "hunter2");
    }
}
