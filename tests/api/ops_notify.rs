//! Operator notifications (SPEC §15) with a Slack-shaped receiver: an
//! endpoint disabled, an event parked, an outbox that stopped draining;
//! at most one message per subject per 10 minutes across instances; a
//! notification URL that hangs delays nothing.

use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use mechanica::ops_notify::OpsNotifyConfig;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

fn notify(url: String, outbox_age: Duration) -> OpsNotifyConfig {
    OpsNotifyConfig {
        url: Some(url),
        outbox_age,
        allow_private_networks: true,
    }
}

/// The texts Slack got, once `count` arrived (or the deadline passed).
async fn messages(slack: &Receiver, count: usize, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let texts: Vec<String> = slack
            .hits_on("/slack")
            .iter()
            .map(|h| h.json()["text"].as_str().unwrap_or_default().to_string())
            .collect();
        if texts.len() >= count || Instant::now() > deadline {
            return texts;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_endpoint_is_told_once_per_endpoint_per_ten_minutes_across_workers() {
    let slack = Receiver::start(|_, _, _| (200, Duration::ZERO)).await;
    let receiver = Receiver::start(|_, _, _| (410, Duration::ZERO)).await;
    let mut system = System::without_worker().await;
    let mut config = worker_config(&system.db_name, &system.queue.url);
    config.ops_notify = notify(format!("{}/slack", slack.base), Duration::from_secs(300));
    system.worker = Some(TestWorker::start(config.clone()).await);
    let second = TestWorker::start(config).await;
    let tenant = system.app.tenant("Gone").await;
    let (first, _) = system
        .endpoint(
            &tenant.token,
            &format!("{}/a?token=s3cret", receiver.base),
            None,
        )
        .await;
    let (other, _) = system
        .endpoint(&tenant.token, &format!("{}/b", receiver.base), None)
        .await;

    system.app.new_order(&tenant).await;
    let texts = messages(&slack, 2, Duration::from_secs(15)).await;
    assert_eq!(texts.len(), 2, "{texts:?}");
    for (endpoint, text) in [(&first, &texts), (&other, &texts)] {
        let about: Vec<&String> = text
            .iter()
            .filter(|t| t.contains(endpoint.as_str()))
            .collect();
        assert_eq!(about.len(), 1, "{endpoint}: {texts:?}");
        assert!(about[0].contains("410 Gone"), "{}", about[0]);
    }
    assert!(texts.iter().all(|t| !t.contains("s3cret")), "{texts:?}");

    // Enabled again and disabled again within the window: no new message,
    // however many orders or workers.
    for endpoint in [&first, &other] {
        let enabled = system
            .app
            .patch(
                &format!("/v1/webhooks/{endpoint}"),
                &tenant.token,
                &json!({"enabled": true}),
            )
            .await;
        assert_eq!(enabled.status(), StatusCode::OK);
    }
    for _ in 0..3 {
        system.app.new_order(&tenant).await;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let shown: Value = system
            .app
            .get(&format!("/v1/webhooks/{first}"), &tenant.token)
            .await
            .json()
            .await
            .unwrap();
        if shown["enabled"] == false {
            break;
        }
        assert!(Instant::now() < deadline, "not disabled again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(slack.hits_on("/slack").len(), 2);
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_url_that_hangs_delays_no_webhook() {
    let slack = Receiver::start(|_, _, _| (200, Duration::from_secs(30))).await;
    let receiver = Receiver::start(|path, _, _| match path {
        "/gone" => (410, Duration::ZERO),
        _ => (200, Duration::ZERO),
    })
    .await;
    let mut system = System::without_worker().await;
    let mut config = worker_config(&system.db_name, &system.queue.url);
    config.ops_notify = notify(format!("{}/slack", slack.base), Duration::from_secs(300));
    system.worker = Some(TestWorker::start(config).await);
    let tenant = system.app.tenant("Hanging").await;
    system
        .endpoint(&tenant.token, &format!("{}/gone", receiver.base), None)
        .await;
    let others = system.app.tenant("Others").await;
    system
        .endpoint(&others.token, &format!("{}/ok", receiver.base), None)
        .await;
    system.app.new_order(&tenant).await;
    // The disabled endpoint's notification is now hanging at Slack.
    messages(&slack, 1, Duration::from_secs(10)).await;
    let started = Instant::now();
    for _ in 0..20 {
        system.app.new_order(&others).await;
    }
    receiver
        .wait_for_successes("/ok", 20, Duration::from_secs(5))
        .await;
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_that_stops_draining_and_a_parked_event_tell_the_operator() {
    let slack = Receiver::start(|_, _, _| (200, Duration::ZERO)).await;
    // Nothing listens on the queue's port: every publish fails.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let db_name = fresh_db_name();
    let mut config = test_config(format!("{}/{db_name}", server_url()));
    config.sqs_queue_url = Some(format!("http://127.0.0.1:{dead}/000000000000/nowhere"));
    config.aws_endpoint_url = Some(format!("http://127.0.0.1:{dead}"));
    config.ops_notify = notify(format!("{}/slack", slack.base), Duration::from_secs(1));
    let app = TestApp::spawn_with(config, db_name).await;
    let tenant = app.tenant("Stuck").await;
    app.new_order(&tenant).await;
    let texts = messages(&slack, 1, Duration::from_secs(15)).await;
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert!(
        texts[0].contains("oldest unpublished event"),
        "{}",
        texts[0]
    );
    // Still stuck, still checked every half second: no second message.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(slack.hits_on("/slack").len(), 1);

    // A parked event: an order too large for a 4 KiB queue.
    let queue = TestQueue::create_on(
        &sqs_endpoint(),
        false,
        &[(QueueAttributeName::MaximumMessageSize, "4096".into())],
    )
    .await;
    let db_name = fresh_db_name();
    let mut config = test_config(format!("{}/{db_name}", server_url()));
    config.sqs_queue_url = Some(queue.url.clone());
    config.aws_endpoint_url = Some(sqs_endpoint());
    config.ops_notify = notify(format!("{}/parked", slack.base), Duration::from_secs(300));
    let app = TestApp::spawn_with(config, db_name).await;
    let tenant = app.tenant("Large").await;
    let mut big = order_body();
    big["notes"] = json!("x".repeat(2000));
    big["parcels"] = json!(vec![big["parcels"][0].clone(); 60]);
    let created = app.create_order(&tenant.token, &big).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let order: Value = created.json().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while slack.hits_on("/parked").is_empty() {
        assert!(
            Instant::now() < deadline,
            "no notification of the parked event"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let text = slack.hits_on("/parked")[0].json()["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(text.contains("parked"), "{text}");
    assert!(text.contains(order["id"].as_str().unwrap()), "{text}");
    assert!(text.contains("/v1/admin/outbox/parked"), "{text}");
}
