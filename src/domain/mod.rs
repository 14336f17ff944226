//! Types that cannot hold invalid values, and the pure rules on them.

pub mod country;
pub mod cursor;
pub mod event;
pub mod event_catalog;
pub mod notice;
pub mod order;
pub mod order_status;
pub mod portal;
pub mod text;
pub mod time;
pub mod webhook;
pub mod webhook_headers;
pub mod webhook_url;

pub use event::{Event, EventType, OrderEventData};
pub use order::{Address, Order, OrderContents, Parcel};
pub use order_status::OrderStatus;
