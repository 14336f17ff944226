//! `AppState`, `App::build` (the one start-up path of `main` and the tests),
//! the middleware stack, and graceful shutdown.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use sqlx::MySqlPool;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::classify::ServerErrorsFailureClass;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::auth::hash_token;
use crate::batch;
use crate::config::Config;
use crate::db;
use crate::error::ApiError;
use crate::http;
use crate::key_lookups::KeyLookups;
use crate::metrics::Metrics;
use crate::ops_notify::Notifier;
use crate::order_writer::OrderWriter;
use crate::outbox::{self, Relay};
use crate::queue::Queue;
use crate::rate_limit::RateLimiter;
use crate::secrets::SecretBox;
use crate::signals::Signals;
use crate::state::{AppState, SharedState};

/// A client has this long to send a request body.
pub use crate::http::extract::BODY_READ_TIMEOUT;

pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// The relay's and the feed's numbering passes: short, one at a time.
const PIPELINE_CONNECTIONS: u32 = 4;
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("DATABASE_URL: {0}")]
    Database(#[source] sqlx::Error),
    #[error("migrating the database failed: {0}")]
    Migrate(#[source] sqlx::Error),
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

pub struct App {
    listener: TcpListener,
    router: Router,
    pub db: MySqlPool,
    pipeline_db: MySqlPool,
    signals: Arc<Signals>,
    metrics: Arc<Metrics>,
    queue: Option<Queue>,
    request_timeout: Duration,
    notifier: Notifier,
    outbox_age: Duration,
}

impl App {
    /// Connects, migrates (unless `AUTO_MIGRATE=false`), binds, builds the router.
    pub async fn build(config: &Config) -> Result<App, StartupError> {
        let pool = db::pool(&config.database_url, config.database_max_connections)
            .map_err(StartupError::Database)?;
        if config.auto_migrate {
            at_startup("migrating", || db::migrate(&config.database_url, &pool))
                .await
                .map_err(StartupError::Migrate)?;
        }
        // Rows the code relies on are made here, not by migrations: a schema
        // that arrived through a deploy request has none.
        at_startup("preparing the feed clock", || db::feed_clock::ensure(&pool))
            .await
            .map_err(StartupError::Database)?;
        let pipeline_db = db::read_committed_pool(&config.database_url, PIPELINE_CONNECTIONS)
            .map_err(StartupError::Database)?;
        let listener = TcpListener::bind(config.bind_addr)
            .await
            .map_err(|source| StartupError::Bind {
                addr: config.bind_addr,
                source,
            })?;
        let candidate = crate::tokens::random_bytes::<32>();
        let cursor_key = at_startup("reading the feed cursor key", || {
            db::server_secrets::get_or_create(&pool, "feed_cursor_key", &candidate)
        })
        .await
        .map_err(StartupError::Database)?;
        let queue = match &config.sqs_queue_url {
            Some(url) => Some(Queue::connect(url, config.aws_endpoint_url.as_deref()).await),
            None => {
                tracing::warn!(
                    "SQS_QUEUE_URL is not set: events are kept for the feed but not published"
                );
                None
            }
        };
        let signals = Arc::new(Signals::default());
        let metrics = Arc::new(Metrics::default());
        let notifier =
            Notifier::start(&config.ops_notify, pool.clone()).map_err(StartupError::Config)?;
        let state = AppState::new(SharedState {
            db: pool.clone(),
            pipeline_db: pipeline_db.clone(),
            admin_token_hash: hash_token(&config.admin_token),
            metrics_token_hash: config.metrics_token.as_deref().map(hash_token),
            metrics: metrics.clone(),
            signals: signals.clone(),
            cursor_key: cursor_key.into(),
            secrets: Arc::new(
                SecretBox::new(config.secrets_encryption_key.as_deref())
                    .map_err(StartupError::Config)?,
            ),
            allow_private_networks: config.webhook_allow_private_networks,
            rate_limiter: Arc::new(RateLimiter::new(config.rate_limit)),
            orders: OrderWriter::start(pool.clone(), signals.clone()),
            api_keys: KeyLookups::start(pool.clone()),
            public_base: config
                .public_base(listener.local_addr().unwrap_or(config.bind_addr))
                .into(),
            portal_frame_ancestors: config.portal_frame_ancestors.clone().into(),
        });
        Ok(App {
            listener,
            router: router(state, config),
            db: pool,
            pipeline_db,
            signals,
            metrics,
            queue,
            request_timeout: config.request_timeout,
            notifier,
            outbox_age: config.ops_notify.outbox_age,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Serves, sequences the feed and relays the outbox until `shutdown`
    /// completes; then lets in-flight requests finish and stops the loops.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (stop, stopped) = watch::channel(false);
        let mut background = tokio::task::JoinSet::new();
        if self.notifier.is_on() {
            background.spawn(outbox::watch_age(
                self.pipeline_db.clone(),
                self.notifier.clone(),
                self.outbox_age,
                stopped.clone(),
            ));
        }
        background.spawn(outbox::run(
            Relay::new(
                self.pipeline_db.clone(),
                self.queue,
                self.metrics.clone(),
                self.notifier,
            ),
            self.signals.clone(),
            stopped,
        ));
        let served = crate::server::serve(
            self.listener,
            self.router,
            shutdown,
            self.request_timeout + Duration::from_secs(5),
        )
        .await;
        let _ = stop.send(true);
        // A round in progress finishes (bounded by the SQS timeouts).
        while background.join_next().await.is_some() {}
        served
    }
}

/// The routes with the middleware every request passes through.
/// How long start-up keeps trying while the database answers with
/// transient errors.
const STARTUP_PATIENCE: Duration = Duration::from_secs(60);

/// Start-up's database work, run again while the database answers with a
/// transient error: an instance started while others serve a heavy load
/// meets their locks (a deadlock is InnoDB's ordinary answer), and one
/// started beside a restarting database meets a refused connection. Either
/// way it must start, not exit (SPEC §9).
async fn at_startup<T, F, Fut>(what: &str, mut step: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let give_up = Instant::now() + STARTUP_PATIENCE;
    let mut pause = Duration::from_millis(50);
    loop {
        match step().await {
            Err(e) if crate::error::is_transient_error(&e) && Instant::now() < give_up => {
                tracing::info!(error = %e, retry_in = ?pause, "{what} met a transient database error; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

pub fn router(state: AppState, config: &Config) -> Router {
    let timeout = config.request_timeout;
    let api = http::router()
        .merge(SwaggerUi::new("/docs").url("/openapi.json", http::openapi::ApiDoc::openapi()))
        .fallback(|| async { ApiError::NotFound("route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            limit_time(timeout, req, next)
        }))
        .layer(cors(&config.cors_allowed_origins))
        .layer(CatchPanicLayer::custom(|_| {
            tracing::error!("a handler panicked");
            ApiError::Internal.into_response()
        }))
        .layer(middleware::from_fn(crate::auth::portal_headers))
        .layer(middleware::map_response(problem_for_bare_errors))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_metrics,
        ))
        .with_state(state);
    api.layer(
        TraceLayer::new_for_http()
            .make_span_with(|req: &Request| {
                let request_id = req
                    .headers()
                    .get(&REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                // No query in any field: it may hold a token. The route is
                // filled in once known (`record_metrics`).
                let span = tracing::info_span!(
                    "request",
                    method = %req.method(),
                    path = %req.uri().path(),
                    request_id,
                    otel.name = %req.method(),
                    otel.kind = "server",
                    http.request.method = %req.method(),
                    http.route = tracing::field::Empty,
                    http.response.status_code = tracing::field::Empty,
                );
                crate::telemetry::continue_trace(
                    &span,
                    crate::telemetry::traceparent_header(req.headers()),
                );
                span
            })
            .on_response(DefaultOnResponse::new().level(Level::INFO))
            .on_failure(log_failure),
    )
    .layer(PropagateRequestIdLayer::new(REQUEST_ID))
    .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

fn cors(origins: &[String]) -> CorsLayer {
    let origins: Vec<HeaderValue> = origins.iter().filter_map(|o| o.parse().ok()).collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
        .allow_headers([
            axum::http::header::AUTHORIZATION,
            axum::http::header::CONTENT_TYPE,
            axum::http::header::IF_MATCH,
            HeaderName::from_static("idempotency-key"),
        ])
        .expose_headers([
            axum::http::header::ETAG,
            REQUEST_ID,
            HeaderName::from_static("idempotent-replayed"),
        ])
}

/// A 5xx answer, logged once. A 503 is the retryable answer to an outage,
/// overload or a time limit (its cause is logged where it is met): a
/// warning, not an error, or every database blip would page the operator
/// once per request. Anything else is a bug: an error.
fn log_failure(class: ServerErrorsFailureClass, latency: Duration, _: &tracing::Span) {
    match class {
        ServerErrorsFailureClass::StatusCode(StatusCode::SERVICE_UNAVAILABLE) => {
            tracing::warn!(?latency, "answered 503: retry later");
        }
        other => tracing::error!(classification = %other, ?latency, "response failed"),
    }
}

/// No request runs longer than the configured bound.
/// Answers 503 once a request has run for `limit`. If its change was being
/// committed at that moment, the answer says the outcome is unknown; else
/// nothing of it is carried out afterwards (`batch`).
async fn limit_time(limit: Duration, req: Request, next: Next) -> Response {
    let in_doubt = Arc::new(AtomicBool::new(false));
    let timed = tokio::time::timeout(
        limit,
        batch::IN_DOUBT.scope(in_doubt.clone(), next.run(req)),
    );
    let answer = timed.await;
    match answer {
        Ok(response) => response,
        Err(_) if in_doubt.load(Ordering::SeqCst) => ApiError::OutcomeUnknown.into_response(),
        Err(_) => {
            ApiError::Unavailable("the request took too long; nothing was done").into_response()
        }
    }
}

/// Any error response not already problem+json (one of axum's own
/// rejections, say) becomes one, keeping its status.
async fn problem_for_bare_errors(response: Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let error = match status {
        StatusCode::BAD_REQUEST => ApiError::BadRequest("the request is malformed".into()),
        StatusCode::NOT_FOUND => ApiError::NotFound("route"),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ApiError::UnsupportedMediaType("send application/json".into())
        }
        s if s.is_client_error() => ApiError::BadRequest("the request is malformed".into()),
        _ => ApiError::Internal,
    };
    let mut problem = error.into_response();
    if problem.status() != status && status.is_client_error() {
        *problem.status_mut() = status;
    }
    problem
}

async fn record_metrics(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let response = next.run(req).await;
    state.metrics.observe(
        method.as_str(),
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    // The request's span (`router`): named by its route, not its path,
    // which holds ids.
    if crate::telemetry::exporting_traces() {
        let span = tracing::Span::current();
        crate::telemetry::rename(&span, format!("{method} {route}"));
        span.record("http.route", route.as_str());
        span.record("http.response.status_code", response.status().as_u16());
    }
    response
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
