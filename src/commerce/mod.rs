//! Commerce: stock-aware carts, Shopify webhooks, conversions and commissions.

pub mod inventory;
