//! The checker: reads what every receiver got and what the database holds,
//! and proves the promises of a chaos run: nothing lost (every committed
//! event reached its endpoint, or its delivery is visibly failed), every
//! change answered 2xx kept, per-(order, endpoint) order kept, the rate
//! limit held, every signature valid. It counts duplicates and the time to
//! recover after each fault.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use sqlx::MySqlPool;
use uuid::Uuid;

use crate::faults::Record;
use crate::load::Answered;
use crate::receivers::{Hit, Kind, Receiver};

/// A receiver with the endpoint it serves.
pub struct Endpoint {
    pub receiver: Receiver,
    pub id: Uuid,
    pub customer_id: Uuid,
    pub rate_limit: Option<u32>,
}

/// What became of the events one endpoint should get.
#[derive(Default, Debug)]
pub struct Fate {
    pub events: usize,
    pub delivered: usize,
    /// Visibly failed: the delivery row says so, and the log shows it.
    pub failed: usize,
    /// Later events of an order taken past one that failed for good: what
    /// a check blind to the delivery rows would call order broken.
    pub passed_failed: usize,
    /// Still pending (a retry due later): late, not lost.
    pub late: usize,
    /// No delivery, or one recorded delivered that the receiver never took.
    pub lost: Vec<String>,
    pub duplicates: usize,
    /// An event taken before an earlier one of its order was.
    pub out_of_order: Vec<String>,
    pub bad_signatures: usize,
    pub busiest_second: usize,
    /// When that second began.
    pub busiest_at: Option<Instant>,
    /// The gaps between the requests of that second, in ms.
    pub busiest_gaps: Vec<u128>,
    /// The busiest second by the receiver's own clock (when its handler
    /// ran), and the most its handler ran after the kernel's arrival: what
    /// a receiver's clock alone would have made of the rate limit.
    pub busiest_handled: usize,
    pub handler_lag_max: Duration,
}

pub struct Report {
    pub fates: Vec<(Kind, Option<u32>, Fate)>,
    /// Changes answered 2xx with no event in the database.
    pub answers_lost: usize,
    pub committed: usize,
}

impl Report {
    pub fn unsettled(&self) -> usize {
        self.fates
            .iter()
            .map(|(_, _, f)| f.late + f.lost.len())
            .sum()
    }

    pub fn holds(&self) -> bool {
        self.answers_lost == 0
            && self.fates.iter().all(|(_, limit, f)| {
                f.lost.is_empty()
                    && f.late == 0
                    && f.out_of_order.is_empty()
                    && f.bad_signatures == 0
                    && limit.is_none_or(|l| f.busiest_second <= l as usize)
            })
    }
}

/// The most requests in any one-second window, its start, and the gaps
/// between them in ms.
pub fn busiest_second(at: &[Instant]) -> (usize, Option<Instant>, Vec<u128>) {
    let mut at = at.to_vec();
    at.sort();
    let mut busiest = (0, None, vec![]);
    let mut first = 0;
    for last in 0..at.len() {
        while at[last] - at[first] >= Duration::from_secs(1) {
            first += 1;
        }
        if last - first + 1 > busiest.0 {
            let gaps = at[first..=last]
                .windows(2)
                .map(|w| (w[1] - w[0]).as_millis())
                .collect();
            busiest = (last - first + 1, Some(at[first]), gaps);
        }
    }
    busiest
}

type EventRow = (Uuid, Uuid, Uuid, u32);

