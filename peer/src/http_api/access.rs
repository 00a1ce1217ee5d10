//! Who may use the local HTTP API: the checks every request passes before a handler.
//!
//! The API acts as this twin (it signs calls and publishes), and a web browser on the
//! same machine can reach a loopback port. A page the user merely visits can therefore
//! try to use it. What it can try, and what stops it:
//!
//! | what a page tries | what refuses it |
//! |---|---|
//! | DNS rebinding: its own name resolving to 127.0.0.1, so it may read the answers | the `Host` check: only IP literals, `localhost` and names given with `--http-host` |
//! | a cross-origin `fetch`/XHR/WebSocket, or a form posted at the API | the `Origin` check: only origins given with `--http-allow-origin` (and the API's own) |
//! | a GET it cannot read but that has an effect (an `<img>` opening a live stream, which subscribes) | `Sec-Fetch-Site: cross-site`/`same-site` without an allowed origin |
//! | a "simple" POST (text/plain, a form, no type) that a browser sends without asking | POSTs need a `Content-Type` other than the three form types, or the token |
//!
//! With `--http-token-file` every request must also carry `Authorization: Bearer
//! <token>` (or `?access_token=` for `EventSource` and WebSocket clients, which cannot set
//! headers). Connections on the Unix socket (`--http-socket`) pass without checks: no
//! browser can open one, and the socket's file mode decides who can.
//!
//! [`Access::check`] is a pure function of the request's head, so every rule is tested
//! without a server.

use std::net::IpAddr;

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};

/// Where a request came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The TCP listener (`--http`): every check applies.
    Tcp,
    /// The Unix socket (`--http-socket`): the file mode is the check.
    Unix,
}

/// The access rules, from the flags.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Host names accepted besides IP literals and `localhost` (lowercase, no port).
    hosts: Vec<String>,
    /// Origins allowed to make cross-origin requests (`scheme://host[:port]`, lowercase).
    origins: Vec<String>,
    /// The bearer token every TCP request must carry, when set.
    token: Option<String>,
}

/// Why a request was refused; the label counts it ([`Refusal::label`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `Host` is a name this API does not answer to (DNS rebinding), or missing.
    Host(String),
    /// `Origin` is another site's, not allowed by a flag.
    Origin(String),
    /// The browser says a cross-site page sent it (`Sec-Fetch-Site`).
    CrossSite(String),
    /// A POST a browser could send without a preflight.
    SimplePost,
    /// The token is missing or wrong.
    Token,
}

impl Refusal {
    /// The counter this refusal goes to.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Host(_) => "host",
            Refusal::Origin(_) => "origin",
            Refusal::CrossSite(_) => "cross_site",
            Refusal::SimplePost => "content_type",
            Refusal::Token => "token",
        }
    }

    /// The HTTP status it is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Host(_) => StatusCode::MISDIRECTED_REQUEST,
            Refusal::Origin(_) | Refusal::CrossSite(_) => StatusCode::FORBIDDEN,
            Refusal::SimplePost => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Refusal::Token => StatusCode::UNAUTHORIZED,
        }
    }

    /// What is wrong and how to fix it, for the person reading the answer.
    pub fn message(&self) -> String {
        match self {
            Refusal::Host(host) => format!(
                "this API does not answer to Host {host:?} (a page on another name could be \
                 rebinding it to this machine); use 127.0.0.1 or localhost, or allow the name \
                 with rmb-peer --http-host"
            ),
            Refusal::Origin(origin) => format!(
                "cross-origin requests from {origin:?} are refused; allow the origin with \
                 rmb-peer --http-allow-origin"
            ),
            Refusal::CrossSite(site) => format!(
                "the browser says another site sent this request (Sec-Fetch-Site: {site}); \
                 allow its origin with rmb-peer --http-allow-origin"
            ),
            Refusal::SimplePost => "a POST needs Content-Type: application/json (or another \
                 type than text/plain and the form types), or the API token: any web page can \
                 send those without asking"
                .to_string(),
            Refusal::Token => "this API needs its token: Authorization: Bearer <the contents \
                 of rmb-peer's --http-token-file>"
                .to_string(),
        }
    }
}

/// Content types a browser sends cross-origin without a preflight (the CORS-safelisted
/// ones).
const SIMPLE_TYPES: &[&str] = &[
    "application/x-www-form-urlencoded",
    "multipart/form-data",
    "text/plain",
];

/// Request headers an allowed origin may send (the answer to a preflight).
pub const ALLOWED_HEADERS: &str =
    "authorization, content-type, title, priority, tags, x-title, x-priority, x-tags";

