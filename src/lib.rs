//! m2pool-payment: a crypto payment gateway daemon.
//!
//! Business systems publish signed requests to RabbitMQ (watch an address for
//! deposits, withdraw, pay, remove a watch); the daemon verifies them, acts on
//! Ethereum, and answers on RabbitMQ. The README has the wire contract and
//! operations; `docs/architecture.md` the design. The pieces, in the order a request meets them:
//!
//! - [`queue`]: RabbitMQ topology, consumers and the outbox relay;
//! - [`server`]: decode, verify and validate a request (pure);
//! - [`listen`]: the one owner of state, committing each change with its responses;
//! - [`chain`]: follows the node from a persisted cursor and reports blocks;
//! - [`store`]: the message store (SQLite or MySQL/MariaDB);
//! - [`http`], [`webhook`]: the HTTP API, its WebSocket stream, and signed webhooks;
//! - [`console`]: the operator console (read-only pages at `/console`);
//! - [`msg`], [`config`], [`secret`]: the wire contract, settings and secrets;
//! - [`daemon`]: wiring and critical-task supervision.

pub mod backoff;
pub mod chain;
pub mod clock;
pub mod config;
pub mod console;
pub mod daemon;
pub mod db;
pub mod health;
pub mod http;
pub mod lease;
pub mod ledger;
pub mod listen;
pub mod metrics;
pub mod msg;
pub mod queue;
pub mod reply;
pub mod secret;
pub mod server;
pub mod store;
pub mod txlog;
pub mod wallet;
pub mod webhook;

pub use daemon::{RunError, Secrets, run};
