//! Fan-out: committed events → one delivery row per subscribed endpoint,
//! a whole batch of events in one short transaction.
//!
//! Nothing in a message is trusted but the event id: the event is read from
//! the database, so a message for an event that never committed (forged, or
//! left by a rolled-back test) delivers nothing.
//!
//! Ordering per (order, endpoint): a delivery is written due only when no
//! earlier event of its order is still pending for that endpoint; otherwise
//! it is written waiting (no `next_attempt_at`) and the settle of the
//! earlier one releases it. Both sides lock the rows they look at
//! (`order_slots`), so neither can miss the other. SQS may hand an order's
//! events over out of order, so deliveries of earlier events this endpoint
//! should get and has not got yet are created here too, from the database.
//!
//! A due delivery can be leased to the caller in the same statement that
//! creates it, and attempted at once: no claim round trip on the hot path.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::MySqlPool;
use uuid::Uuid;

use super::recording::Recording;
use crate::db;
use crate::db::deliveries::{DeliveryRow, NewDelivery, OrderSlot, PENDING};
use crate::db::order_events::FanOutEvent;
use crate::db::webhook_endpoints::EndpointRow;
use crate::domain::OrderStatus;

/// A delivery to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// Index into the events given to `plan`.
    pub event: usize,
    pub endpoint_id: Uuid,
    /// No earlier event of its order is pending for this endpoint.
    pub due: bool,
}

/// Which deliveries a batch of events implies. `named` are the events the
/// messages name (indexes into `events`, which also holds every other event
/// of their orders); `slots` the existing deliveries of those orders to
/// these endpoints.
pub fn plan(
    events: &[FanOutEvent],
    named: &[usize],
    endpoints: &[EndpointRow],
    slots: &[OrderSlot],
) -> Vec<Planned> {
    let exists: HashSet<(Uuid, Uuid)> = slots.iter().map(|s| (s.event_id, s.endpoint_id)).collect();
    let mut by_order: HashMap<Uuid, Vec<usize>> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        by_order.entry(e.order_id).or_default().push(i);
    }
    // (endpoint, order) → the events to create, by sequence.
    let mut wanted: BTreeMap<(Uuid, Uuid), BTreeMap<u32, usize>> = BTreeMap::new();
    let status = |e: &FanOutEvent| e.status.as_deref().and_then(OrderStatus::parse);
    for &n in named {
        let event = &events[n];
        // An endpoint gets only events of its own time: a message delivered
        // late must not bring it an event committed before it existed.
        for endpoint in endpoints.iter().filter(|e| {
            e.customer_id == event.customer_id
                && e.receives(&event.event_type, status(event))
                && event.created_at >= e.created_at
        }) {
            let want = wanted.entry((endpoint.id, event.order_id)).or_default();
            if !exists.contains(&(event.id, endpoint.id)) {
                want.insert(event.sequence, n);
            }
            // Earlier events this endpoint should have got (its types, after
            // it existed) and has no delivery for: their messages are late.
            for &k in by_order.get(&event.order_id).into_iter().flatten() {
                let earlier = &events[k];
                if earlier.sequence < event.sequence
                    && endpoint.receives(&earlier.event_type, status(earlier))
                    && earlier.created_at >= endpoint.created_at
                    && !exists.contains(&(earlier.id, endpoint.id))
                {
                    want.insert(earlier.sequence, k);
                }
            }
        }
    }
    let mut planned = vec![];
    for ((endpoint_id, order_id), want) in wanted {
        let mut blocked_below = slots
            .iter()
            .filter(|s| {
                s.endpoint_id == endpoint_id && s.order_id == order_id && s.status == PENDING
            })
            .map(|s| s.sequence)
            .min();
        for (sequence, event) in want {
            let due = blocked_below.is_none_or(|b| b > sequence);
            planned.push(Planned {
                event,
                endpoint_id,
                due,
            });
            blocked_below = Some(blocked_below.map_or(sequence, |b| b.min(sequence)));
        }
    }
    planned
}

/// A delivery created leased to the caller, to attempt now.
pub struct Leased<P> {
    pub row: DeliveryRow,
    pub endpoint: EndpointRow,
    pub permit: P,
}

