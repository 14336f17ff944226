//! Deploy requests carry schema only (SPEC §9): on PlanetScale the tables
//! arrive through a deploy request, their rows do not. Both binaries must
//! work on such a schema with `AUTO_MIGRATE=false`, making the rows they
//! rely on themselves, once, however many instances start together.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

/// A fresh database holding `source`'s schema and no rows, as
/// `mysqldump --no-data` makes it.
async fn schema_only_copy(source: &str) -> String {
    copy_database(source, &["--no-data", "--skip-add-drop-table"])
        .await
        .0
}

async fn count(app: &TestApp, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(&app.db)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_only_copy_works_with_auto_migrate_off() {
    let migrated = TestApp::spawn().await;
    let copy = schema_only_copy(&migrated.db_name).await;
    let queue = TestQueue::create(false).await;
    let config = || {
        let mut config = test_config(format!("{}/{copy}", server_url()));
        config.auto_migrate = false;
        config.sqs_queue_url = Some(queue.url.clone());
        config.aws_endpoint_url = Some(sqs_endpoint());
        config.webhook_allow_private_networks = true;
        config
    };
    // Two API instances start at once on the empty schema.
    let (a, b) = tokio::join!(
        TestApp::spawn_with(config(), copy.clone()),
        TestApp::spawn_with(config(), copy.clone())
    );
    assert_eq!(count(&a, "feed_clock").await, 1, "the clock row, made once");
    assert_eq!(
        count(&a, "server_secrets").await,
        1,
        "the cursor key, made once"
    );
    let _worker = TestWorker::start(worker_config(&copy, &queue.url)).await;

    let receiver = Receiver::start(|_, _, _| (200, Duration::ZERO)).await;
    let tenant = a.tenant("Deployed").await;
    let hook = a
        .post(
            "/v1/webhooks",
            &tenant.token,
            &serde_json::json!({ "url": format!("{}/hooks", receiver.base) }),
        )
        .await;
    assert_eq!(hook.status(), reqwest::StatusCode::CREATED);
    let order = a.new_order(&tenant).await;
    let id = order["id"].as_str().unwrap();
    let changed = b.change_status(ADMIN, id, "confirmed").await;
    assert_eq!(changed.status(), reqwest::StatusCode::OK);

    // The feed (from either instance) and delivery both work.
    let feed: Value = b
        .get("/v1/events", &tenant.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(feed["data"].as_array().unwrap().len(), 2, "{feed}");
    let hits = receiver
        .wait_for_successes("/hooks", 2, Duration::from_secs(20))
        .await;
    let mut sequences: Vec<u64> = hits
        .iter()
        .map(|h| h.json()["data"]["sequence"].as_u64().unwrap())
        .collect();
    sequences.sort();
    assert_eq!(sequences, [1, 2]);
    drop(migrated);
}
