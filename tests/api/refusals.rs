//! SQS refuses a message for what it holds in two shapes: as one entry of
//! the answer (fauxqs, AWS) or as the whole `SendMessageBatch` call (moto:
//! `InvalidParameterValue` for a batch holding one oversized message).
//! Either way only the culprit is refused, and the other events go out at
//! once. Each test runs on both implementations.

use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use mechanica::queue::{Outgoing, Queue, Sent};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

/// A queue that takes messages up to 4 KiB.
async fn small_queue(endpoint: &str) -> TestQueue {
    TestQueue::create_on(
        endpoint,
        false,
        &[(QueueAttributeName::MaximumMessageSize, "4096".into())],
    )
    .await
}

async fn a_batch_with_one_oversized_message_sends_the_others(endpoint: &str) {
    let queue = small_queue(endpoint).await;
    let client = Queue::connect(&queue.url, Some(endpoint)).await;
    let big = "x".repeat(6000);
    let bodies = [
        "{\"n\":1}",
        big.as_str(),
        "{\"n\":3}",
        "{\"n\":4}",
        "{\"n\":5}",
    ];
    let messages: Vec<Outgoing<'_>> = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| Outgoing {
            id: format!("m{i}"),
            body,
            event_type: "order.created",
            customer_id: "c".into(),
            group: format!("g{i}"),
            traceparent: None,
        })
        .collect();

    let sent = client.publish(&messages).await;

    assert_eq!(sent.len(), 5);
    for (i, fate) in sent.iter().enumerate() {
        match (i, fate) {
            (1, Sent::Refused(reason)) => {
                assert!(reason.contains("shorter than"), "{reason}")
            }
            (1, other) => panic!("the oversized message: {other:?}"),
            (_, Sent::Accepted) => {}
            (i, other) => panic!("message {i}: {other:?}"),
        }
    }
    let received = queue.receive(4, Duration::from_secs(10)).await;
    let mut got: Vec<u64> = received
        .iter()
        .map(|r| r.body["n"].as_u64().unwrap())
        .collect();
    got.sort();
    assert_eq!(got, [1, 3, 4, 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fauxqs_a_batch_with_one_oversized_message_sends_the_others() {
    a_batch_with_one_oversized_message_sends_the_others(&sqs_endpoint()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_a_batch_with_one_oversized_message_sends_the_others() {
    let moto = Moto::start().await;
    a_batch_with_one_oversized_message_sends_the_others(&moto.endpoint).await;
}

/// One customer's event SQS refuses is parked; another customer's event,
/// committed right after it, reaches its endpoint within 2 s. With moto the
/// relay used to take the whole-call refusal for an outage and back off,
/// holding every customer's events behind the one.
async fn one_refused_event_holds_back_no_other_customer(endpoint: &str) {
    let queue = small_queue(endpoint).await;
    let mut system = System::on_queue(queue).await;
    let mut config = worker_config(&system.db_name, &system.queue.url);
    config.aws_endpoint_url = Some(endpoint.to_string());
    system.worker = Some(TestWorker::start(config).await);
    let receiver = Receiver::start(|_, _, _| (200, Duration::ZERO)).await;
    let oversized = system.app.tenant("Oversized").await;
    let bystander = system.app.tenant("Bystander").await;
    for (tenant, path) in [(&oversized, "/oversized"), (&bystander, "/bystander")] {
        system
            .endpoint(&tenant.token, &format!("{}{path}", receiver.base), None)
            .await;
    }

    // 2,000 characters of notes and 60 parcels: over the queue's 4 KiB
    // whether it counts bytes (fauxqs) or characters (moto).
    let mut big = order_body();
    big["notes"] = json!("x".repeat(2000));
    let parcel = big["parcels"][0].clone();
    big["parcels"] = json!(vec![parcel; 60]);
    let (big, others) = tokio::join!(
        system.app.create_order(&oversized.token, &big),
        futures::future::join_all((0..4).map(|_| system.app.new_order(&bystander)))
    );
    let committed = Instant::now();
    assert_eq!(big.status(), StatusCode::CREATED);
    let big: Value = big.json().await.unwrap();

    receiver
        .wait_for_successes("/bystander", others.len(), Duration::from_secs(2))
        .await;
    let took = committed.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}");

    let deadline = Instant::now() + Duration::from_secs(10);
    let parked = loop {
        let page: Value = system
            .app
            .get("/v1/admin/outbox/parked", ADMIN)
            .await
            .json()
            .await
            .unwrap();
        let parked = page["data"].as_array().unwrap().clone();
        if !parked.is_empty() {
            break parked;
        }
        assert!(Instant::now() < deadline, "nothing was parked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0]["order_id"], big["id"]);
    assert!(receiver.hits_on("/oversized").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fauxqs_one_refused_event_holds_back_no_other_customer() {
    one_refused_event_holds_back_no_other_customer(&sqs_endpoint()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_one_refused_event_holds_back_no_other_customer() {
    let moto = Moto::start().await;
    one_refused_event_holds_back_no_other_customer(&moto.endpoint).await;
}
