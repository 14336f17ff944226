//! The load: order changes at a steady rate, open loop, spread over the
//! customers by weight, each to either API (the other if it refuses the
//! connection), without Idempotency-Key, as a plain client would send them.
//! Every answer is tallied; every change answered 2xx is remembered, so
//! the checker can prove it was kept.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::system::ADMIN;

/// What follows an order's creation, in turn.
const STEPS: [&str; 6] = [
    "confirmed",
    "picked_up",
    "tracking",
    "in_transit",
    "out_for_delivery",
    "delivered",
];

/// A change the API answered 2xx: its order, the event's sequence, when.
#[derive(Clone, Debug)]
pub struct Answered {
    pub order_id: String,
    pub sequence: u64,
    pub at: Instant,
}

pub struct Customer {
    pub token: String,
    /// Share of the changes.
    pub weight: f64,
    /// Orders ready for their next step (0 = the first after creation).
    ready: Mutex<VecDeque<(String, usize)>>,
}

impl Customer {
    pub fn new(token: String, weight: f64) -> Customer {
        Customer {
            token,
            weight,
            ready: Mutex::default(),
        }
    }
}

#[derive(Default)]
pub struct Tally {
    pub answered: Vec<Answered>,
    /// Answers other than 2xx, by status and problem type.
    pub refused: BTreeMap<String, usize>,
    pub sent: usize,
}

pub struct Load {
    pub apis: Vec<String>,
    pub customers: Vec<Customer>,
    pub tally: Mutex<Tally>,
    client: reqwest::Client,
}

fn order_body(n: u64) -> Value {
    json!({
        "reference": format!("chaos-{n}"),
        "pickup": { "name": "A", "line1": "1 Road", "city": "Rotterdam", "postal_code": "3011", "country": "NL" },
        "delivery": { "name": "B", "line1": "2 Road", "city": "Berlin", "postal_code": "10115", "country": "DE" },
        "parcels": [{ "weight_grams": 100, "length_mm": 10, "width_mm": 10, "height_mm": 10 }]
    })
}

impl Load {
    pub fn new(apis: Vec<String>, customers: Vec<Customer>) -> Load {
        Load {
            apis,
            customers,
            tally: Mutex::default(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .pool_max_idle_per_host(64)
                .build()
                .unwrap(),
        }
    }

    /// `rate` changes a second until `until`.
    pub async fn run(self: Arc<Self>, rate: u32, until: tokio::time::Instant) {
        let start = tokio::time::Instant::now();
        let interval = Duration::from_secs(1) / rate;
        let total: f64 = self.customers.iter().map(|c| c.weight).sum();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0u64.. {
            let at = start + interval * i as u32;
            if at >= until {
                break;
            }
            tokio::time::sleep_until(at).await;
            let mut pick = rand::random::<f64>() * total;
            let customer = self
                .customers
                .iter()
                .position(|c| {
                    pick -= c.weight;
                    pick < 0.0
                })
                .unwrap_or(0);
            let next = self.customers[customer].ready.lock().unwrap().pop_front();
            let load = self.clone();
            tasks.spawn(async move { load.change(customer, next, i).await });
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Creates an order, or takes `next` its next step.
    async fn change(&self, customer: usize, next: Option<(String, usize)>, n: u64) {
        let c = &self.customers[customer];
        let (path, token, body) = match &next {
            None => ("/v1/orders".to_string(), c.token.as_str(), order_body(n)),
            Some((order, step)) => match STEPS[*step] {
                "tracking" => (
                    format!("/v1/orders/{order}/tracking"),
                    ADMIN,
                    json!({ "location": format!("Depot {n}") }),
                ),
                status => (
                    format!("/v1/orders/{order}/status"),
                    ADMIN,
                    json!({ "status": status }),
                ),
            },
        };
        let answer = self.send(&path, token, &body).await;
        let mut tally = self.tally.lock().unwrap();
        tally.sent += 1;
        let step_after = match answer {
            Ok(order) => {
                let id = order["id"].as_str().unwrap_or_default().to_string();
                tally.answered.push(Answered {
                    order_id: id.clone(),
                    sequence: order["version"].as_u64().unwrap_or_default(),
                    at: Instant::now(),
                });
                Some((id, next.as_ref().map_or(0, |(_, step)| step + 1)))
            }
            Err(what) => {
                // A 409 for a change that landed although its answer was
                // lost (outcome-unknown): the order has moved on.
                let landed = what.starts_with("409");
                *tally.refused.entry(what).or_default() += 1;
                match next {
                    Some((order, step)) if landed => Some((order, step + 1)),
                    Some((order, step)) => Some((order, step)),
                    None => None,
                }
            }
        };
        drop(tally);
        if let Some((order, step)) = step_after {
            if step < STEPS.len() {
                c.ready.lock().unwrap().push_back((order, step));
            }
        }
    }

    /// The answer's body on 2xx; else "status problem-type" (or the error).
    async fn send(&self, path: &str, token: &str, body: &Value) -> Result<Value, String> {
        let first = rand::random_range(0..self.apis.len());
        let mut last = String::new();
        for k in 0..self.apis.len() {
            let api = &self.apis[(first + k) % self.apis.len()];
            let sent = self
                .client
                .post(format!("{api}{path}"))
                .bearer_auth(token)
                .json(body)
                .send()
                .await;
            match sent {
                Err(e) if e.is_connect() => {
                    last = "connection refused".into();
                    continue;
                }
                Err(e) if e.is_timeout() => return Err("no answer in 15 s".into()),
                Err(_) => return Err("connection lost".into()),
                Ok(r) if r.status().is_success() => {
                    return r.json().await.map_err(|_| "2xx without a body".to_string())
                }
                Ok(r) => {
                    let status = r.status().as_u16();
                    let problem: Value = r.json().await.unwrap_or_default();
                    let kind = problem["type"]
                        .as_str()
                        .unwrap_or("")
                        .rsplit('/')
                        .next()
                        .unwrap_or("")
                        .to_string();
                    return Err(format!("{status} {kind}"));
                }
            }
        }
        Err(last)
    }
}