impl Access {
    /// Rules accepting `hosts` (besides IP literals and `localhost`), cross-origin
    /// requests from `origins`, and, when `token` is set, only requests carrying it.
    pub fn new(hosts: Vec<String>, origins: Vec<String>, token: Option<String>) -> Self {
        Access {
            hosts: hosts
                .into_iter()
                .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
                .collect(),
            origins: origins
                .into_iter()
                .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            token: token.filter(|t| !t.is_empty()),
        }
    }

    /// True when a token is required.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Checks a request's head; `Ok` with the origin to answer CORS for, if any.
    pub fn check(
        &self,
        transport: Transport,
        method: &Method,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<Option<HeaderValue>, Refusal> {
        if transport == Transport::Unix {
            return Ok(None);
        }
        let host = text(headers.get(header::HOST)).unwrap_or_default();
        if !self.host_allowed(host) {
            return Err(Refusal::Host(host.to_string()));
        }
        let origin = headers.get(header::ORIGIN);
        let allowed_origin = match origin {
            None => None,
            Some(value) => {
                let origin = text(Some(value)).unwrap_or("?");
                if self.origin_allowed(origin) {
                    Some(value.clone())
                } else if same_origin(origin, host) {
                    None
                } else {
                    return Err(Refusal::Origin(origin.to_string()));
                }
            }
        };
        if allowed_origin.is_none()
            && let Some(site) = text(headers.get("sec-fetch-site"))
            && matches!(site, "cross-site" | "same-site")
            && !origin.is_some_and(|o| same_origin(text(Some(o)).unwrap_or("?"), host))
        {
            return Err(Refusal::CrossSite(site.to_string()));
        }
        let token_given = self.token_ok(query, headers)?;
        if method == Method::POST && !token_given && is_simple_body(headers) {
            return Err(Refusal::SimplePost);
        }
        Ok(allowed_origin)
    }

    /// An `OPTIONS` preflight: `Some(origin)` when the origin may go on.
    pub fn preflight(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        let host = text(headers.get(header::HOST)).unwrap_or_default();
        (self.host_allowed(host) && self.origin_allowed(text(Some(origin))?))
            .then(|| origin.clone())
    }

    fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host).to_ascii_lowercase();
        let name = name.trim_end_matches('.');
        if name.is_empty() {
            return false;
        }
        name.parse::<IpAddr>().is_ok()
            || name == "localhost"
            || self.hosts.iter().any(|h| h == name)
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        origin != "null" && self.origins.contains(&origin)
    }

    /// `Ok(true)` when the right token came, `Ok(false)` when none is needed and none
    /// came, `Err` when one is needed and missing or wrong.
    fn token_ok(&self, query: Option<&str>, headers: &HeaderMap) -> Result<bool, Refusal> {
        let Some(expected) = &self.token else {
            return Ok(false);
        };
        let from_header = text(headers.get(header::AUTHORIZATION))
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.trim().to_string());
        let given = from_header.or_else(|| {
            url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
                .find(|(k, _)| k == "access_token")
                .map(|(_, v)| v.into_owned())
        });
        match given {
            Some(given) if constant_time_eq(given.as_bytes(), expected.as_bytes()) => Ok(true),
            _ => Err(Refusal::Token),
        }
    }
}

fn text(value: Option<&HeaderValue>) -> Option<&str> {
    value.and_then(|v| v.to_str().ok()).map(str::trim)
}

/// The name part of a `Host` value (`[::1]:80` → `::1`, `a.example:8051` → `a.example`).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// True when `origin` is `http://<host>`: a page served by this API itself (it serves
/// none, but a browser sends `Origin` on same-origin POSTs too).
fn same_origin(origin: &str, host: &str) -> bool {
    origin
        .strip_prefix("http://")
        .is_some_and(|rest| rest.eq_ignore_ascii_case(host))
}

