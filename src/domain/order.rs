//! An order's contents: addresses and parcels, checked once at the edge.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::country;
use super::text::Checks;
use crate::error::FieldError;

pub const MAX_PARCELS: usize = 100;
pub const MAX_WEIGHT_GRAMS: i64 = 1_000_000;
pub const MAX_DIMENSION_MM: i64 = 10_000;
pub const MAX_NOTES_CHARS: usize = 2000;
pub const MAX_REFERENCE_CHARS: usize = 100;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Address {
    /// Person or company at the address (1..200 characters).
    #[schema(example = "Empress Products Ltd")]
    pub name: String,
    #[schema(example = "12 Dock Road")]
    pub line1: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line2: Option<String>,
    #[schema(example = "Rotterdam")]
    pub city: String,
    #[schema(example = "3011 AA")]
    pub postal_code: String,
    /// ISO 3166-1 alpha-2, upper case.
    #[schema(example = "NL")]
    pub country: String,
}

/// Weights and dimensions are positive integers; out-of-range values are
/// reported per field, so they are read as wide integers first.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Parcel {
    #[schema(example = 1200, minimum = 1, maximum = 1000000)]
    pub weight_grams: i64,
    #[schema(example = 300, minimum = 1, maximum = 10000)]
    pub length_mm: i64,
    #[schema(example = 200, minimum = 1, maximum = 10000)]
    pub width_mm: i64,
    #[schema(example = 100, minimum = 1, maximum = 10000)]
    pub height_mm: i64,
}

/// The validated contents of a new order.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderContents {
    pub reference: Option<String>,
    pub pickup: Address,
    pub delivery: Address,
    pub parcels: Vec<Parcel>,
    pub notes: Option<String>,
}

impl OrderContents {
    /// Checks every field and reports every problem, or returns the contents.
    pub fn parse(
        reference: Option<String>,
        pickup: Address,
        delivery: Address,
        parcels: Vec<Parcel>,
        notes: Option<String>,
    ) -> Result<OrderContents, Vec<FieldError>> {
        let mut checks = Checks::default();
        if let Some(reference) = &reference {
            checks.identifier("reference", reference, MAX_REFERENCE_CHARS);
        }
        check_address(&mut checks, "pickup", &pickup);
        check_address(&mut checks, "delivery", &delivery);
        check_parcels(&mut checks, &parcels);
        if let Some(notes) = &notes {
            checks.text("notes", notes, MAX_NOTES_CHARS, true);
        }
        checks.finish()?;
        Ok(OrderContents {
            reference,
            pickup,
            delivery,
            parcels,
            notes,
        })
    }
}

/// A checked amendment (SPEC §13): each field given replaces the order's
/// whole, under the rules of creation. The pickup address is not among
/// them: the carrier plans its collection from it once the order is placed.
#[derive(Debug, Clone, PartialEq)]
pub struct Amendment {
    pub delivery: Option<Address>,
    pub parcels: Option<Vec<Parcel>>,
    /// `Some(None)` clears the notes.
    pub notes: Option<Option<String>>,
}

/// The fields an amendment may change, as named in `changed`.
pub const AMENDABLE_FIELDS: [&str; 3] = ["delivery", "notes", "parcels"];

impl Amendment {
    /// Checks every field given; at least one must be.
    pub fn parse(
        delivery: Option<Address>,
        parcels: Option<Vec<Parcel>>,
        notes: Option<Option<String>>,
    ) -> Result<Amendment, Vec<FieldError>> {
        let mut checks = Checks::default();
        if delivery.is_none() && parcels.is_none() && notes.is_none() {
            checks.fail(
                "body",
                format!("give at least one of {}", AMENDABLE_FIELDS.join(", ")),
            );
        }
        if let Some(delivery) = &delivery {
            check_address(&mut checks, "delivery", delivery);
        }
        if let Some(parcels) = &parcels {
            check_parcels(&mut checks, parcels);
        }
        if let Some(Some(notes)) = &notes {
            checks.text("notes", notes, MAX_NOTES_CHARS, true);
        }
        checks.finish()?;
        Ok(Amendment {
            delivery,
            parcels,
            notes,
        })
    }

    /// Applies the amendment to `order`'s contents: the names of the fields
    /// it changed, sorted, and each one's value before. A field given with
    /// the value it has is not a change; nothing changed leaves `order` as
    /// it was.
    pub fn apply(&self, order: &mut Order) -> (Vec<String>, serde_json::Map<String, Value>) {
        let mut previous = serde_json::Map::new();
        let mut note = |name: &str, old: Value| {
            previous.insert(name.to_string(), old);
        };
        if let Some(delivery) = self.delivery.as_ref().filter(|d| **d != order.delivery) {
            note("delivery", json(&order.delivery));
            order.delivery = delivery.clone();
        }
        if let Some(notes) = self.notes.as_ref().filter(|n| **n != order.notes) {
            note("notes", json(&order.notes));
            order.notes = notes.clone();
        }
        if let Some(parcels) = self.parcels.as_ref().filter(|p| **p != order.parcels) {
            note("parcels", json(&order.parcels));
            order.parcels = parcels.clone();
        }
        // A `Map` keeps its keys sorted: `changed` is in the same order.
        (previous.keys().cloned().collect(), previous)
    }
}

