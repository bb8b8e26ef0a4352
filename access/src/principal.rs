//! Who is calling: the [`Principal`] a request runs as and its [`Role`], whatever proved it
//! (a JWT, an API key, a client certificate).

use serde::{Deserialize, Serialize};

/// What a principal may do (issue 13): `customer` reads and cancels its own orders, `service`
/// creates orders and reads any, `operator` everything operational, `analyst` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Customer,
    Service,
    Operator,
    Analyst,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Customer, Role::Service, Role::Operator, Role::Analyst];

    pub fn name(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Service => "service",
            Role::Operator => "operator",
            Role::Analyst => "analyst",
        }
    }

    /// The role of exactly this (lowercase) name.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// The caller of a request, as authentication established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Stable identity: a token's `sub`, an API key's id (`ofk_<id>`), a certificate's CN.
    pub id: String,
    pub role: Role,
    /// The customer a `customer` principal acts for; `None` for the other roles.
    pub customer_id: Option<String>,
}