pub async fn check(
    pool: &MySqlPool,
    endpoints: &[Endpoint],
    answered: &[Answered],
) -> sqlx::Result<Report> {
    let events: Vec<EventRow> =
        sqlx::query_as("SELECT id, order_id, customer_id, sequence FROM order_events")
            .fetch_all(pool)
            .await?;
    let statuses: HashMap<(Uuid, Uuid), String> = sqlx::query_as::<_, (Uuid, Uuid, String)>(
        "SELECT event_id, endpoint_id, status FROM webhook_deliveries WHERE order_id IS NOT NULL",
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|(event, endpoint, status)| ((event, endpoint), status))
    .collect();
    let kept: HashSet<(String, u64)> = events
        .iter()
        .map(|(_, order, _, seq)| (order.to_string(), u64::from(*seq)))
        .collect();
    let answers_lost = answered
        .iter()
        .filter(|a| !kept.contains(&(a.order_id.clone(), a.sequence)))
        .count();

    let mut fates = vec![];
    for endpoint in endpoints {
        let hits = endpoint.receiver.hits();
        let mut fate = Fate {
            bad_signatures: hits.iter().filter(|h| !h.signature_ok).count(),
            ..Fate::default()
        };
        if endpoint.rate_limit.is_some() {
            (fate.busiest_second, fate.busiest_at, fate.busiest_gaps) =
                busiest_second(&hits.iter().map(|h| h.at).collect::<Vec<_>>());
            fate.busiest_handled =
                busiest_second(&hits.iter().map(|h| h.at + h.lag).collect::<Vec<_>>()).0;
            fate.handler_lag_max = hits.iter().map(|h| h.lag).max().unwrap_or_default();
        }
        // When each event was first taken (2xx), and how often.
        let mut taken: HashMap<&str, (Instant, usize)> = HashMap::new();
        for hit in hits.iter().filter(|h| h.accepted()) {
            let e = taken.entry(&hit.webhook_id).or_insert((hit.at, 0));
            e.0 = e.0.min(hit.at);
            e.1 += 1;
        }
        fate.duplicates = taken.values().map(|(_, n)| n - 1).sum();
        let mut orders: HashMap<Uuid, BTreeMap<u32, Uuid>> = HashMap::new();
        for (id, order, _, seq) in events.iter().filter(|e| e.2 == endpoint.customer_id) {
            orders.entry(*order).or_default().insert(*seq, *id);
            fate.events += 1;
            let status = statuses.get(&(*id, endpoint.id)).map(String::as_str);
            match (taken.contains_key(id.to_string().as_str()), status) {
                (true, _) => fate.delivered += 1,
                (false, Some("failed")) => fate.failed += 1,
                (false, Some("pending")) => fate.late += 1,
                (false, status) => fate.lost.push(format!(
                    "event {id} (order {order}, seq {seq}): delivery {status:?}"
                )),
            }
        }
        // Taken in order: an event is taken only after every earlier one of
        // its order was taken or visibly failed.
        for (order, seqs) in &orders {
            let mut before: Option<Instant> = None;
            for (seq, id) in seqs {
                let status = statuses.get(&(*id, endpoint.id)).map(String::as_str);
                match taken.get(id.to_string().as_str()) {
                    Some((at, _)) => {
                        if before.is_some_and(|b| b > *at) {
                            fate.out_of_order.push(format!(
                                "order {order} seq {seq} taken before an earlier one"
                            ));
                        }
                        before = Some(before.map_or(*at, |b| b.max(*at)));
                    }
                    None if status == Some("failed") => {
                        fate.passed_failed += seqs
                            .range(seq + 1..)
                            .filter(|(_, l)| taken.contains_key(l.to_string().as_str()))
                            .count();
                    }
                    None => {
                        // Nothing later may have been taken.
                        if let Some(later) = seqs
                            .range(seq + 1..)
                            .find(|(_, l)| taken.contains_key(l.to_string().as_str()))
                        {
                            fate.out_of_order.push(format!(
                                "order {order}: seq {} taken, seq {seq} never (delivery {status:?})",
                                later.0
                            ));
                        }
                    }
                }
            }
        }
        fates.push((endpoint.receiver.kind, endpoint.rate_limit, fate));
    }
    Ok(Report {
        fates,
        answers_lost,
        committed: events.len(),
    })
}

/// When the API answered each change, by (order, sequence).
type AnsweredAt<'a> = HashMap<(&'a str, u64), Instant>;

fn answered_at(answered: &[Answered]) -> AnsweredAt<'_> {
    answered
        .iter()
        .map(|a| ((a.order_id.as_str(), a.sequence), a.at))
        .collect()
}

/// When the change a hit carries was answered, if it was answered 2xx.
fn answer_of(at: &AnsweredAt<'_>, hit: &Hit) -> Option<Instant> {
    at.get(&(hit.order_id.as_deref()?, hit.sequence?)).copied()
}

/// For each fault: from its end until the fast receiver took an event
/// answered after that end.
pub fn recovery(faults: &[Record], fast: &[Hit], answered: &[Answered]) -> Vec<Option<Duration>> {
    let at = answered_at(answered);
    faults
        .iter()
        .map(|f| {
            fast.iter()
                .filter(|h| h.accepted() && answer_of(&at, h).is_some_and(|a| a >= f.ended))
                .map(|h| h.at.saturating_duration_since(f.ended))
                .min()
        })
        .collect()
}

/// From the API's answer to the first 2xx at the receiver, sorted.
pub fn latencies(hits: &[Hit], answered: &[Answered]) -> Vec<Duration> {
    let at = answered_at(answered);
    let mut first: HashMap<&str, Duration> = HashMap::new();
    for h in hits.iter().filter(|h| h.accepted()) {
        if let Some(a) = answer_of(&at, h) {
            let d = h.at.saturating_duration_since(a);
            first
                .entry(&h.webhook_id)
                .and_modify(|x| *x = (*x).min(d))
                .or_insert(d);
        }
    }
    let mut all: Vec<Duration> = first.into_values().collect();
    all.sort();
    all
}