fn json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or_default()
}

fn check_parcels(checks: &mut Checks, parcels: &[Parcel]) {
    if parcels.is_empty() || parcels.len() > MAX_PARCELS {
        checks.fail("parcels", format!("must hold 1 to {MAX_PARCELS} parcels"));
    }
    for (i, parcel) in parcels.iter().enumerate() {
        let field = |name: &str| format!("parcels[{i}].{name}");
        checks.range(
            &field("weight_grams"),
            parcel.weight_grams,
            1,
            MAX_WEIGHT_GRAMS,
        );
        checks.range(&field("length_mm"), parcel.length_mm, 1, MAX_DIMENSION_MM);
        checks.range(&field("width_mm"), parcel.width_mm, 1, MAX_DIMENSION_MM);
        checks.range(&field("height_mm"), parcel.height_mm, 1, MAX_DIMENSION_MM);
    }
}

fn check_address(checks: &mut Checks, prefix: &str, address: &Address) {
    let field = |name: &str| format!("{prefix}.{name}");
    checks.line(&field("name"), &address.name, 200);
    checks.line(&field("line1"), &address.line1, 200);
    if let Some(line2) = &address.line2 {
        checks.text(&field("line2"), line2, 200, false);
    }
    checks.line(&field("city"), &address.city, 100);
    checks.line(&field("postal_code"), &address.postal_code, 20);
    if !country::is_assigned(&address.country) {
        checks.fail(
            field("country"),
            "must be an ISO 3166-1 alpha-2 code in upper case, like NL",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address() -> Address {
        Address {
            name: "A".into(),
            line1: "1 Road".into(),
            line2: None,
            city: "Town".into(),
            postal_code: "1000".into(),
            country: "NL".into(),
        }
    }

    fn parcel() -> Parcel {
        Parcel {
            weight_grams: 1,
            length_mm: 1,
            width_mm: 1,
            height_mm: 1,
        }
    }

    #[test]
    fn a_valid_order_parses() {
        let parsed = OrderContents::parse(None, address(), address(), vec![parcel()], None);
        assert!(parsed.is_ok());
    }

    #[test]
    fn every_bad_field_is_reported() {
        let mut pickup = address();
        pickup.country = "nl".into();
        pickup.name = "  ".into();
        let mut bad = parcel();
        bad.weight_grams = 0;
        bad.height_mm = MAX_DIMENSION_MM + 1;
        let errors = OrderContents::parse(
            Some("x".repeat(101)),
            pickup,
            address(),
            vec![parcel(), bad],
            Some("\u{0}".into()),
        )
        .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "reference",
                "pickup.name",
                "pickup.country",
                "parcels[1].weight_grams",
                "parcels[1].height_mm",
                "notes"
            ]
        );
    }

    #[test]
    fn an_amendment_names_a_field_and_checks_each_one_given() {
        let errors = Amendment::parse(None, None, None).unwrap_err();
        assert_eq!(errors[0].field, "body");
        let mut delivery = address();
        delivery.country = "XX".into();
        let mut bad = parcel();
        bad.width_mm = 0;
        let errors = Amendment::parse(Some(delivery), Some(vec![bad]), Some(Some("\u{7}".into())))
            .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["delivery.country", "parcels[0].width_mm", "notes"]);
        // Clearing the notes is an amendment of its own.
        assert!(Amendment::parse(None, None, Some(None)).is_ok());
    }

    #[test]
    fn parcel_count_is_bounded() {
        for count in [0, MAX_PARCELS + 1] {
            let errors =
                OrderContents::parse(None, address(), address(), vec![parcel(); count], None)
                    .unwrap_err();
            assert_eq!(errors[0].field, "parcels");
        }
        assert!(OrderContents::parse(
            None,
            address(),
            address(),
            vec![parcel(); MAX_PARCELS],
            None
        )
        .is_ok());
    }
}

/// An order as the API returns it and as events carry it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Order {
    pub id: uuid::Uuid,
    pub customer_id: uuid::Uuid,
    /// The customer's own reference, unique per customer.
    pub reference: Option<String>,
    pub status: super::OrderStatus,
    pub pickup: Address,
    pub delivery: Address,
    pub parcels: Vec<Parcel>,
    pub notes: Option<String>,
    /// When the order is expected to arrive, as the last tracking update
    /// gave it; null until one does.
    #[serde(default, with = "super::time::millis_option")]
    #[schema(value_type = Option<String>, format = DateTime, example = "2026-11-26T16:00:00.000Z")]
    pub eta: Option<chrono::DateTime<chrono::Utc>>,
    /// The latest location a status change or a tracking update gave; null
    /// until one does.
    #[serde(default)]
    #[schema(example = "Antwerp depot")]
    pub last_location: Option<String>,
    /// Starts at 1 and grows by one with every change; also the `ETag`.
    #[schema(example = 1)]
    pub version: u32,
    #[serde(with = "super::time::millis")]
    #[schema(value_type = String, format = DateTime, example = "2026-11-24T19:20:56.123Z")]
    pub created_at: chrono::DateTime<chrono::Utc>,
    #[serde(with = "super::time::millis")]
    #[schema(value_type = String, format = DateTime, example = "2026-11-24T19:20:56.123Z")]
    pub updated_at: chrono::DateTime<chrono::Utc>,
}
