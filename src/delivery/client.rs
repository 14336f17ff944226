//! The HTTP attempt: a pooled client that follows no redirects, bounds each
//! attempt by `WEBHOOK_TIMEOUT`, and connects only to public addresses. The
//! check runs in the resolver, on the addresses the connection will use, so
//! a name re-pointed at a private address after registration (DNS
//! rebinding) is refused at delivery time; IP literals, which skip the
//! resolver, are checked before sending.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
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
    /// Not sent: it would have left after the time `attempt_by` gave it.
    pub left_late: bool,
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
    pub async fn attempt(&self, url: &str, headers: HeaderMap, body: String) -> AttemptResult {
        self.post(url, headers, body.into()).await
    }

    /// The same, for a turn under a rate limit: the request leaves by `by`
    /// or not at all (`left_late`). The connection checks the time as it
    /// writes the request, so a request held up on its way out (a busy
    /// runtime, a new connection) is not sent late, crowding the turns
    /// after it.
    pub async fn attempt_by(
        &self,
        url: &str,
        headers: HeaderMap,
        body: String,
        by: tokio::time::Instant,
    ) -> AttemptResult {
        let body = LeavesBy {
            payload: Some(body.into()),
            by,
        };
        self.post(url, headers, reqwest::Body::wrap(body)).await
    }

    #[tracing::instrument(skip_all, fields(host = %host_of(url)))]
    async fn post(&self, url: &str, headers: HeaderMap, body: reqwest::Body) -> AttemptResult {
        let started = Instant::now();
        let failure = |error: String| AttemptResult {
            response_status: None,
            response_body: None,
            error: Some(error),
            retry_after: None,
            duration: started.elapsed(),
            left_late: false,
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
            Err(e) if caused_by::<LeftLate>(&e) => {
                return AttemptResult {
                    left_late: true,
                    ..failure(LeftLate.to_string())
                }
            }
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
            left_late: false,
        }
    }
}

/// A request body that will not go after `by`: the connection polls it
/// for its bytes right after it has buffered the request's head and before
/// it writes either, so refusing drops the request unsent.
struct LeavesBy {
    payload: Option<bytes::Bytes>,
    by: tokio::time::Instant,
}

#[derive(Debug)]
struct LeftLate;

impl std::fmt::Display for LeftLate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("held up past its turn under the endpoint's rate limit; not sent")
    }
}

impl std::error::Error for LeftLate {}

impl http_body::Body for LeavesBy {
    type Data = bytes::Bytes;
    type Error = LeftLate;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, LeftLate>>> {
        let Some(payload) = self.payload.take() else {
            return Poll::Ready(None);
        };
        if tokio::time::Instant::now() > self.by {
            return Poll::Ready(Some(Err(LeftLate)));
        }
        Poll::Ready(Some(Ok(http_body::Frame::data(payload))))
    }

    fn is_end_stream(&self) -> bool {
        self.payload.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.payload.as_ref().map_or(0, |p| p.len() as u64))
    }
}

/// Whether `E` is somewhere in the error's chain of causes.
fn caused_by<E: std::error::Error + 'static>(err: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if cause.is::<E>() {
            return true;
        }
        source = cause.source();
    }
    false
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

    /// A request past its time is dropped unsent: a real server on
    /// loopback gets not one byte of it. One on time goes, whole.
    #[tokio::test]
    async fn a_request_past_its_time_is_not_sent() {
        use std::sync::{Arc, Mutex};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::<u8>::new()));
        let got = received.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let got = got.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = stream.read(&mut buf).await {
                        got.lock().unwrap().extend_from_slice(&buf[..n]);
                        if buf[..n].ends_with(b"}") {
                            let answer = b"HTTP/1.1 204 No Content\r\n\r\n";
                            let _ = stream.write_all(answer).await;
                        }
                    }
                });
            }
        });
        let client = WebhookClient::new(Duration::from_secs(2), true, None).unwrap();
        let passed = tokio::time::Instant::now() - Duration::from_millis(1);
        let late = client
            .attempt_by(&url, HeaderMap::new(), r#"{"late":1}"#.into(), passed)
            .await;
        assert!(late.left_late, "{late:?}");
        assert_eq!(late.response_status, None);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            received.lock().unwrap().is_empty(),
            "{}",
            String::from_utf8_lossy(&received.lock().unwrap())
        );

        let by = tokio::time::Instant::now() + Duration::from_secs(5);
        let on_time = client
            .attempt_by(&url, HeaderMap::new(), r#"{"on_time":1}"#.into(), by)
            .await;
        assert!(!on_time.left_late);
        assert_eq!(on_time.response_status, Some(204), "{on_time:?}");
        let sent = String::from_utf8_lossy(&received.lock().unwrap()).to_lowercase();
        assert!(sent.starts_with("post /hook http/1.1"), "{sent}");
        assert!(sent.contains("content-length: 13"), "{sent}");
        assert!(sent.ends_with(r#"{"on_time":1}"#), "{sent}");
    }
}
