//! DICOM intake for lungstream.
//!
//! Instances arrive by DICOMweb STOW-RS ([`stow`]) or DICOM C-STORE ([`cstore`]). The
//! hospital comes from the credentials (a bearer token, a calling AE title), never from
//! the request. [`intake`] checks each instance's header, stores it under a
//! deterministic key and publishes one `ct.instances.v1` event. The [`assembler`] turns
//! those events into one `ct.series.v1` event per complete series. [`client`] is the
//! STOW-RS client behind `lungstream ingest`.

pub mod assembler;
pub mod client;
pub mod config;
pub mod cstore;
pub mod intake;
pub mod multipart;
pub mod service;
pub mod stow;
pub use lungstream_runtime::tenants;
