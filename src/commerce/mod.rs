//! Commerce: stock-aware carts, Shopify webhooks, conversions and commissions.

pub mod http;
pub mod inventory;
pub mod journal;
pub mod ledger;
pub mod money;
pub mod outbox;
pub mod payout;
pub mod webhooks;
