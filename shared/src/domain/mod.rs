//! The domain: plain data and pure rules. Nothing here knows about AWS.

pub mod adoption;
pub mod clock;
pub mod contract;
pub mod crm;
pub mod failures;
pub mod health;
pub mod identity;
pub mod inbound;
pub mod mapping;
pub mod reconcile;
pub mod sync;
pub mod values;
pub mod webhook;

pub use clock::{Clock, SystemClock};
pub use webhook::{
    Acknowledgement, AuthError, Delivery, InboundEvent, ParseError, ProviderId, WebhookRequest,
    INBOUND_CONTRACT_VERSION,
};
