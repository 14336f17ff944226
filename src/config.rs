//! Every setting of `mechanica-api`, read from the environment (and `.env`)
//! and validated once at start-up.

use std::net::SocketAddr;
use std::time::Duration;

pub use crate::ops_notify::OpsNotifyConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Clone)]
pub struct Config {
    pub database_url: String,
    pub database_max_connections: u32,
    pub auto_migrate: bool,
    pub bind_addr: SocketAddr,
    /// The operator's bearer token; generated at start-up when unset.
    pub admin_token: String,
    pub admin_token_generated: bool,
    pub metrics_token: Option<String>,
    pub cors_allowed_origins: Vec<String>,
    pub log_format: LogFormat,
    /// Upper bound on any one request, so no request can hang.
    pub request_timeout: Duration,
    /// Where the relay publishes events; `None`: events are kept for the
    /// feed and not published.
    pub sqs_queue_url: Option<String>,
    /// `AWS_ENDPOINT_URL`: an SQS endpoint other than AWS's (an emulator).
    pub aws_endpoint_url: Option<String>,
    /// Allow webhook endpoints on loopback and private networks (dev, tests).
    pub webhook_allow_private_networks: bool,
    /// Base64 of 32 bytes: seal webhook secrets at rest with AES-256-GCM.
    pub secrets_encryption_key: Option<String>,
    /// Requests per second (and burst) per API key; the operator is exempt.
    pub rate_limit: crate::rate_limit::RateLimit,
    /// Where people reach this API (portal links); default `http://{BIND_ADDR}`.
    pub public_url: Option<String>,
    /// Origins that may frame `/portal` (`frame-ancestors`); default none.
    pub portal_frame_ancestors: Vec<String>,
    /// Operator notifications (`OPS_NOTIFY_*`).
    pub ops_notify: OpsNotifyConfig,
}

impl Config {
    /// The base of links handed out, without a trailing slash; `bound` is
    /// where the API listens (`BIND_ADDR` may ask for any port).
    pub fn public_base(&self, bound: SocketAddr) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("http://{bound}"))
            .trim_end_matches('/')
            .to_string()
    }
}

impl std::fmt::Debug for Config {
    // Tokens stay out of debug output and so out of any log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("database_url", &redact_url(&self.database_url))
            .field("database_max_connections", &self.database_max_connections)
            .field("auto_migrate", &self.auto_migrate)
            .field("bind_addr", &self.bind_addr)
            .field("cors_allowed_origins", &self.cors_allowed_origins)
            .field("log_format", &self.log_format)
            .field("sqs_queue_url", &self.sqs_queue_url)
            .field(
                "webhook_allow_private_networks",
                &self.webhook_allow_private_networks,
            )
            .field("secrets_encrypted", &self.secrets_encryption_key.is_some())
            .field("rate_limit", &self.rate_limit)
            .field("public_url", &self.public_url)
            .field("portal_frame_ancestors", &self.portal_frame_ancestors)
            .field("ops_notify", &self.ops_notify)
            .finish_non_exhaustive()
    }
}

/// A comma-separated list of origins (`https://app.example.com`): scheme,
/// host and port only, since they end up in a response header.
fn origins(env: &Env, name: &str) -> Result<Vec<String>, String> {
    let Some(list) = env.optional(name) else {
        return Ok(vec![]);
    };
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|origin| {
            let parsed = url::Url::parse(origin)
                .map_err(|_| format!("{name}: {origin:?} is not an origin"))?;
            let bare = parsed.origin().ascii_serialization();
            if !matches!(parsed.scheme(), "http" | "https") || bare != origin.trim_end_matches('/')
            {
                return Err(format!(
                    "{name}: {origin:?} must be an origin like https://app.example.com (no path)"
                ));
            }
            Ok(bare)
        })
        .collect()
}

pub const DEFAULT_DATABASE_URL: &str = "mysql://root@127.0.0.1:3306/mechanica";

