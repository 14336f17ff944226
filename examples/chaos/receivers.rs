//! The four receivers: real HTTP servers on loopback that record every
//! request (when, which event, what they answered, whether its signature
//! verified) and answer as their kind does.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;

use crate::stamped::{Arrival, StampedListener};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Answers 204 at once.
    Fast,
    /// Answers 204 after 0.5–2 s.
    Slow,
    /// 10 s of 503, then 10 s of 204, over and over.
    Flapping,
    /// 500 for 15 s out of every 45 s.
    Failing,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Fast, Kind::Slow, Kind::Flapping, Kind::Failing];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Fast => "fast",
            Kind::Slow => "slow",
            Kind::Flapping => "flapping",
            Kind::Failing => "failing",
        }
    }

    /// The answer at `elapsed` since the run started, while misbehaving.
    fn answer(self, elapsed: Duration) -> (StatusCode, Duration) {
        let s = elapsed.as_secs();
        match self {
            Kind::Fast => (StatusCode::NO_CONTENT, Duration::ZERO),
            Kind::Slow => (
                StatusCode::NO_CONTENT,
                Duration::from_millis(rand::random_range(500..2000)),
            ),
            Kind::Flapping if (s / 10) % 2 == 0 => {
                (StatusCode::SERVICE_UNAVAILABLE, Duration::ZERO)
            }
            Kind::Failing if s % 45 >= 30 => (StatusCode::INTERNAL_SERVER_ERROR, Duration::ZERO),
            Kind::Flapping | Kind::Failing => (StatusCode::NO_CONTENT, Duration::ZERO),
        }
    }
}

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
pub struct Hit {
    /// When it arrived: the kernel's stamp of its bytes.
    pub at: Instant,
    /// How long after that the receiver's handler got to it.
    pub lag: Duration,
    pub webhook_id: String,
    pub order_id: Option<String>,
    pub sequence: Option<u64>,
    pub status: u16,
    pub signature_ok: bool,
}

impl Hit {
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

pub struct Receiver {
    pub kind: Kind,
    pub url: String,
    /// The endpoint's signing secret, once it is registered.
    pub secret: Arc<OnceLock<String>>,
    hits: Arc<Mutex<Vec<Hit>>>,
    /// Once set, the receiver answers 204 at once: the run is draining.
    pub calm: Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Clone)]
struct Shared {
    kind: Kind,
    start: Instant,
    secret: Arc<OnceLock<String>>,
    hits: Arc<Mutex<Vec<Hit>>>,
    calm: Arc<std::sync::atomic::AtomicBool>,
}

async fn receive(
    State(s): State<Shared>,
    ConnectInfo(arrival): ConnectInfo<Arrival>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let handled = Instant::now();
    let at = arrival.latest().unwrap_or(handled).min(handled);
    let signature_ok = s.secret.get().is_some_and(|secret| {
        standardwebhooks::Webhook::new(secret)
            .and_then(|w| w.verify(&body, &headers))
            .is_ok()
    });
    let event: Value = serde_json::from_slice(&body).unwrap_or_default();
    let (status, delay) = if s.calm.load(std::sync::atomic::Ordering::Relaxed) {
        (StatusCode::NO_CONTENT, Duration::ZERO)
    } else {
        s.kind.answer(at - s.start)
    };
    s.hits.lock().unwrap().push(Hit {
        at,
        lag: handled - at,
        webhook_id: headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        order_id: event["data"]["order_id"].as_str().map(str::to_string),
        sequence: event["data"]["sequence"].as_u64(),
        status: status.as_u16(),
        signature_ok,
    });
    tokio::time::sleep(delay).await;
    status
}

impl Receiver {
    pub async fn start(kind: Kind, start: Instant) -> Receiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!(
            "http://127.0.0.1:{}/{}",
            listener.local_addr().unwrap().port(),
            kind.name()
        );
        let shared = Shared {
            kind,
            start,
            secret: Arc::default(),
            hits: Arc::default(),
            calm: Arc::default(),
        };
        let receiver = Receiver {
            kind,
            url,
            secret: shared.secret.clone(),
            hits: shared.hits.clone(),
            calm: shared.calm.clone(),
        };
        let app = axum::Router::new().fallback(receive).with_state(shared);
        // A thread and runtime of its own, as a partner's server would be:
        // its answers are not held up behind the load generator's tasks.
        // Arrival times come from the kernel (`stamped`), not this thread.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = app.into_make_service_with_connect_info::<Arrival>();
                axum::serve(StampedListener(listener), app).await
            })
        });
        receiver
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
}
