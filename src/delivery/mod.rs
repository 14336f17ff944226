//! Webhook delivery. The worker lands with its own issue; what is here now
//! is what registration and the worker share: Standard Webhooks signing.

pub mod signing;