pub struct FanOut<P> {
    /// Ids that name no committed event.
    pub unknown: Vec<Uuid>,
    pub leased: Vec<Leased<P>>,
    /// Deliveries created (leased or not).
    pub created: usize,
}

/// The lease deliveries created to be attempted at once are created under.
pub struct Lease {
    pub until: DateTime<Utc>,
    /// Shared by the batch, so a caller that cannot tell whether the batch
    /// committed can give its leases back (`deliveries::release_lease`).
    pub id: Uuid,
}

/// Fans out the events `ids` name. `permit` is asked, for each due
/// delivery, whether it can be attempted now; those that get one are
/// created under `lease` and returned. The caller commits: the leased
/// deliveries can be attempted while the commit is on its way to disk, as
/// long as what comes of them is written only once it held.
pub async fn fan_out_uncommitted<P>(
    pool: &MySqlPool,
    ids: &[Uuid],
    now: DateTime<Utc>,
    lease: &Lease,
    mut permit: impl FnMut(&EndpointRow) -> Option<P>,
) -> sqlx::Result<(FanOut<P>, Recording)> {
    let read = db::order_events::for_fan_out(pool, ids).await?;
    let (mut events, endpoints) = (read.events, read.endpoints);
    events.sort_by_key(|e| (e.order_id, e.sequence));
    events.dedup_by_key(|e| e.id);
    let named: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| e.payload.is_some())
        .map(|(i, _)| i)
        .collect();
    let found: HashSet<Uuid> = named.iter().map(|&i| events[i].id).collect();
    let unknown: Vec<Uuid> = ids
        .iter()
        .filter(|id| !found.contains(id))
        .copied()
        .collect();
    let mut out = FanOut {
        unknown,
        leased: vec![],
        created: 0,
    };
    if endpoints.is_empty() || named.is_empty() {
        return Ok((out, Recording::new(None, vec![])));
    }
    let endpoint_ids: Vec<Uuid> = endpoints.iter().map(|e| e.id).collect();
    let mut orders: Vec<Uuid> = named.iter().map(|&i| events[i].order_id).collect();
    orders.sort();
    orders.dedup();

    let mut tx = pool.begin().await?;
    let slots = db::deliveries::order_slots(&mut *tx, &endpoint_ids, &orders).await?;
    let planned = plan(&events, &named, &endpoints, &slots);
    if planned.is_empty() {
        return Ok((out, Recording::new(Some(tx), vec![])));
    }
    // Earlier events pulled in by the plan need their payloads (rare).
    let missing: Vec<Uuid> = planned
        .iter()
        .filter(|p| events[p.event].payload.is_none())
        .map(|p| events[p.event].id)
        .collect();
    if !missing.is_empty() {
        let payloads: HashMap<Uuid, String> = db::order_events::payloads(&mut *tx, &missing)
            .await?
            .into_iter()
            .collect();
        for event in &mut events {
            if event.payload.is_none() {
                event.payload = payloads.get(&event.id).cloned();
            }
        }
    }
    let by_id: HashMap<Uuid, &EndpointRow> = endpoints.iter().map(|e| (e.id, e)).collect();
    // A span per event fanned out, in the trace of the request that made
    // it; its deliveries' attempts join it (the row keeps its context).
    let mut spans: HashMap<Uuid, (tracing::Span, Option<String>)> = HashMap::new();
    let traced = if crate::telemetry::exporting_traces() {
        planned.as_slice()
    } else {
        &[]
    };
    for p in traced {
        let event = &events[p.event];
        spans.entry(event.id).or_insert_with(|| {
            let span = tracing::info_span!(
                "fan-out",
                event_id = %event.id,
                event_type = %event.event_type,
                order_id = %event.order_id,
                sequence = event.sequence,
            );
            crate::telemetry::continue_trace(&span, event.traceparent.as_deref());
            let traceparent = crate::telemetry::traceparent_of(&span);
            (span, traceparent)
        });
    }
    let mut rows = Vec::with_capacity(planned.len());
    let mut permits = Vec::with_capacity(planned.len());
    for p in &planned {
        let event = &events[p.event];
        let endpoint = by_id[&p.endpoint_id];
        let mut row = DeliveryRow::pending(
            NewDelivery {
                endpoint_id: endpoint.id,
                customer_id: endpoint.customer_id,
                event_id: event.id,
                event_type: &event.event_type,
                order_id: Some(event.order_id),
                sequence: Some(event.sequence),
                payload: event.payload.as_deref().unwrap_or_default(),
                event_created_at: event.created_at,
            },
            now,
            p.due,
        );
        row.traceparent = spans.get(&event.id).and_then(|(_, t)| t.clone());
        let granted = if p.due { permit(endpoint) } else { None };
        if granted.is_some() {
            row.lease_until = Some(lease.until);
            row.lease_id = Some(lease.id);
        }
        rows.push(row);
        permits.push(granted);
    }
    let created = db::deliveries::insert_many(&mut *tx, &rows).await?;
    // Another worker may have created some of them meanwhile (a message
    // received twice): only rows created here are ours to attempt.
    let ours: HashSet<Uuid> = if created as usize == rows.len() {
        rows.iter().map(|r| r.id).collect()
    } else {
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        db::deliveries::existing_ids(&mut *tx, &ids)
            .await?
            .into_iter()
            .collect()
    };
    out.created = created as usize;
    for (row, permit) in rows.into_iter().zip(permits) {
        if let (Some(permit), true) = (permit, ours.contains(&row.id)) {
            let endpoint = by_id[&row.endpoint_id].clone();
            out.leased.push(Leased {
                row,
                endpoint,
                permit,
            });
        }
    }
    let leased = out.leased.iter().map(|l| l.row.clone()).collect();
    Ok((out, Recording::new(Some(tx), leased)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(order: Uuid, sequence: u32, kind: &str, age_s: i64, named: bool) -> FanOutEvent {
        FanOutEvent {
            id: Uuid::now_v7(),
            order_id: order,
            customer_id: Uuid::nil(),
            sequence,
            event_type: kind.into(),
            status: Some("in_transit".into()),
            created_at: crate::domain::time::now() - chrono::Duration::seconds(age_s),
            payload: named.then(|| "{}".into()),
            traceparent: None,
        }
    }

    fn endpoint(mask: u32, age_s: i64) -> EndpointRow {
        let created = crate::domain::time::now() - chrono::Duration::seconds(age_s);
        EndpointRow {
            id: Uuid::now_v7(),
            customer_id: Uuid::nil(),
            url: "https://example.com/".into(),
            description: None,
            event_mask: mask,
            notice_mask: 0,
            status_mask: None,
            enabled: true,
            disabled_reason: None,
            secret: "s".into(),
            previous_secret: None,
            previous_secret_expires_at: None,
            created_at: created,
            updated_at: created,
            failing_since: None,
            rate_limit_per_second: None,
            headers: None,
        }
    }

    fn slot(e: &FanOutEvent, endpoint: &EndpointRow, status: &str) -> OrderSlot {
        OrderSlot {
            id: Uuid::now_v7(),
            endpoint_id: endpoint.id,
            order_id: e.order_id,
            sequence: e.sequence,
            event_id: e.id,
            status: status.into(),
            waiting: false,
        }
    }

    const CREATED: &str = "order.created";
    const CHANGED: &str = "order.status_changed";
    const TRACKED: &str = "order.tracking_updated";

    /// The next event is due after a settled earlier one, and waits
    /// behind a pending one.
    #[test]
    fn the_next_event_waits_only_behind_a_pending_earlier_one() {
        for (earlier, due) in [("succeeded", true), ("failed", true), (PENDING, false)] {
            let order = Uuid::now_v7();
            let all = endpoint(u32::MAX, 100);
            let events = vec![
                event(order, 1, CREATED, 50, false),
                event(order, 2, CHANGED, 1, true),
            ];
            let slots = vec![slot(&events[0], &all, earlier)];
            let planned = plan(&events, &[1], std::slice::from_ref(&all), &slots);
            let want = Planned {
                event: 1,
                endpoint_id: all.id,
                due,
            };
            assert_eq!(planned, vec![want], "after a {earlier} one");
        }
    }

    #[test]
    fn a_late_earlier_event_is_created_first_and_the_named_one_waits() {
        let order = Uuid::now_v7();
        let all = endpoint(u32::MAX, 100);
        let events = vec![
            event(order, 1, CREATED, 50, false),
            event(order, 2, CHANGED, 40, false),
            event(order, 3, CHANGED, 1, true),
        ];
        let slots = vec![slot(&events[0], &all, "succeeded")];
        let planned = plan(&events, &[2], std::slice::from_ref(&all), &slots);
        assert_eq!(
            planned,
            vec![
                Planned {
                    event: 1,
                    endpoint_id: all.id,
                    due: true
                },
                Planned {
                    event: 2,
                    endpoint_id: all.id,
                    due: false
                },
            ]
        );
    }

    #[test]
    fn filters_and_endpoint_age_decide_who_gets_what() {
        let order = Uuid::now_v7();
        let changes_only = endpoint(2, 100);
        let young = endpoint(u32::MAX, 10);
        let events = vec![
            event(order, 1, CREATED, 50, false),
            event(order, 2, CHANGED, 1, true),
        ];
        let planned = plan(&events, &[1], &[changes_only.clone(), young.clone()], &[]);
        let mut got: Vec<(Uuid, usize, bool)> = planned
            .iter()
            .map(|p| (p.endpoint_id, p.event, p.due))
            .collect();
        got.sort();
        let mut want = vec![(changes_only.id, 1, true), (young.id, 1, true)];
        want.sort();
        assert_eq!(
            got, want,
            "created is filtered out, and is older than `young`"
        );
    }

    /// A tracking update waits behind the pending status change before it
    /// like any order event; a status change the endpoint's `statuses`
    /// filter leaves out is not created, and holds nothing up.
    #[test]
    fn every_order_type_keeps_its_place_and_the_status_filter_skips_unlisted_changes() {
        let order = Uuid::now_v7();
        let all = endpoint(u32::MAX, 100);
        let mut delivered_only = endpoint(u32::MAX, 100);
        delivered_only.status_mask = Some(OrderStatus::Delivered.bit());
        let events = vec![
            event(order, 1, CREATED, 50, false),
            event(order, 2, CHANGED, 40, true),
            event(order, 3, TRACKED, 30, true),
        ];
        let slots = vec![
            slot(&events[0], &all, "succeeded"),
            slot(&events[0], &delivered_only, "succeeded"),
        ];
        let mut planned = plan(
            &events,
            &[1, 2],
            &[all.clone(), delivered_only.clone()],
            &slots,
        );
        planned.sort_by_key(|p| (p.endpoint_id == delivered_only.id, p.event));
        let expected = vec![
            Planned {
                event: 1,
                endpoint_id: all.id,
                due: true,
            },
            Planned {
                event: 2,
                endpoint_id: all.id,
                due: false,
            },
            Planned {
                event: 2,
                endpoint_id: delivered_only.id,
                due: true,
            },
        ];
        assert_eq!(planned, expected);
    }

    #[test]
    fn an_event_from_before_the_endpoint_existed_is_not_planned_whichever_message_names_it() {
        let order = Uuid::now_v7();
        let young = endpoint(u32::MAX, 10);
        let events = vec![
            event(order, 1, CREATED, 50, true),
            event(order, 2, CHANGED, 40, true),
        ];
        for named in [vec![0], vec![1], vec![0, 1]] {
            let planned = plan(&events, &named, std::slice::from_ref(&young), &[]);
            assert!(planned.is_empty(), "named {named:?}: {planned:?}");
        }
    }

    #[test]
    fn a_redelivered_message_plans_nothing() {
        let order = Uuid::now_v7();
        let all = endpoint(u32::MAX, 100);
        let events = vec![event(order, 1, CREATED, 1, true)];
        let slots = vec![slot(&events[0], &all, PENDING)];
        assert!(plan(&events, &[0], &[all], &slots).is_empty());
    }

    #[test]
    fn another_customers_endpoint_gets_nothing() {
        let order = Uuid::now_v7();
        let mut other = endpoint(u32::MAX, 100);
        other.customer_id = Uuid::now_v7();
        let events = vec![event(order, 1, CREATED, 1, true)];
        assert!(plan(&events, &[0], &[other], &[]).is_empty());
    }
}
