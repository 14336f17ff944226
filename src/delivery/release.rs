//! Release: which delivery of an order goes next once a settle wrote its
//! outcomes. Per (endpoint, order), only the lowest pending delivery may
//! go, and only if it is the one waiting: a later event never overtakes an
//! earlier one.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use crate::db::deliveries::{OrderSlot, Settled, PENDING};

/// `slots` (read and locked before the settle) as they are once `settled`
/// was written, if `written` says every one of them was: a settle that
/// wrote all its rows need not read them back. `None` when one was stale.
pub(super) fn after_settle(
    mut slots: Vec<OrderSlot>,
    settled: &[Settled],
    written: u64,
) -> Option<Vec<OrderSlot>> {
    let by_id: HashMap<Uuid, &Settled> = settled.iter().map(|s| (s.id, s)).collect();
    if written != by_id.len() as u64 {
        return None;
    }
    for slot in &mut slots {
        if let Some(settled) = by_id.get(&slot.id) {
            slot.status = settled.status.to_string();
            slot.waiting = settled.status == PENDING && settled.next_attempt_at.is_none();
        }
    }
    Some(slots)
}

/// The waiting deliveries to release among `slots`: of each pair in
/// `pairs`, the lowest pending one, if it waits.
pub(super) fn to_release(slots: &[OrderSlot], pairs: &HashSet<(Uuid, Uuid)>) -> Vec<Uuid> {
    let mut lowest: HashMap<(Uuid, Uuid), &OrderSlot> = HashMap::new();
    for slot in slots
        .iter()
        .filter(|s| s.status == PENDING && pairs.contains(&(s.endpoint_id, s.order_id)))
    {
        let entry = lowest
            .entry((slot.endpoint_id, slot.order_id))
            .or_insert(slot);
        if slot.sequence < entry.sequence {
            *entry = slot;
        }
    }
    let mut release: Vec<Uuid> = lowest
        .values()
        .filter(|s| s.waiting)
        .map(|s| s.id)
        .collect();
    release.sort();
    release
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::deliveries::{FAILED, SUCCEEDED};

    const E: Uuid = Uuid::from_u128(0xe);
    const O: Uuid = Uuid::from_u128(0x0);
    const OTHER: Uuid = Uuid::from_u128(0x1);

    fn slot(order: Uuid, sequence: u32, status: &str, waiting: bool) -> OrderSlot {
        OrderSlot {
            id: Uuid::from_u128((u128::from(sequence) << 8) | order.as_u128()),
            endpoint_id: E,
            order_id: order,
            sequence,
            event_id: Uuid::nil(),
            status: status.into(),
            waiting,
        }
    }

    fn settled(slot: &OrderSlot, status: &'static str, retry: bool) -> Settled {
        Settled {
            id: slot.id,
            lease_id: Uuid::nil(),
            leased_at: chrono::DateTime::UNIX_EPOCH,
            status,
            attempts: 1,
            last_response_status: None,
            last_error: None,
            next_attempt_at: retry.then_some(chrono::DateTime::UNIX_EPOCH),
        }
    }

    #[test]
    fn only_the_lowest_pending_delivery_of_a_pair_is_released_and_only_if_it_waits() {
        let one = slot(O, 1, PENDING, false);
        let two = slot(O, 2, PENDING, true);
        let three = slot(O, 3, PENDING, true);
        let pairs: HashSet<_> = [(E, O)].into();
        let release = |slots: Vec<OrderSlot>, settles: Vec<Settled>| {
            let written = settles.len() as u64;
            to_release(&after_settle(slots, &settles, written).unwrap(), &pairs)
        };
        let all = || vec![one.clone(), two.clone(), three.clone()];
        for (why, slots, settles, expected) in [
            (
                "the first succeeded: the second goes",
                all(),
                vec![settled(&one, SUCCEEDED, false)],
                vec![two.id],
            ),
            (
                "the first failed for good: the second goes",
                all(),
                vec![settled(&one, FAILED, false)],
                vec![two.id],
            ),
            (
                "the first will be retried: nothing goes",
                all(),
                vec![settled(&one, PENDING, true)],
                vec![],
            ),
            (
                "nothing settled: the first is in flight",
                all(),
                vec![],
                vec![],
            ),
            (
                "the first two settled at once: the third goes",
                all(),
                vec![
                    settled(&one, SUCCEEDED, false),
                    settled(&two, SUCCEEDED, false),
                ],
                vec![three.id],
            ),
            (
                "the lowest pending is not waiting (due): nothing more",
                vec![one.clone(), slot(O, 2, PENDING, false), three.clone()],
                vec![settled(&one, SUCCEEDED, false)],
                vec![],
            ),
            (
                "slots come in any order",
                vec![three.clone(), two.clone(), one.clone()],
                vec![settled(&one, SUCCEEDED, false)],
                vec![two.id],
            ),
            (
                "another order's delivery is not the pair's",
                vec![one.clone(), slot(OTHER, 2, PENDING, true)],
                vec![settled(&one, SUCCEEDED, false)],
                vec![],
            ),
        ] {
            assert_eq!(release(slots, settles), expected, "{why}");
        }
        let stale = vec![settled(&one, SUCCEEDED, false)];
        assert!(
            after_settle(all(), &stale, 0).is_none(),
            "a stale outcome: read again"
        );
    }
}
