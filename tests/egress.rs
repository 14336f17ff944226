//! Webhook egress (SPEC §9): the webhook client ignores the proxy variables
//! (a proxy would resolve the host itself, past the address check) and uses
//! `WEBHOOK_PROXY_URL` when set, checking the target host first. A test
//! binary of its own: it sets process-wide proxy variables.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mechanica::delivery::client::WebhookClient;
use reqwest::header::HeaderMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Answers every HTTP/1.1 request on a fresh listener with 200 and counts them.
async fn counting_server() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = socket.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buffer).to_string();
                    let Some(head_end) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let length: usize = text[..head_end]
                        .lines()
                        .find_map(|l| {
                            let (name, value) = l.split_once(':')?;
                            name.eq_ignore_ascii_case("content-length")
                                .then(|| value.trim().parse().ok())
                                .flatten()
                        })
                        .unwrap_or(0);
                    if buffer.len() >= head_end + 4 + length {
                        seen.fetch_add(1, Ordering::SeqCst);
                        let _ = socket
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                            .await;
                        buffer.clear();
                    }
                }
            });
        }
    });
    (url, count)
}

#[tokio::test]
async fn proxy_variables_are_ignored_and_webhook_proxy_url_is_used() {
    let (proxy, proxied) = counting_server().await;
    let (receiver, received) = counting_server().await;
    for name in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        std::env::set_var(name, &proxy);
    }
    std::env::remove_var("NO_PROXY");
    std::env::remove_var("no_proxy");
    let timeout = Duration::from_secs(5);

    // Loopback is allowed here only so that the receiver can be local.
    let direct = WebhookClient::new(timeout, true, None).unwrap();
    let result = direct
        .attempt(&format!("{receiver}/hooks"), HeaderMap::new(), "{}".into())
        .await;
    assert_eq!(result.response_status, Some(200), "{result:?}");
    assert_eq!(received.load(Ordering::SeqCst), 1);
    assert_eq!(
        proxied.load(Ordering::SeqCst),
        0,
        "webhook traffic went to HTTP_PROXY"
    );

    let via = WebhookClient::new(timeout, true, Some(&proxy)).unwrap();
    let result = via
        .attempt(&format!("{receiver}/hooks"), HeaderMap::new(), "{}".into())
        .await;
    assert_eq!(result.response_status, Some(200), "{result:?}");
    assert_eq!(
        proxied.load(Ordering::SeqCst),
        1,
        "WEBHOOK_PROXY_URL was not used"
    );
    assert_eq!(received.load(Ordering::SeqCst), 1);

    // Through the proxy the address check still applies to the target host.
    let checked = WebhookClient::new(timeout, false, Some(&proxy)).unwrap();
    let result = checked
        .attempt("http://localhost:9/hooks", HeaderMap::new(), "{}".into())
        .await;
    let error = result.error.unwrap_or_default();
    assert!(error.contains("loopback"), "{error}");
    assert_eq!(
        proxied.load(Ordering::SeqCst),
        1,
        "a loopback target reached the proxy"
    );
}