impl Config {
    /// Reads the environment. Every problem is one line naming its variable.
    pub fn from_env() -> Result<Config, Vec<String>> {
        let _ = dotenvy::dotenv();
        let env = Env;
        let mut errors = Vec::new();

        let database_url = keep(&mut errors, env.url("DATABASE_URL", DEFAULT_DATABASE_URL));
        let database_max_connections = keep(
            &mut errors,
            env.bounded("DATABASE_MAX_CONNECTIONS", 16, 1, 1000),
        );
        let auto_migrate = keep(&mut errors, env.bool("AUTO_MIGRATE", true));
        let bind_addr = keep(
            &mut errors,
            env.parse("BIND_ADDR", SocketAddr::from(([127, 0, 0, 1], 8080))),
        );
        let log_format = keep(&mut errors, log_format(&env));
        let request_timeout = keep(
            &mut errors,
            env.bounded("REQUEST_TIMEOUT_SECS", 60, 1, 3600),
        );
        let admin_token = keep(&mut errors, env.secret("ADMIN_TOKEN"));
        let metrics_token = keep(&mut errors, env.secret("METRICS_TOKEN"));
        let sqs_queue_url = keep(&mut errors, env.queue_url("SQS_QUEUE_URL"));
        let aws_endpoint_url = keep(&mut errors, env.queue_url("AWS_ENDPOINT_URL"));
        let webhook_allow_private_networks = keep(
            &mut errors,
            env.bool("WEBHOOK_ALLOW_PRIVATE_NETWORKS", false),
        );
        let secrets_encryption_key = env.optional("SECRETS_ENCRYPTION_KEY");
        if let Err(e) = crate::secrets::SecretBox::new(secrets_encryption_key.as_deref()) {
            errors.push(e);
        }
        let rate_limit = keep(&mut errors, rate_limit(&env));
        let public_url = keep(&mut errors, env.queue_url("PUBLIC_URL"));
        let ops_notify = keep(&mut errors, ops_notify(&env));
        let portal_frame_ancestors = keep(&mut errors, origins(&env, "PORTAL_FRAME_ANCESTORS"));
        let cors_allowed_origins = env
            .optional("CORS_ALLOWED_ORIGINS")
            .map(|list| {
                list.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();

        if !errors.is_empty() {
            return Err(errors);
        }
        match (
            database_url,
            database_max_connections,
            auto_migrate,
            bind_addr,
            log_format,
            request_timeout,
            admin_token,
            metrics_token,
            sqs_queue_url,
            aws_endpoint_url,
            webhook_allow_private_networks,
            rate_limit,
            public_url,
            portal_frame_ancestors,
        ) {
            (
                Some(database_url),
                Some(database_max_connections),
                Some(auto_migrate),
                Some(bind_addr),
                Some(log_format),
                Some(request_timeout),
                Some(admin_token),
                Some(metrics_token),
                Some(sqs_queue_url),
                Some(aws_endpoint_url),
                Some(webhook_allow_private_networks),
                Some(rate_limit),
                Some(public_url),
                Some(portal_frame_ancestors),
            ) => {
                let admin_token_generated = admin_token.is_none();
                Ok(Config {
                    database_url,
                    database_max_connections: database_max_connections as u32,
                    auto_migrate,
                    bind_addr,
                    admin_token: admin_token.unwrap_or_else(|| {
                        crate::tokens::generate_token(crate::tokens::ADMIN_PREFIX)
                    }),
                    admin_token_generated,
                    metrics_token,
                    cors_allowed_origins,
                    log_format,
                    request_timeout: Duration::from_secs(request_timeout),
                    sqs_queue_url,
                    aws_endpoint_url,
                    webhook_allow_private_networks,
                    secrets_encryption_key,
                    rate_limit,
                    public_url,
                    portal_frame_ancestors,
                    ops_notify: ops_notify.unwrap_or_default(),
                })
            }
            _ => Err(errors),
        }
    }
}

/// `OPS_NOTIFY_URL`, `OPS_NOTIFY_OUTBOX_AGE` (default 5 minutes) and
/// `OPS_NOTIFY_ALLOW_PRIVATE_NETWORKS`, read by both binaries.
pub fn ops_notify(env: &Env) -> Result<OpsNotifyConfig, String> {
    let url = env.queue_url("OPS_NOTIFY_URL")?;
    let outbox_age =
        crate::delivery::schedule::parse_duration(&env.string("OPS_NOTIFY_OUTBOX_AGE", "5m"))
            .map_err(|e| format!("OPS_NOTIFY_OUTBOX_AGE: {e}"))?;
    if outbox_age.is_zero() {
        return Err("OPS_NOTIFY_OUTBOX_AGE: must be more than 0".into());
    }
    let allow_private_networks = env.bool("OPS_NOTIFY_ALLOW_PRIVATE_NETWORKS", false)?;
    Ok(OpsNotifyConfig {
        url,
        outbox_age,
        allow_private_networks,
    })
}

/// `RATE_LIMIT_PER_SECOND` (0 turns limiting off) and `RATE_LIMIT_BURST`
/// (by default twice the rate).
fn rate_limit(env: &Env) -> Result<crate::rate_limit::RateLimit, String> {
    let per_second = env.bounded("RATE_LIMIT_PER_SECOND", 100, 0, 1_000_000)? as u32;
    let burst = env.bounded(
        "RATE_LIMIT_BURST",
        u64::from(per_second) * 2,
        u64::from(per_second.min(1)),
        10_000_000,
    )? as u32;
    Ok(crate::rate_limit::RateLimit { per_second, burst })
}

/// The value, or `None` with its error kept.
fn keep<T>(errors: &mut Vec<String>, result: Result<T, String>) -> Option<T> {
    result.map_err(|e| errors.push(e)).ok()
}

/// `LOG_FORMAT`, read on its own because the worker needs it too.
pub fn log_format(env: &Env) -> Result<LogFormat, String> {
    match env.string("LOG_FORMAT", "pretty").as_str() {
        "pretty" => Ok(LogFormat::Pretty),
        "json" => Ok(LogFormat::Json),
        other => Err(format!(
            "LOG_FORMAT: must be `pretty` or `json`, not `{other}`"
        )),
    }
}

/// Reads variables; an empty value counts as unset.
pub struct Env;

impl Env {
    pub fn optional(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    }

    pub fn string(&self, name: &str, default: &str) -> String {
        self.optional(name).unwrap_or_else(|| default.to_string())
    }

    pub fn parse<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.optional(name) {
            None => Ok(default),
            Some(raw) => raw
                .trim()
                .parse()
                .map_err(|_| format!("{name}: cannot parse `{raw}`")),
        }
    }

    pub fn bounded(&self, name: &str, default: u64, min: u64, max: u64) -> Result<u64, String> {
        let value = self.parse(name, default)?;
        if (min..=max).contains(&value) {
            Ok(value)
        } else {
            Err(format!(
                "{name}: must be between {min} and {max}, not {value}"
            ))
        }
    }

    pub fn bool(&self, name: &str, default: bool) -> Result<bool, String> {
        match self.optional(name).as_deref().map(str::trim) {
            None => Ok(default),
            Some("true" | "1" | "yes") => Ok(true),
            Some("false" | "0" | "no") => Ok(false),
            Some(other) => Err(format!("{name}: must be `true` or `false`, not `{other}`")),
        }
    }

    pub fn url(&self, name: &str, default: &str) -> Result<String, String> {
        let url = self.string(name, default);
        if url.starts_with("mysql://") {
            Ok(url)
        } else {
            Err(format!("{name}: must be a mysql:// URL"))
        }
    }

    /// An optional http(s) URL (a queue, an endpoint).
    pub fn queue_url(&self, name: &str) -> Result<Option<String>, String> {
        match self.optional(name) {
            Some(url) if !(url.starts_with("https://") || url.starts_with("http://")) => {
                Err(format!("{name}: must be an http(s) URL"))
            }
            url => Ok(url),
        }
    }

    /// An optional token; when set, long enough to resist guessing.
    pub fn secret(&self, name: &str) -> Result<Option<String>, String> {
        match self.optional(name) {
            Some(token) if token.len() < 16 => {
                Err(format!("{name}: must be at least 16 characters"))
            }
            token => Ok(token),
        }
    }
}

/// The URL without its password, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("mysql://app:s3cret@db:3306/x"),
            "mysql://app:***@db:3306/x"
        );
        assert_eq!(redact_url("mysql://root@h/x"), "mysql://root@h/x");
    }
}

