//! The console's HTML: escaping, the page frame, tables, times and amounts.
//! Pages are built as strings; every value that comes from a request, the
//! store or a node goes through [`esc`].

use super::i18n::Lang;
use crate::clock::iso_utc;
use std::fmt::Write as _;

/// `text` with the five HTML-significant characters escaped.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `value` percent-encoded for a query string.
pub fn query_value(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// A time (unix milliseconds) in UTC; the script shows the reader's local
/// time on hover (`title`).
pub fn time(ms: i64) -> String {
    let iso = iso_utc(ms);
    let shown = iso.replace('T', " ").replace('Z', " UTC");
    format!("<time datetime=\"{iso}\">{shown}</time>")
}

/// An optional time, `—` when absent.
pub fn time_opt(ms: Option<i64>) -> String {
    ms.map_or_else(|| "—".to_owned(), time)
}

/// A pill with `class` (`ok`, `warn`, `bad`, `info`).
pub fn pill(class: &str, text: &str) -> String {
    format!("<span class=\"pill {class}\">{}</span>", esc(text))
}

/// A hash or address in monospace, shortened on small screens by CSS.
pub fn code(text: &str) -> String {
    format!("<code>{}</code>", esc(text))
}

/// A table: headings and rows of cells already rendered.
pub fn table(id: &str, heads: &[&str], rows: &[Vec<String>], empty: &str) -> String {
    let mut out = format!("<div class=\"scroll\"><table id=\"{id}\"><thead><tr>");
    for h in heads {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    if rows.is_empty() {
        let _ = write!(
            out,
            "<tr><td colspan=\"{}\" class=\"muted\">{}</td></tr>",
            heads.len(),
            esc(empty)
        );
    }
    for r in rows {
        out.push_str("<tr>");
        for c in r {
            let _ = write!(out, "<td>{c}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>");
    out
}

/// A definition list of label and rendered value.
pub fn facts(rows: &[(&str, String)]) -> String {
    let mut out = String::from("<dl class=\"facts\">");
    for (k, v) in rows {
        let _ = write!(out, "<dt>{}</dt><dd>{v}</dd>", esc(k));
    }
    out.push_str("</dl>");
    out
}

/// The pages of the navigation: path and label key.
const NAV: [(&str, &str); 5] = [
    ("overview", "nav.overview"),
    ("payouts", "nav.payouts"),
    ("deposits", "nav.deposits"),
    ("wallets", "nav.wallets"),
    ("requests", "nav.requests"),
];

/// A whole page: head, navigation with `current` marked, the language
/// switch, the logout button and `body`.
pub fn page(lang: Lang, current: &str, title: &str, body: &str) -> String {
    let mut nav = String::new();
    for (path, key) in NAV {
        let mark = if path == current {
            " aria-current=\"page\""
        } else {
            ""
        };
        let _ = write!(
            nav,
            "<a href=\"/console/{path}\"{mark}>{}</a>",
            esc(lang.t(key))
        );
    }
    let other = lang.other();
    format!(
        "<!doctype html><html lang=\"{code}\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title} · m2pool-payment</title>\
<link rel=\"stylesheet\" href=\"/console/assets/console.css\">\
<script src=\"/console/assets/console.js\" defer></script></head><body>\
<header><span class=\"brand\">m2pool-payment</span><nav>{nav}</nav>\
<span class=\"tools\"><a href=\"?lang={ocode}\" id=\"lang\">{oname}</a>\
<form method=\"post\" action=\"/console/logout\"><button type=\"submit\" id=\"logout\">{logout}</button></form></span>\
</header><main><h1>{title}</h1>{body}</main></body></html>",
        code = lang.code(),
        title = esc(title),
        ocode = other.code(),
        oname = esc(other.name()),
        logout = esc(lang.t("logout")),
    )
}

/// A `<select>` of field `name`, shown as `label`, with `options` (each
/// its own value and text), `current` chosen and an "any" first.
pub fn select<S: AsRef<str>>(
    name: &str,
    label: &str,
    any: &str,
    options: &[S],
    current: Option<&str>,
) -> String {
    let mut out = format!(
        "<label>{} <select name=\"{name}\"><option value=\"\">{}</option>",
        esc(label),
        esc(any)
    );
    for option in options {
        let value = option.as_ref();
        let chosen = if Some(value) == current {
            " selected"
        } else {
            ""
        };
        let v = esc(value);
        let _ = write!(out, "<option value=\"{v}\"{chosen}>{v}</option>");
    }
    out.push_str("</select></label>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_and_times_are_utc() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(
            time(0),
            "<time datetime=\"1970-01-01T00:00:00Z\">1970-01-01 00:00:00 UTC</time>"
        );
        assert_eq!(query_value("a b&c"), "a+b%26c");
        let t = table("t", &["<h>"], &[vec!["<b>x</b>".into()]], "none");
        assert!(t.contains("<th>&lt;h&gt;</th>") && t.contains("<td><b>x</b></td>"));
        assert!(table("t", &["a", "b"], &[], "none <here>").contains("colspan=\"2\""));
    }
}
