//! How a round's events go out. Up to 32 `SendMessageBatch` calls are in
//! flight at once, so SQS's round trip does not cap the rate. Order is kept
//! per order: a round's events go out in waves, the first event of each
//! order in the first wave, its next event in the next wave once the first
//! was accepted, and so on. An order stops at its first event refused or
//! failed in the round; refused ones are marked to park.

use std::collections::{HashMap, HashSet};

use futures_util::stream::{self, StreamExt};
use uuid::Uuid;

use crate::db::order_events::OutboxEvent;
use crate::queue::{message_size, Outgoing, Queue, Sent, MAX_BATCH_BYTES, PER_CALL};

/// `SendMessageBatch` calls in flight at once: with SQS 20 ms away, 32
/// calls of 10 keep a round of 1,000 events near 60 ms.
const IN_FLIGHT: usize = 32;

pub(super) fn outgoing(e: &OutboxEvent) -> Outgoing<'_> {
    Outgoing {
        id: e.id.to_string(),
        body: &e.payload,
        event_type: &e.event_type,
        customer_id: e.customer_id.to_string(),
        group: e.order_id.to_string(),
        traceparent: e.traceparent.as_deref(),
    }
}

/// What became of a round's events.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Published {
    /// The highest feed position at or below which every event went out or
    /// was parked; `None` if the first did neither.
    pub(super) through: Option<u64>,
    pub(super) sent: usize,
    /// Events to park (indexes into the round's events), with the reason.
    pub(super) parked: Vec<(usize, String)>,
    pub(super) failure: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Fate {
    Untried,
    Sent,
    Parked,
    Failed,
}

/// Publishes `events` (in feed order) in waves, several batches at once.
pub(super) async fn publish(
    queue: &Queue,
    events: &[OutboxEvent],
    parked_orders: &mut HashSet<Uuid>,
) -> Published {
    let mut fates = vec![Fate::Untried; events.len()];
    let mut published = Published::default();
    for wave in waves(events) {
        // Orders parked or failed in an earlier wave (or round) stop here.
        let mut sendable = vec![];
        for i in wave {
            let order = events[i].order_id;
            if parked_orders.contains(&order) {
                fates[i] = Fate::Parked;
                published.parked.push((
                    i,
                    "held behind an earlier parked event of the same order".into(),
                ));
            } else if !failed_before(events, &fates, i) {
                sendable.push(i);
            }
        }
        let results: Vec<(Vec<usize>, Vec<Sent>)> = stream::iter(batches(events, &sendable))
            .map(|batch| async move {
                let messages: Vec<Outgoing<'_>> =
                    batch.iter().map(|&i| outgoing(&events[i])).collect();
                let sent = queue.publish(&messages).await;
                (batch, sent)
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        for (batch, sent) in results {
            for (i, sent) in batch.into_iter().zip(sent) {
                match sent {
                    Sent::Accepted => {
                        fates[i] = Fate::Sent;
                        published.sent += 1;
                    }
                    Sent::Refused(reason) => {
                        tracing::warn!(event_id = %events[i].id, %reason, "SQS refused an event for good; parked");
                        fates[i] = Fate::Parked;
                        parked_orders.insert(events[i].order_id);
                        published.parked.push((i, reason));
                    }
                    Sent::Failed(reason) => {
                        fates[i] = Fate::Failed;
                        published.failure.get_or_insert(reason);
                    }
                }
            }
        }
    }
    published.through = events
        .iter()
        .zip(&fates)
        .take_while(|(_, fate)| matches!(fate, Fate::Sent | Fate::Parked))
        .last()
        .map(|(e, _)| e.feed_position);
    published
}

/// Did an earlier event of this event's order fail in this round?
fn failed_before(events: &[OutboxEvent], fates: &[Fate], i: usize) -> bool {
    events[..i]
        .iter()
        .zip(fates)
        .any(|(e, fate)| e.order_id == events[i].order_id && *fate != Fate::Sent)
}

/// Splits events (in feed order) into waves: wave n holds the (n+1)th event
/// of each order, so an order's events go out one wave after another.
fn waves(events: &[OutboxEvent]) -> Vec<Vec<usize>> {
    let mut seen: HashMap<Uuid, usize> = HashMap::new();
    let mut waves: Vec<Vec<usize>> = vec![];
    for (i, event) in events.iter().enumerate() {
        let n = seen.entry(event.order_id).or_insert(0);
        if waves.len() <= *n {
            waves.push(vec![]);
        }
        waves[*n].push(i);
        *n += 1;
    }
    waves
}

/// Batches of at most `PER_CALL` messages and `MAX_BATCH_BYTES` together.
fn batches(events: &[OutboxEvent], indexes: &[usize]) -> Vec<Vec<usize>> {
    let mut batches: Vec<Vec<usize>> = vec![];
    let mut current: Vec<usize> = vec![];
    let mut bytes = 0;
    for &i in indexes {
        let size = message_size(&outgoing(&events[i]));
        if current.len() == PER_CALL || (!current.is_empty() && bytes + size > MAX_BATCH_BYTES) {
            batches.push(std::mem::take(&mut current));
            bytes = 0;
        }
        current.push(i);
        bytes += size;
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(position: u64, order: Uuid) -> OutboxEvent {
        OutboxEvent {
            feed_position: position,
            id: Uuid::now_v7(),
            order_id: order,
            customer_id: Uuid::nil(),
            event_type: "order.created".into(),
            payload: "{}".into(),
            traceparent: None,
        }
    }

    #[test]
    fn waves_send_each_orders_events_one_after_another() {
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let events = vec![
            event(1, a),
            event(2, b),
            event(3, a),
            event(4, a),
            event(5, c),
        ];
        assert_eq!(waves(&events), vec![vec![0, 1, 4], vec![2], vec![3]]);
    }

    #[test]
    fn batches_hold_at_most_ten_and_fit_sqs_size_limit() {
        let mut events: Vec<OutboxEvent> = (1..=25).map(|p| event(p, Uuid::now_v7())).collect();
        let all: Vec<usize> = (0..25).collect();
        let sizes: Vec<usize> = batches(&events, &all).iter().map(Vec::len).collect();
        assert_eq!(sizes, [10, 10, 5]);
        for e in &mut events[..3] {
            e.payload = "x".repeat(100 * 1024);
        }
        let split = batches(&events, &all[..4]);
        assert_eq!(split, vec![vec![0, 1], vec![2, 3]]);
    }

    #[test]
    fn an_order_stops_at_its_first_unsent_event() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let events = vec![event(1, a), event(2, b), event(3, a)];
        let fates = vec![Fate::Failed, Fate::Sent, Fate::Untried];
        assert!(failed_before(&events, &fates, 2));
        assert!(!failed_before(&events, &fates, 1));
    }
}