/// Every setting of `mechanica-delivery`.
#[derive(Clone)]
pub struct DeliveryConfig {
    pub database_url: String,
    pub database_max_connections: u32,
    pub sqs_queue_url: String,
    pub aws_endpoint_url: Option<String>,
    pub retry_schedule: crate::delivery::schedule::RetrySchedule,
    pub timeout: Duration,
    pub allow_private_networks: bool,
    /// Attempts in flight at once, over all endpoints.
    pub max_in_flight: usize,
    /// Attempts in flight at once to one endpoint.
    pub max_in_flight_per_endpoint: usize,
    pub disable_after: Duration,
    pub metrics_addr: SocketAddr,
    pub secrets_encryption_key: Option<String>,
    pub log_format: LogFormat,
    /// SQS long polls in flight at once at most (`delivery::polls`).
    pub receivers: usize,
    /// How often committed events are checked for missing deliveries.
    pub reconcile_every: Duration,
    /// How old an event must be before a missing delivery counts as lost.
    pub reconcile_after: Duration,
    /// Settled deliveries (with their attempts) are purged after this long.
    pub retention: Duration,
    /// One egress proxy for all webhook traffic (`HTTP_PROXY` and the like
    /// are ignored for webhooks).
    pub webhook_proxy_url: Option<String>,
    /// Operator notifications (`OPS_NOTIFY_*`).
    pub ops_notify: OpsNotifyConfig,
}

