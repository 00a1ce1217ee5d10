//! `rmb-relay --health-check URL`: one `GET` of a relay's `/health`, for container
//! health checks and service managers.
//!
//! The container images are `FROM scratch` (no shell, no curl), so the relay binary
//! itself is the probe: `HEALTHCHECK CMD ["rmb-relay", "--health-check",
//! "http://127.0.0.1:8080/health"]`. It trusts what the relay's own TLS clients trust
//! (built-in web roots, the system store or `SSL_CERT_FILE`, `--relay-ca`) and honours
//! `--resolve NAME=ADDRESS`, so a relay serving TLS for `relay.example.com` is checked
//! as `https://relay.example.com:8443/health` with `--resolve
//! relay.example.com=127.0.0.1:8443`, its certificate verified as peers verify it.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use rmb_identity::registry::resolve::ResolveRule;

/// How long one check may take, connection and answer together.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Gets `url` and returns its body when the answer is `200 OK`; otherwise why not.
pub async fn check(
    url: &str,
    resolve: &[ResolveRule],
    timeout: Duration,
) -> Result<String, String> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("{url}: expected an http:// or https:// URL"));
    }
    let mut builder = reqwest::Client::builder()
        .use_preconfigured_tls(rmb_identity::trust::client_config().as_ref().clone())
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none());
    for rule in resolve {
        let host = host_of(&rule.name);
        let addr = address(&rule.address)?;
        builder = builder.resolve(host, addr);
    }
    let client = builder
        .build()
        .map_err(|e| format!("building the HTTP client: {e}"))?;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("{url}: {}", error_chain(&e)))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|e| format!("{url}: reading the answer: {e}"))?;
    if status != reqwest::StatusCode::OK {
        return Err(format!("{url}: {status}: {}", body.trim()));
    }
    Ok(body.trim().to_string())
}

/// `relay.example.com:8443` → `relay.example.com` (a relay name may carry a port;
/// reqwest overrides by host name, and takes the port from the URL).
fn host_of(name: &str) -> &str {
    match name.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() && !host.contains(':') => host,
        _ => name,
    }
}

/// The first address `text` (`IP:PORT` or `host:port`) stands for.
fn address(text: &str) -> Result<SocketAddr, String> {
    text.to_socket_addrs()
        .map_err(|e| format!("--resolve address {text}: {e}"))?
        .next()
        .ok_or_else(|| format!("--resolve address {text}: no address"))
}

/// An error with its causes, as `a: b: c` (reqwest's own text says only "error sending
/// request").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_strips_only_a_port() {
        assert_eq!(host_of("relay.example.com:8443"), "relay.example.com");
        assert_eq!(host_of("relay.example.com"), "relay.example.com");
        assert_eq!(host_of("::1"), "::1");
    }

    #[tokio::test]
    async fn refuses_other_schemes_and_reports_a_closed_port() {
        let err = check("ftp://x/health", &[], DEFAULT_TIMEOUT)
            .await
            .unwrap_err();
        assert!(err.contains("expected an http"), "{err}");
        // A port nothing listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/health");
        let err = check(&url, &[], DEFAULT_TIMEOUT).await.unwrap_err();
        assert!(err.contains("onnection refused"), "{err}");
    }
}