/// True when a browser could have sent this body cross-origin without a preflight.
fn is_simple_body(headers: &HeaderMap) -> bool {
    let Some(kind) = text(headers.get(header::CONTENT_TYPE)) else {
        return true;
    };
    let essence = kind.split(';').next().unwrap_or_default().trim();
    SIMPLE_TYPES.iter().any(|t| essence.eq_ignore_ascii_case(t))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn check(
        access: &Access,
        method: Method,
        pairs: &[(&'static str, &str)],
    ) -> Result<(), &'static str> {
        access
            .check(Transport::Tcp, &method, None, &head(pairs))
            .map(|_| ())
            .map_err(|r| r.label())
    }

    #[test]
    fn hosts_are_ip_literals_localhost_or_named_by_the_operator() {
        let a = Access::new(vec!["Peer.Lan".into()], vec![], None);
        for ok in [
            "127.0.0.1:8051",
            "localhost:8051",
            "[::1]:8051",
            "10.1.2.3",
            "peer.lan:80",
            "localhost.",
        ] {
            assert_eq!(check(&a, Method::GET, &[("host", ok)]), Ok(()), "{ok}");
        }
        for bad in [
            "attacker.example",
            "attacker.example:8051",
            "localhost.attacker.example",
            "",
        ] {
            assert_eq!(
                check(&a, Method::GET, &[("host", bad)]),
                Err("host"),
                "{bad}"
            );
        }
        assert_eq!(check(&a, Method::GET, &[]), Err("host"), "no Host");
    }

    #[test]
    fn other_origins_and_cross_site_fetches_are_refused_unless_allowed() {
        let a = Access::new(vec![], vec!["https://app.example/".into()], None);
        let host = ("host", "127.0.0.1:8051");
        assert_eq!(
            check(&a, Method::GET, &[host, ("origin", "http://evil.example")]),
            Err("origin")
        );
        assert_eq!(
            check(&a, Method::GET, &[host, ("origin", "null")]),
            Err("origin")
        );
        assert_eq!(
            check(&a, Method::GET, &[host, ("sec-fetch-site", "cross-site")]),
            Err("cross_site")
        );
        assert_eq!(
            check(&a, Method::GET, &[host, ("sec-fetch-site", "same-site")]),
            Err("cross_site")
        );
        assert_eq!(
            check(&a, Method::GET, &[host, ("sec-fetch-site", "none")]),
            Ok(())
        );
        assert_eq!(
            check(
                &a,
                Method::GET,
                &[
                    host,
                    ("origin", "https://app.example"),
                    ("sec-fetch-site", "cross-site")
                ]
            ),
            Ok(())
        );
        assert_eq!(
            check(
                &a,
                Method::POST,
                &[
                    host,
                    ("origin", "http://127.0.0.1:8051"),
                    ("content-type", "application/json")
                ]
            ),
            Ok(()),
            "the API's own origin"
        );
        let allowed = a
            .check(
                Transport::Tcp,
                &Method::GET,
                None,
                &head(&[host, ("origin", "https://app.example")]),
            )
            .unwrap();
        assert_eq!(allowed.unwrap(), "https://app.example");
    }

    #[test]
    fn posts_need_a_type_a_browser_must_ask_for_or_the_token() {
        let a = Access::new(vec![], vec![], None);
        let host = ("host", "localhost:8051");
        for simple in [
            "text/plain",
            "text/plain; charset=utf-8",
            "application/x-www-form-urlencoded",
            "Multipart/Form-Data; boundary=x",
        ] {
            assert_eq!(
                check(&a, Method::POST, &[host, ("content-type", simple)]),
                Err("content_type"),
                "{simple}"
            );
        }
        assert_eq!(
            check(&a, Method::POST, &[host]),
            Err("content_type"),
            "no type"
        );
        assert_eq!(
            check(
                &a,
                Method::POST,
                &[host, ("content-type", "application/json")]
            ),
            Ok(())
        );
        assert_eq!(
            check(
                &a,
                Method::POST,
                &[host, ("content-type", "application/octet-stream")]
            ),
            Ok(())
        );
        assert_eq!(check(&a, Method::DELETE, &[host]), Ok(()), "never simple");
        let t = Access::new(vec![], vec![], Some("s3cret".into()));
        assert_eq!(
            check(
                &t,
                Method::POST,
                &[host, ("authorization", "Bearer s3cret")]
            ),
            Ok(())
        );
    }

    #[test]
    fn a_token_is_required_on_tcp_when_set_but_not_on_the_unix_socket() {
        let a = Access::new(vec![], vec![], Some("s3cret".into()));
        let host = ("host", "127.0.0.1:1");
        assert_eq!(check(&a, Method::GET, &[host]), Err("token"));
        assert_eq!(
            check(&a, Method::GET, &[host, ("authorization", "Bearer nope")]),
            Err("token")
        );
        assert_eq!(
            check(&a, Method::GET, &[host, ("authorization", "Bearer s3cret")]),
            Ok(())
        );
        assert!(
            a.check(
                Transport::Tcp,
                &Method::GET,
                Some("since=all&access_token=s3cret"),
                &head(&[host])
            )
            .is_ok()
        );
        assert!(
            a.check(Transport::Unix, &Method::POST, None, &HeaderMap::new())
                .is_ok()
        );
    }

    #[test]
    fn preflights_pass_only_for_allowed_origins() {
        let a = Access::new(vec![], vec!["https://app.example".into()], None);
        let ok = head(&[("host", "127.0.0.1:1"), ("origin", "https://app.example")]);
        assert!(a.preflight(&ok).is_some());
        let bad = head(&[("host", "127.0.0.1:1"), ("origin", "https://evil.example")]);
        assert!(a.preflight(&bad).is_none());
    }
}