impl DeliveryConfig {
    pub fn from_env() -> Result<DeliveryConfig, Vec<String>> {
        use crate::delivery::schedule::{parse_duration, RetrySchedule};
        let _ = dotenvy::dotenv();
        let env = Env;
        let mut errors = Vec::new();
        let database_url = keep(&mut errors, env.url("DATABASE_URL", DEFAULT_DATABASE_URL));
        let database_max_connections = keep(
            &mut errors,
            env.bounded("DATABASE_MAX_CONNECTIONS", 16, 1, 1000),
        );
        let sqs_queue_url = match env.queue_url("SQS_QUEUE_URL") {
            Ok(Some(url)) => Some(url),
            Ok(None) => {
                errors.push("SQS_QUEUE_URL: required: the queue to deliver events from".into());
                None
            }
            Err(e) => {
                errors.push(e);
                None
            }
        };
        let aws_endpoint_url = keep(&mut errors, env.queue_url("AWS_ENDPOINT_URL"));
        let retry_schedule = keep(
            &mut errors,
            RetrySchedule::parse(&env.string("WEBHOOK_RETRY_SCHEDULE", "5s,5m,30m,2h,5h,10h,10h"))
                .map_err(|e| format!("WEBHOOK_RETRY_SCHEDULE: {e}")),
        );
        let timeout = keep(
            &mut errors,
            parse_duration(&env.string("WEBHOOK_TIMEOUT", "15s"))
                .map_err(|e| format!("WEBHOOK_TIMEOUT: {e}"))
                .and_then(|d| {
                    if d.is_zero() || d > Duration::from_secs(300) {
                        Err("WEBHOOK_TIMEOUT: must be more than 0 and at most 300s".into())
                    } else {
                        Ok(d)
                    }
                }),
        );
        let disable_after = keep(
            &mut errors,
            parse_duration(&env.string("WEBHOOK_DISABLE_AFTER", "5d"))
                .map_err(|e| format!("WEBHOOK_DISABLE_AFTER: {e}")),
        );
        let allow_private_networks = keep(
            &mut errors,
            env.bool("WEBHOOK_ALLOW_PRIVATE_NETWORKS", false),
        );
        let max_in_flight = keep(
            &mut errors,
            env.bounded("WEBHOOK_MAX_IN_FLIGHT", 128, 1, 10_000),
        );
        let max_in_flight_per_endpoint = keep(
            &mut errors,
            env.bounded("WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT", 16, 1, 1000),
        );
        let metrics_addr = keep(
            &mut errors,
            env.parse(
                "DELIVERY_METRICS_ADDR",
                SocketAddr::from(([127, 0, 0, 1], 9090)),
            ),
        );
        let secrets_encryption_key = env.optional("SECRETS_ENCRYPTION_KEY");
        if let Err(e) = crate::secrets::SecretBox::new(secrets_encryption_key.as_deref()) {
            errors.push(e);
        }
        let log_format = keep(&mut errors, log_format(&env));
        let receivers = keep(&mut errors, env.bounded("WEBHOOK_RECEIVERS", 8, 1, 64));
        let webhook_proxy_url = keep(&mut errors, env.queue_url("WEBHOOK_PROXY_URL")).flatten();
        let ops_notify = keep(&mut errors, ops_notify(&env)).unwrap_or_default();
        let retention_days = keep(&mut errors, env.bounded("RETENTION_DAYS", 30, 1, 3650));
        let reconcile_every = keep(
            &mut errors,
            parse_duration(&env.string("WEBHOOK_RECONCILE_INTERVAL", "60s"))
                .map_err(|e| format!("WEBHOOK_RECONCILE_INTERVAL: {e}")),
        );
        let reconcile_after = keep(
            &mut errors,
            parse_duration(&env.string("WEBHOOK_RECONCILE_AFTER", "2m"))
                .map_err(|e| format!("WEBHOOK_RECONCILE_AFTER: {e}")),
        );
        if !errors.is_empty() {
            return Err(errors);
        }
        let (Some(receivers), Some(reconcile_every), Some(reconcile_after), Some(retention_days)) =
            (receivers, reconcile_every, reconcile_after, retention_days)
        else {
            return Err(errors);
        };
        match (
            database_url,
            database_max_connections,
            sqs_queue_url,
            aws_endpoint_url,
            retry_schedule,
            timeout,
            disable_after,
            allow_private_networks,
            max_in_flight,
            max_in_flight_per_endpoint,
            metrics_addr,
            log_format,
        ) {
            (
                Some(database_url),
                Some(database_max_connections),
                Some(sqs_queue_url),
                Some(aws_endpoint_url),
                Some(retry_schedule),
                Some(timeout),
                Some(disable_after),
                Some(allow_private_networks),
                Some(max_in_flight),
                Some(max_in_flight_per_endpoint),
                Some(metrics_addr),
                Some(log_format),
            ) => Ok(DeliveryConfig {
                database_url,
                database_max_connections: database_max_connections as u32,
                sqs_queue_url,
                aws_endpoint_url,
                retry_schedule,
                timeout,
                allow_private_networks,
                max_in_flight: max_in_flight as usize,
                max_in_flight_per_endpoint: max_in_flight_per_endpoint as usize,
                disable_after,
                metrics_addr,
                secrets_encryption_key,
                log_format,
                receivers: receivers as usize,
                reconcile_every,
                reconcile_after,
                webhook_proxy_url,
                retention: Duration::from_secs(retention_days * 86_400),
                ops_notify,
            }),
            _ => Err(errors),
        }
    }
}
