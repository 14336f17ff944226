//! A healthy system logs no warnings: an operator pages on them, so one
//! logged on the ordinary path hides the ones that matter (a soak once
//! found "database unavailable" logged after every successful status
//! change). A test binary of its own, since it installs the process's log
//! subscriber and counts what the API and the worker log while orders are
//! created, moved and delivered.

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

/// Keeps every event of ours at WARN or above, as "target: fields". (Not
/// the libraries': sqlx warns of any statement slower than a second, which
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
        let ours = event.metadata().target().starts_with("mechanica");
        if ours && *event.metadata().level() <= Level::WARN {
            let mut text = Text(event.metadata().target().to_string() + ":");
            event.record(&mut text);
            self.0.lock().unwrap().push(text.0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_created_moved_and_delivered_log_no_warning() {
    let loud = Loud::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(loud.clone()))
        .expect("the only subscriber of this test binary");

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
