//! Who is calling: the operator, a customer's API key, or a customer portal
//! session; and what each may see.

use uuid::Uuid;

use crate::domain::portal::Capabilities;
use crate::error::ApiError;

/// Who is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    Operator,
    Customer(Uuid),
    /// A customer portal session: the customer's webhooks, within its capabilities.
    Portal {
        customer: Uuid,
        capabilities: Capabilities,
    },
}

impl Principal {
    /// The customer this caller acts for: itself, or whom the operator names.
    /// `None` for an operator that named nobody.
    pub fn scope(self, requested: Option<Uuid>) -> Result<Option<Uuid>, ApiError> {
        match (self.customer(), requested) {
            (None, requested) => Ok(requested),
            (Some(own), None) => Ok(Some(own)),
            (Some(own), Some(other)) if other == own => Ok(Some(own)),
            (Some(_), Some(_)) => Err(ApiError::invalid(
                "customer_id",
                "only the operator may name a customer",
            )),
        }
    }

    /// May this caller see a resource owned by `customer_id`?
    pub fn can_see(self, customer_id: Uuid) -> bool {
        self.customer().is_none_or(|own| own == customer_id)
    }

    /// The customer this caller is; `None` for the operator.
    pub fn customer(self) -> Option<Uuid> {
        match self {
            Principal::Operator => None,
            Principal::Customer(id) | Principal::Portal { customer: id, .. } => Some(id),
        }
    }

    /// The key under which this caller's idempotency keys are kept.
    pub fn owner_id(self) -> Uuid {
        self.customer().unwrap_or(Uuid::nil())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn customers_cannot_act_for_others() {
        let own = Uuid::now_v7();
        let other = Uuid::now_v7();
        let customer = Principal::Customer(own);
        assert_eq!(customer.scope(None).unwrap(), Some(own));
        assert_eq!(customer.scope(Some(own)).unwrap(), Some(own));
        assert!(customer.scope(Some(other)).is_err());
        assert_eq!(Principal::Operator.scope(Some(other)).unwrap(), Some(other));
        assert!(!customer.can_see(other));
        assert!(Principal::Operator.can_see(other));
    }
}
