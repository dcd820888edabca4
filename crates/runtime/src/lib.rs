//! Shared parts of every lungstream service.
//!
//! - [`config`]: a TOML file with `LUNGSTREAM__SECTION__KEY` environment overrides;
//! - [`bus`]: Kafka ([`kafka`]) and in-memory producers and consumers with one interface;
//! - [`worker`]: the consumer loop that commits only after outputs are written, retries
//!   transient failures and sends permanent ones to the dead-letter topic;
//! - [`store`]: object stores from `s3://`, `file://` and `memory://` URLs;
//! - [`ops`]: `/healthz`, `/readyz`, Prometheus `/metrics` and shutdown on SIGTERM;
//! - [`tenants`]: hospitals and the tokens and AE titles that identify them;
//! - [`stage`]: the start-up every stage service shares;
//! - [`telemetry`]: logs, and OpenTelemetry trace context carried in Kafka headers.

pub mod bus;
pub mod config;
pub mod kafka;
pub mod ops;
pub mod stage;
pub mod store;
pub mod telemetry;
pub mod tenants;
pub mod worker;

pub use bus::{BusError, Consumer, MemoryBus, Message, Producer};
pub use config::{KafkaConfig, RetryConfig};
pub use ops::Ops;
pub use store::{Created, Store, StoreError};
pub use worker::{BatchHandler, BatchLimits, HandleError, Handler, Rejection, Worker};
