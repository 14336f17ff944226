//! Webhook URLs and the network rules they must follow. The address check
//! is shared with the delivery worker, which must apply it to the address it
//! actually connects to, so DNS rebinding after registration gets nowhere.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use url::{Host, Url};

pub const MAX_URL_BYTES: usize = 2048;

/// A URL that is well formed for a webhook: http(s), a host, no credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl(Url);

impl WebhookUrl {
    /// Checks the form only; `check_destination` checks where it points.
    pub fn parse(raw: &str) -> Result<WebhookUrl, String> {
        if raw.len() > MAX_URL_BYTES {
            return Err(format!("must be at most {MAX_URL_BYTES} bytes"));
        }
        let url = Url::parse(raw).map_err(|e| format!("is not a valid URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("must use http or https".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not contain credentials".into());
        }
        match url.host() {
            None => Err("must have a host".into()),
            Some(Host::Domain(d)) if d.trim_end_matches('.').is_empty() => {
                Err("must have a host".into())
            }
            Some(_) => Ok(WebhookUrl(url)),
        }
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn url(&self) -> &Url {
        &self.0
    }

    /// Resolves the host and refuses it if any address is not public.
    pub async fn check_destination(&self) -> Result<(), String> {
        let port = self.0.port_or_known_default().unwrap_or(443);
        let addresses: Vec<IpAddr> = match self.0.host() {
            Some(Host::Ipv4(ip)) => vec![IpAddr::V4(ip)],
            Some(Host::Ipv6(ip)) => vec![IpAddr::V6(ip)],
            Some(Host::Domain(name)) => {
                if is_localhost_name(name) {
                    return Err("points to a loopback address (localhost)".into());
                }
                let lookup = tokio::net::lookup_host((name, port));
                match tokio::time::timeout(Duration::from_secs(5), lookup).await {
                    Ok(Ok(found)) => found.map(|a: SocketAddr| a.ip()).collect(),
                    Ok(Err(_)) | Err(_) => return Err("has a host that does not resolve".into()),
                }
            }
            None => return Err("must have a host".into()),
        };
        if addresses.is_empty() {
            return Err("has a host that does not resolve".into());
        }
        for ip in addresses {
            if let Some(reason) = forbidden_reason(ip) {
                return Err(format!("points to {reason} ({ip})"));
            }
        }
        Ok(())
    }
}

/// `localhost` and its subdomains are loopback by definition (RFC 6761).
fn is_localhost_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// Why a webhook may not be sent to `ip`, or `None` if it is public.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => "an unspecified address",
        (127, _, _) => "a loopback address",
        (10, _, _) => "a private address",
        (172, 16..=31, _) => "a private address",
        (192, 168, _) => "a private address",
        (100, 64..=127, _) => "a shared (CGNAT) address",
        (169, 254, _) => "a link-local address",
        (192, 0, 0) => "an IETF protocol address",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "a documentation address",
        (198, 18..=19, _) => "a benchmarking address",
        (224..=239, _, _) => "a multicast address",
        (240..=255, _, _) => "a reserved address",
        _ => return None,
    })
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    // IPv4 written inside IPv6 (mapped ::ffff:a.b.c.d, compatible ::a.b.c.d,
    // NAT64 64:ff9b::a.b.c.d) is judged as the IPv4 address it carries.
    let embedded = Ipv4Addr::new(
        (segments[6] >> 8) as u8,
        segments[6] as u8,
        (segments[7] >> 8) as u8,
        segments[7] as u8,
    );
    if ip.is_unspecified() {
        return Some("an unspecified address");
    }
    if ip.is_loopback() {
        return Some("a loopback address");
    }
    if let [0, 0, 0, 0, 0, 0xffff, _, _]
    | [0, 0, 0, 0, 0, 0, _, _]
    | [0x64, 0xff9b, 0, 0, 0, 0, _, _] = segments
    {
        return v4_reason(embedded);
    }
    let first = segments[0];
    Some(match first {
        0xfe80..=0xfebf => "a link-local address",
        0xfec0..=0xfeff => "a site-local address",
        0xfc00..=0xfdff => "a unique-local (private) address",
        0xff00..=0xffff => "a multicast address",
        0x2001 if segments[1] == 0x0db8 => "a documentation address",
        0x2001 if segments[1] == 0x0002 && segments[2] == 0 => "a benchmarking address",
        0x3fff if segments[1] <= 0x0fff => "a documentation address",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_forbidden_range_is_refused() {
        let cases = [
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("10.0.0.1", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "CGNAT"),
            ("100.127.255.255", "CGNAT"),
            ("169.254.169.254", "link-local"),
            ("192.0.0.8", "IETF"),
            ("192.0.2.1", "documentation"),
            ("198.51.100.1", "documentation"),
            ("203.0.113.1", "documentation"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.255", "benchmarking"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("240.0.0.1", "reserved"),
            ("255.255.255.255", "reserved"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fe80::1", "link-local"),
            ("fc00::1", "unique-local"),
            ("fd12:3456::1", "unique-local"),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("2001:2::1", "benchmarking"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.1.2.3", "private"),
            ("::ffff:169.254.169.254", "link-local"),
            ("::ffff:192.168.0.1", "private"),
            ("::127.0.0.1", "loopback"),
            ("64:ff9b::10.0.0.1", "private"),
        ];
        for (ip, expected) in cases {
            let reason = forbidden_reason(ip.parse().unwrap());
            assert!(
                reason.is_some_and(|r| r.contains(expected)),
                "{ip}: {reason:?}"
            );
        }
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "93.184.215.14",
            "8.8.8.8",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "198.17.255.255",
            "198.20.0.1",
            "2606:4700::1111",
            "::ffff:93.184.215.14",
            "64:ff9b::8.8.8.8",
        ] {
            assert_eq!(forbidden_reason(ip.parse().unwrap()), None, "{ip}");
        }
    }

    #[test]
    fn the_form_is_checked() {
        let bad = [
            ("ftp://example.com/", "http or https"),
            ("https://user:pass@example.com/", "credentials"),
            ("https://user@example.com/", "credentials"),
            ("not a url", "valid URL"),
            ("https://", "valid URL"),
            ("file:///etc/passwd", "http or https"),
            ("javascript:alert(1)", "http or https"),
        ];
        for (raw, expected) in bad {
            let err = WebhookUrl::parse(raw).unwrap_err();
            assert!(err.contains(expected), "{raw}: {err}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES));
        assert!(WebhookUrl::parse(&long).unwrap_err().contains("2048"));
        assert!(WebhookUrl::parse("https://example.com/hooks?x=1").is_ok());
    }

    #[tokio::test]
    async fn tricky_spellings_of_loopback_are_refused() {
        for raw in [
            "http://0x7f.1/",
            "http://[::ffff:127.0.0.1]/",
            "http://2130706433/",
            "http://localhost./",
            "http://LOCALHOST/",
            "http://api.localhost/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://[::1]:8080/",
            "http://[0:0:0:0:0:ffff:7f00:1]/",
            "http://0/",
        ] {
            let url = WebhookUrl::parse(raw).unwrap();
            let err = url.check_destination().await.unwrap_err();
            assert!(
                err.contains("loopback") || err.contains("unspecified"),
                "{raw}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn a_public_literal_passes_without_dns() {
        let url = WebhookUrl::parse("https://93.184.215.14/hooks").unwrap();
        assert_eq!(url.check_destination().await, Ok(()));
    }
}
