//! The order status machine: which moves are allowed, as a pure function.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Pending,
    Confirmed,
    PickedUp,
    InTransit,
    OutForDelivery,
    Delivered,
    Exception,
    Cancelled,
    Returned,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 9] = [
        OrderStatus::Pending,
        OrderStatus::Confirmed,
        OrderStatus::PickedUp,
        OrderStatus::InTransit,
        OrderStatus::OutForDelivery,
        OrderStatus::Delivered,
        OrderStatus::Exception,
        OrderStatus::Cancelled,
        OrderStatus::Returned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::PickedUp => "picked_up",
            OrderStatus::InTransit => "in_transit",
            OrderStatus::OutForDelivery => "out_for_delivery",
            OrderStatus::Delivered => "delivered",
            OrderStatus::Exception => "exception",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Returned => "returned",
        }
    }

    pub fn parse(s: &str) -> Option<OrderStatus> {
        OrderStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
    }

    /// The statuses an order may move to from this one (SPEC §4).
    pub fn next(self) -> &'static [OrderStatus] {
        use OrderStatus::*;
        match self {
            Pending => &[Confirmed, Cancelled],
            Confirmed => &[PickedUp, Cancelled],
            PickedUp => &[InTransit, Exception],
            InTransit => &[OutForDelivery, Exception],
            OutForDelivery => &[Delivered, Exception],
            Exception => &[InTransit, OutForDelivery, Returned],
            Delivered | Cancelled | Returned => &[],
        }
    }

    pub fn can_move_to(self, to: OrderStatus) -> bool {
        self.next().contains(&to)
    }

    /// Statuses in which an order takes tracking updates: confirmed and on
    /// its way, not before and not after (SPEC §13).
    pub const TRACKABLE: [OrderStatus; 5] = [
        OrderStatus::Confirmed,
        OrderStatus::PickedUp,
        OrderStatus::InTransit,
        OrderStatus::OutForDelivery,
        OrderStatus::Exception,
    ];

    /// Statuses in which an order may be amended: not yet picked up.
    pub const AMENDABLE: [OrderStatus; 2] = [OrderStatus::Pending, OrderStatus::Confirmed];

    /// This status's bit in an endpoint's `statuses` filter.
    pub fn bit(self) -> u32 {
        let index = OrderStatus::ALL.iter().position(|s| *s == self);
        1 << index.unwrap_or_default()
    }
}

/// "`a`, `b` or `c`", for messages.
pub fn list_of(statuses: &[OrderStatus]) -> String {
    let names: Vec<String> = statuses.iter().map(|s| s.as_str().to_string()).collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.join(""),
    }
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::OrderStatus::{self, *};

    /// The table of SPEC §4, written out independently of `next()`.
    const ALLOWED: &[(OrderStatus, OrderStatus)] = &[
        (Pending, Confirmed),
        (Pending, Cancelled),
        (Confirmed, PickedUp),
        (Confirmed, Cancelled),
        (PickedUp, InTransit),
        (PickedUp, Exception),
        (InTransit, OutForDelivery),
        (InTransit, Exception),
        (OutForDelivery, Delivered),
        (OutForDelivery, Exception),
        (Exception, InTransit),
        (Exception, OutForDelivery),
        (Exception, Returned),
    ];

    #[test]
    fn every_pair_follows_the_spec_table() {
        for from in OrderStatus::ALL {
            for to in OrderStatus::ALL {
                let expected = ALLOWED.contains(&(from, to));
                assert_eq!(from.can_move_to(to), expected, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn names_round_trip_through_serde_and_parse() {
        for status in OrderStatus::ALL {
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
            assert_eq!(OrderStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(OrderStatus::parse("Pending"), None);
        assert_eq!(OrderStatus::parse(""), None);
    }
}
