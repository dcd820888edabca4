//! Handling of one received DICOM instance, whichever protocol brought it: header
//! checks, storage under a deterministic key, and one `ct.instances.v1` event.

use std::path::Path;

use bytes::Bytes;
use lungstream_dicom::{geometry, read_header_bytes, ReaderConfig};
use lungstream_runtime::{Created, Ops, Producer, Store};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use lungstream_schemas::events::{topics, CommitTrigger, IngestSource, InstanceBody, InstanceEvent, StoredInstance, EVENT_SCHEMA_VERSION};
use lungstream_schemas::ReasonCode;
use sha2::{Digest, Sha256};

use crate::config::Limits;

/// Names of the checks every stored instance has passed; listed in series events.
pub const INGEST_CHECKS: &[&str] = &["dicom_parses", "ct_image_storage", "modality_ct", "not_localizer", "axial", "size_limits", "pixel_data_present"];

/// An instance that was stored (or was already stored with the same bytes).
#[derive(Clone, Debug, PartialEq)]
pub struct Accepted {
    pub hospital: String,
    pub study_uid: String,
    pub series_uid: String,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub object_key: String,
    /// The same bytes were already stored under this key.
    pub duplicate: bool,
}

/// An instance that was not stored, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejected {
    pub reason: ReasonCode,
    /// A sentence without patient attributes.
    pub detail: String,
    /// Known when the header could be read far enough.
    pub sop_instance_uid: Option<String>,
    pub sop_class_uid: Option<String>,
    /// The store or the broker failed: sending the instance again may work.
    pub transient: bool,
}

impl Rejected {
    fn permanent(reason: ReasonCode, detail: impl Into<String>) -> Rejected {
        Rejected {
            reason,
            detail: detail.into(),
            sop_instance_uid: None,
            sop_class_uid: None,
            transient: false,
        }
    }
}

/// Returns the SHA-256 of a file's transfer syntax and data set, which ignores the file
/// meta group. For a file whose meta group cannot be read, it hashes the whole file.
fn content_digest(file: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    match lungstream_dicom::data_set_start(file) {
        Some((offset, transfer_syntax)) => {
            hasher.update(transfer_syntax.as_bytes());
            hasher.update([0]);
            hasher.update(&file[offset..]);
        }
        None => hasher.update(file),
    }
    hasher.finalize().into()
}

pub use lungstream_runtime::store::keys::{instance_key, series_instances_prefix};

/// Labels of `lungstream_ingest_instances_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    pub hospital: String,
    /// `stow_rs` or `c_store`.
    pub source: String,
    /// `stored`, `duplicate` or `rejected`.
    pub outcome: String,
    /// The reason code of a refusal, empty otherwise.
    pub reason: String,
}

/// Checks, stores and announces instances.
#[derive(Clone)]
pub struct Intake {
    pub store: Store,
    pub producer: Producer,
    pub reader: ReaderConfig,
    /// Instances received, by hospital, protocol and outcome.
    pub instances: Family<InstanceLabels, Counter>,
}

impl Intake {
    /// Creates the intake; `limits` narrow the reader's own limits.
    pub fn new(store: Store, producer: Producer, patient_key_secret: &str, limits: &Limits) -> Intake {
        let mut reader = ReaderConfig::with_secret(patient_key_secret.as_bytes().to_vec());
        reader.max_file_bytes = limits.max_instance_bytes;
        reader.max_matrix = limits.max_matrix;
        Intake {
            store,
            producer,
            reader,
            instances: Family::default(),
        }
    }

    /// Registers the intake's counters with a service's metrics.
    pub fn register_metrics(&self, ops: &Ops) {
        ops.metrics
            .register("ingest_instances", "DICOM instances received, by hospital, protocol and outcome", self.instances.clone());
    }

    /// Checks one instance from `hospital`, stores it and publishes its event. `label`
    /// names the instance in errors (a part number, never a file name from the sender).
    ///
    /// # Errors
    ///
    /// [`Rejected`] with a reason code: a header that fails the checks, an instance that
    /// conflicts with stored bytes under the same SOP Instance UID, or (transient) a
    /// store or broker failure.
    pub async fn accept(&self, hospital: &str, bytes: Bytes, source: IngestSource, label: &str) -> Result<Accepted, Rejected> {
        self.accept_in_study(hospital, bytes, source, label, None).await
    }

    /// Counts a part rejected before its header was read (a wrong media type).
    pub fn count_rejected(&self, hospital: &str, source: IngestSource, reason: ReasonCode) {
        self.count(hospital, source, "rejected", reason.as_str());
    }

