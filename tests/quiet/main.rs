//! A healthy system logs no warnings: an operator pages on them, so one
//! logged on the ordinary path hides the ones that matter (a soak once
//! found "database unavailable" logged after every successful status
//! change). A test binary of its own, since it installs the process's log
//! subscriber and counts what the API and the worker log while orders are
//! created, moved and delivered; and what an outage's 503s log.

#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use helpers::*;
use reqwest::StatusCode;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// Keeps every event of ours (and tower-http's, which logs answers) at WARN
/// or above, as "LEVEL target: fields". (Not the other libraries': sqlx warns of any statement slower than a second, which
/// a loaded machine may produce.)
#[derive(Clone, Default)]
struct Loud(Arc<Mutex<Vec<String>>>);

struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={value:?}", field.name()));
    }
}

impl<S: Subscriber> Layer<S> for Loud {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let target = event.metadata().target();
        let ours = target.starts_with("mechanica") || target.starts_with("tower_http");
        if ours && *event.metadata().level() <= Level::WARN {
            let mut text = Text(format!("{} {target}:", event.metadata().level()));
            event.record(&mut text);
            self.0.lock().unwrap().push(text.0);
        }
    }
}

/// The process's subscriber, installed once; the tests take turns (each
/// reads everything logged while it runs).
async fn loud() -> (Loud, tokio::sync::MutexGuard<'static, ()>) {
    static LOUD: std::sync::OnceLock<Loud> = std::sync::OnceLock::new();
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let loud = LOUD
        .get_or_init(|| {
            let loud = Loud::default();
            tracing::subscriber::set_global_default(
                tracing_subscriber::registry().with(loud.clone()),
            )
            .expect("the only subscriber of this test binary");
            loud
        })
        .clone();
    let turn = TURN.lock().await;
    loud.0.lock().unwrap().clear();
    (loud, turn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_created_moved_and_delivered_log_no_warning() {
    let (loud, _turn) = loud().await;

    let system = System::start().await;
    let receiver = Receiver::start(|_, _, _| (200, Duration::ZERO)).await;
    let tenant = system.app.tenant("Quiet").await;
    system
        .endpoint(&tenant.token, &format!("{}/hooks", receiver.base), None)
        .await;
    const ORDERS: usize = 20;
    let mut orders = vec![];
    for _ in 0..ORDERS {
        orders.push(system.app.new_order(&tenant).await);
    }
    // Concurrent changes (the operator moves orders), written in groups.
    let changes = orders.iter().map(|order| {
        let app = &system.app;
        async move {
            let id = order["id"].as_str().unwrap();
            for status in ["confirmed", "picked_up"] {
                let answer = app.change_status(ADMIN, id, status).await;
                assert_eq!(answer.status(), StatusCode::OK);
            }
        }
    });
    futures::future::join_all(changes).await;
    let listed = system.app.get("/v1/orders?limit=5", &tenant.token).await;
    assert_eq!(listed.status(), StatusCode::OK);
    let feed = system.app.get("/v1/events?limit=5", &tenant.token).await;
    assert_eq!(feed.status(), StatusCode::OK);

    receiver
        .wait_for_successes("/hooks", ORDERS * 3, Duration::from_secs(30))
        .await;
    // Past a settle group, a relay round and a dispatcher pass.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let logged = loud.0.lock().unwrap().clone();
    assert!(
        logged.is_empty(),
        "warnings on the ordinary path: {logged:#?}"
    );
}

/// A database outage answers 503 ("retry"), logged as a warning with its
/// cause, never as an error: tower-http logged every 5xx as an error, so
/// each request during a database blip paged whoever watches errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outages_503s_are_warnings_not_errors() {
    let (loud, _turn) = loud().await;
    let db_name = format!("mechanica_test_{}", uuid::Uuid::new_v4().simple());
    let direct = TestApp::spawn_with(
        test_config(format!("{}/{db_name}", server_url())),
        db_name.clone(),
    )
    .await;
    let tenant = direct.tenant("Outage").await;
    let mut tunnel = Tunnel::open(0, "127.0.0.1:3306").await;
    let mut config = test_config(format!("mysql://root@127.0.0.1:{}/{db_name}", tunnel.port));
    config.auto_migrate = false;
    let app = TestApp::spawn_with(config, format!("{db_name}_unused")).await;
    tunnel.cut();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..3 {
        let answer = app.get("/v1/orders", &tenant.token).await;
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    let logged = loud.0.lock().unwrap().clone();
    assert!(
        logged
            .iter()
            .any(|l| l.starts_with("WARN") && l.contains("database unavailable")),
        "the cause is logged: {logged:#?}"
    );
    assert!(
        !logged.iter().any(|l| l.starts_with("ERROR")),
        "a 503 is not an error: {logged:#?}"
    );
}
