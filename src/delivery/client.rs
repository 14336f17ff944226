//! The HTTP attempt: a pooled client that follows no redirects, bounds each
//! attempt by `WEBHOOK_TIMEOUT`, and connects only to public addresses. The
//! check runs in the resolver, on the addresses the connection will use, so
//! a name re-pointed at a private address after registration (DNS
//! rebinding) is refused at delivery time; IP literals, which skip the
//! resolver, are checked before sending.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use url::Host;

use crate::domain::webhook_url::forbidden_reason;

const USER_AGENT_VALUE: &str = concat!("Mechanica-Webhooks/", env!("CARGO_PKG_VERSION"));
/// How much of a response body is kept in the attempt log.
pub const KEPT_BODY_BYTES: usize = 1024;

/// What one attempt found.
#[derive(Debug)]
pub struct AttemptResult {
    pub response_status: Option<u16>,
    pub response_body: Option<String>,
    pub error: Option<String>,
    pub retry_after: Option<Duration>,
    pub duration: Duration,
}

impl AttemptResult {
    pub fn succeeded(&self) -> bool {
        self.response_status
            .is_some_and(|s| (200..300).contains(&s))
    }
}

#[derive(Clone)]
pub struct WebhookClient {
    http: reqwest::Client,
    allow_private: bool,
    /// Through an egress proxy the proxy resolves the host: it is checked here first.
    proxied: bool,
}

/// Resolves names and drops every address a webhook may not go to.
struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| forbidden_reason(a.ip()).is_none())
                .collect();
            if allowed.is_empty() {
                let reason = found
                    .first()
                    .and_then(|a| {
                        forbidden_reason(a.ip())
                            .map(|r| format!("{} points to {r} ({})", name.as_str(), a.ip()))
                    })
                    .unwrap_or_else(|| format!("{} does not resolve", name.as_str()));
                return Err(reason.into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

impl WebhookClient {
    /// `HTTP_PROXY`, `HTTPS_PROXY` and `ALL_PROXY` are ignored: a proxy
    /// resolves the host itself, past the address check. `proxy` (the
    /// `WEBHOOK_PROXY_URL` setting) sends everything through one proxy, and
    /// the target host is checked before each request.
    pub fn new(
        timeout: Duration,
        allow_private: bool,
        proxy: Option<&str>,
    ) -> Result<WebhookClient, String> {
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(16);
        if !allow_private {
            builder = builder.dns_resolver(std::sync::Arc::new(PublicOnly));
        }
        if let Some(proxy) = proxy {
            builder = builder
                .proxy(reqwest::Proxy::all(proxy).map_err(|e| format!("WEBHOOK_PROXY_URL: {e}"))?);
        }
        Ok(WebhookClient {
            http: builder
                .build()
                .map_err(|e| format!("the webhook HTTP client: {e}"))?,
            allow_private,
            proxied: proxy.is_some(),
        })
    }

    /// POSTs `body` with the given signature headers and reports what
    /// happened. Its span names the host only: a URL's path or query may
    /// hold a token (Slack's notification URL does).
    #[tracing::instrument(skip_all, fields(host = %host_of(url)))]
    pub async fn attempt(&self, url: &str, headers: HeaderMap, body: String) -> AttemptResult {
        let started = Instant::now();
        let failure = |error: String| AttemptResult {
            response_status: None,
            response_body: None,
            error: Some(error),
            retry_after: None,
            duration: started.elapsed(),
        };
        if !self.allow_private {
            if let Err(reason) = check_literal(url) {
                return failure(reason);
            }
            if self.proxied {
                if let Err(reason) = check_resolved(url).await {
                    return failure(reason);
                }
            }
        }
        let request = self
            .http
            .post(url)
            .headers(headers)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE))
            .body(body);
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(e) => return failure(describe(&e)),
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let mut kept = Vec::new();
        // Read only what is kept; the rest of a large body is not downloaded.
        while kept.len() < KEPT_BODY_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => kept.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
        kept.truncate(KEPT_BODY_BYTES);
        AttemptResult {
            response_status: Some(status),
            response_body: Some(String::from_utf8_lossy(&kept).into_owned()),
            error: (!(200..300).contains(&status)).then(|| {
                if (300..400).contains(&status) {
                    format!("HTTP {status}: redirects are not followed")
                } else {
                    format!("HTTP {status}")
                }
            }),
            retry_after,
            duration: started.elapsed(),
        }
    }
}

fn host_of(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_default()
}

/// IP literals never reach the resolver: check them here.
fn check_literal(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("invalid URL: {e}"))?;
    let ip: Option<IpAddr> = match parsed.host() {
        Some(Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Some(Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        _ => None,
    };
    match ip.and_then(|ip| forbidden_reason(ip).map(|r| (ip, r))) {
        Some((ip, reason)) => Err(format!("refused: {ip} is {reason}")),
        None => Ok(()),
    }
}

/// Through a proxy the resolver above is not used: resolve and check here.
async fn check_resolved(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("invalid URL: {e}"))?;
    let Some(Host::Domain(host)) = parsed.host() else {
        return Ok(());
    };
    let name: Name = host
        .parse()
        .map_err(|_| format!("{host} is not a host name"))?;
    PublicOnly
        .resolve(name)
        .await
        .map(|_| ())
        .map_err(|e| format!("refused: {e}"))
}

fn describe(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut text = kind.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.chars().take(1000).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_private_addresses_are_refused() {
        assert!(check_literal("http://127.0.0.1:8080/")
            .unwrap_err()
            .contains("loopback"));
        assert!(check_literal("http://[::ffff:10.0.0.1]/")
            .unwrap_err()
            .contains("private"));
        assert!(check_literal("https://93.184.215.14/").is_ok());
        assert!(
            check_literal("https://example.com/").is_ok(),
            "names go to the resolver"
        );
    }
}