    fn count(&self, hospital: &str, source: IngestSource, outcome: &str, reason: &str) {
        let source_name = match source {
            IngestSource::StowRs => "stow_rs",
            IngestSource::CStore => "c_store",
        };
        self.instances
            .get_or_create(&InstanceLabels {
                hospital: hospital.to_string(),
                source: source_name.into(),
                outcome: outcome.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// As [`Intake::accept`]; when `expected_study` is given, an instance of another
    /// study is rejected before anything is stored.
    ///
    /// # Errors
    ///
    /// As [`Intake::accept`], and `invalid_attribute` for another study.
    pub async fn accept_in_study(
        &self,
        hospital: &str,
        bytes: Bytes,
        source: IngestSource,
        label: &str,
        expected_study: Option<&str>,
    ) -> Result<Accepted, Rejected> {
        let result = self.check_and_store(hospital, bytes, source, label, expected_study).await;
        let (outcome, reason) = match &result {
            Ok(a) if a.duplicate => ("duplicate", ""),
            Ok(_) => ("stored", ""),
            Err(r) => ("rejected", r.reason.as_str()),
        };
        self.count(hospital, source, outcome, reason);
        result
    }

    async fn check_and_store(
        &self,
        hospital: &str,
        bytes: Bytes,
        source: IngestSource,
        label: &str,
        expected_study: Option<&str>,
    ) -> Result<Accepted, Rejected> {
        let reader = self.reader.clone();
        let name = label.to_string();
        let parsing = bytes.clone();
        let parsed = tokio::task::spawn_blocking(move || {
            let result = read_header_bytes(&parsing, Path::new(&name), &reader);
            let digest = hex::encode(Sha256::digest(&parsing));
            (result, digest)
        })
        .await
        .map_err(|e| Rejected::permanent(ReasonCode::InvalidDicom, format!("{label}: the header check failed: {e}")))?;
        let (header, sop_class_uid) = parsed.0.map_err(|e| Rejected::permanent(e.reason(), e.to_string()))?;
        let key = instance_key(hospital, &header.study_uid, &header.series_uid, &header.sop_instance_uid);
        let rejected = |reason: ReasonCode, detail: String, transient: bool| Rejected {
            reason,
            detail,
            sop_instance_uid: Some(header.sop_instance_uid.clone()),
            sop_class_uid: Some(sop_class_uid.clone()),
            transient,
        };
        if let Some(expected) = expected_study {
            if expected != header.study_uid {
                return Err(rejected(
                    ReasonCode::InvalidAttribute,
                    format!("{label} belongs to another study than the one in the URL"),
                    false,
                ));
            }
        }
        let created = self
            .store
            .put_if_absent(&key, bytes.clone())
            .await
            .map_err(|e| rejected(ReasonCode::Unavailable, format!("{label}: cannot store the instance: {e}"), true))?;
        let duplicate = created == Created::Existed;
        let (sha256, size_bytes) = if duplicate {
            let stored = self
                .store
                .get(&key)
                .await
                .map_err(|e| rejected(ReasonCode::Unavailable, format!("{label}: cannot read the stored copy: {e}"), true))?;
            // C-STORE rebuilds the file meta group, so one instance sent by STOW-RS and by
            // C-STORE differs there: compare the transfer syntax and the data set.
            if content_digest(&stored) != content_digest(&bytes) {
                return Err(rejected(
                    ReasonCode::ConflictingInstance,
                    format!("{label}: another instance with this SOP Instance UID is already stored"),
                    false,
                ));
            }
            (hex::encode(Sha256::digest(&stored)), stored.len() as u64)
        } else {
            (parsed.1, bytes.len() as u64)
        };
        let normal = geometry::normal(&header.orientation);
        let slice_position_mm = normal.iter().zip(&header.position).map(|(n, p)| n * p).sum();
        let event = InstanceEvent {
            schema_version: EVENT_SCHEMA_VERSION.into(),
            hospital: hospital.to_string(),
            study_uid: header.study_uid.clone(),
            series_uid: header.series_uid.clone(),
            received_at: lungstream_runtime::telemetry::now_rfc3339(),
            body: InstanceBody::Instance(StoredInstance {
                sop_instance_uid: header.sop_instance_uid.clone(),
                sop_class_uid: sop_class_uid.clone(),
                object_key: key.clone(),
                size_bytes,
                sha256,
                instance_number: header.instance_number,
                slice_position_mm,
                patient_key: header.patient_key.clone(),
                source,
            }),
        };
        self.producer
            .send_json(topics::INSTANCES, &header.series_uid, &event)
            .await
            .map_err(|e| rejected(ReasonCode::Unavailable, format!("{label}: stored, but the event could not be published: {e}"), true))?;
        Ok(Accepted {
            hospital: hospital.to_string(),
            study_uid: header.study_uid.clone(),
            series_uid: header.series_uid.clone(),
            sop_instance_uid: header.sop_instance_uid.clone(),
            sop_class_uid,
            object_key: key,
            duplicate,
        })
    }

    /// Publishes the end of a series announced by its sender.
    ///
    /// # Errors
    ///
    /// The broker does not take the event.
    pub async fn commit(&self, hospital: &str, study_uid: &str, series_uid: &str, trigger: CommitTrigger) -> Result<(), lungstream_runtime::BusError> {
        let event = InstanceEvent {
            schema_version: EVENT_SCHEMA_VERSION.into(),
            hospital: hospital.to_string(),
            study_uid: study_uid.to_string(),
            series_uid: series_uid.to_string(),
            received_at: lungstream_runtime::telemetry::now_rfc3339(),
            body: InstanceBody::Commit { trigger },
        };
        self.producer.send_json(topics::INSTANCES, series_uid, &event).await.map(|_| ())
    }
}
