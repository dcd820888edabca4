//! Events on the Kafka topics between the services, and the topic names.
//!
//! Kafka carries only these small JSON events; DICOM files, tensors and maps stay in the
//! object store and an event names their keys. Every event has `schema_version`
//! (`MAJOR.MINOR`). A consumer accepts any minor version of the major version it was
//! built for and sends any other major version to the dead-letter topic
//! ([`ReasonCode::UnknownSchemaVersion`]).
//!
//! No event carries a DICOM patient attribute. The patient appears only as the
//! pseudonymous `patient_key`: an HMAC of _Patient ID_ with the deployment's secret.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ReasonCode;

/// Topic names. The `.v1` suffix is the major version of the events on the topic.
pub mod topics {
    /// One [`InstanceEvent`](super::InstanceEvent) per stored instance, and the commit
    /// markers of series; key = Series Instance UID.
    pub const INSTANCES: &str = "ct.instances.v1";
    /// One [`SeriesEvent`](super::SeriesEvent) per complete series; key = Series Instance UID.
    pub const SERIES: &str = "ct.series.v1";
    /// Lobe bundles ready for the networks; key = Series Instance UID.
    pub const LOBES: &str = "ct.lobes.v1";
    /// Network results per series; key = Series Instance UID.
    pub const RESULTS: &str = "ct.results.v1";
    /// Study reports for analysts; key = Study Instance UID.
    pub const REPORTS: &str = "ct.reports.v1";
    /// Inputs that cannot be processed, with a reason code
    /// ([`DeadLetterEvent`](super::DeadLetterEvent)).
    pub const DEAD_LETTER: &str = "ct.dead-letter.v1";
    /// Every topic, in pipeline order.
    pub const ALL: &[&str] = &[INSTANCES, SERIES, LOBES, RESULTS, REPORTS, DEAD_LETTER];
}

/// Version of the events defined here.
pub const EVENT_SCHEMA_VERSION: &str = "1.0";

/// Error for an event whose `schema_version` this build cannot read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownVersion {
    pub found: String,
    pub expected_major: u32,
}

impl std::fmt::Display for UnknownVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "schema_version {:?} is not a {}.x version", self.found, self.expected_major)
    }
}

impl std::error::Error for UnknownVersion {}

/// Checks that `version` (`MAJOR.MINOR`) has the major version of [`EVENT_SCHEMA_VERSION`].
///
/// # Errors
///
/// [`UnknownVersion`] for another major version or a malformed version.
pub fn check_schema_version(version: &str) -> Result<(), UnknownVersion> {
    let expected_major = major(EVENT_SCHEMA_VERSION).expect("the built-in version is valid");
    match major(version) {
        Some(found) if found == expected_major => Ok(()),
        _ => Err(UnknownVersion {
            found: version.to_string(),
            expected_major,
        }),
    }
}

fn major(version: &str) -> Option<u32> {
    let (major, minor) = version.split_once('.')?;
    minor.parse::<u32>().ok()?;
    major.parse().ok()
}

/// Reads the `schema_version` of a JSON event without parsing the rest, so a consumer can
/// tell an unknown version from a malformed event.
pub fn peek_schema_version(payload: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Versioned {
        schema_version: String,
    }
    serde_json::from_slice::<Versioned>(payload).ok().map(|v| v.schema_version)
}

/// Protocol by which an instance reached the ingest service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum IngestSource {
    /// DICOMweb STOW-RS (HTTP).
    StowRs,
    /// DICOM C-STORE from a scanner or PACS.
    CStore,
}

/// An event on `ct.instances.v1`: one stored instance, or the end of a series announced by
/// the sender. Both kinds have the series UID as key, so a commit marker follows the
/// series' instances in the same partition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InstanceEvent {
    /// [`EVENT_SCHEMA_VERSION`].
    pub schema_version: String,
    /// Tenant that sent the instance, from its credentials, never from the request body.
    pub hospital: String,
    /// _Study Instance UID_.
    pub study_uid: String,
    /// _Series Instance UID_.
    pub series_uid: String,
    /// When ingest stored the instance or received the commit, RFC 3339 UTC.
    pub received_at: String,
    #[serde(flatten)]
    pub body: InstanceBody,
}

/// Content of an [`InstanceEvent`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum InstanceBody {
    /// One instance was stored and passed the header checks.
    Instance(StoredInstance),
    /// The sender marked the series complete: a C-STORE association was released, or a
    /// client called the commit endpoint.
    Commit {
        /// Cause of the completion.
        trigger: CommitTrigger,
    },
}

/// One stored CT instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StoredInstance {
    /// _SOP Instance UID_.
    pub sop_instance_uid: String,
    /// _SOP Class UID_ (CT Image Storage).
    pub sop_class_uid: String,
    /// Key of the DICOM file in the object store.
    pub object_key: String,
    pub size_bytes: u64,
    /// SHA-256 of the file, hex. It distinguishes two uploads of one SOP Instance UID with
    /// different bytes.
    pub sha256: String,
    /// _Instance Number_, when present.
    pub instance_number: Option<i32>,
    /// Position of the slice along the normal of the image plane, mm.
    pub slice_position_mm: f64,
    /// HMAC-SHA256 of _Patient ID_ with the deployment's secret, hex; `None` when the
    /// file has no _Patient ID_.
    pub patient_key: Option<String>,
    pub source: IngestSource,
}

/// Cause of a series' completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CommitTrigger {
    /// No new instance for the configured quiet period, and the stack has no gap.
    QuietPeriod,
    /// The C-STORE association that sent the series was released.
    AssociationReleased,
    /// A client called the commit endpoint.
    ExplicitCommit,
}

/// An event on `ct.series.v1`: a complete series, ready for preprocessing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SeriesEvent {
    /// [`EVENT_SCHEMA_VERSION`].
    pub schema_version: String,
    pub hospital: String,
    pub study_uid: String,
    pub series_uid: String,
    /// Pseudonymous patient key (see [`StoredInstance::patient_key`]).
    pub patient_key: Option<String>,
    /// 1 for the first version of the series; one more each time instances arrive after
    /// the series was complete.
    pub revision: u32,
    /// The instances, by slice position (feet first), each SOP Instance UID once.
    pub instances: Vec<SeriesInstance>,
    pub instance_count: usize,
    /// When the first and the last instance were stored, RFC 3339 UTC.
    pub first_received_at: String,
    pub last_received_at: String,
    /// When the assembler declared the series complete, RFC 3339 UTC.
    pub completed_at: String,
    pub trigger: CommitTrigger,
    /// Checks every instance passed at ingest, by name.
    pub checks: Vec<String>,
}

/// One instance of a [`SeriesEvent`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SeriesInstance {
    pub sop_instance_uid: String,
    pub object_key: String,
    pub size_bytes: u64,
    pub sha256: String,
    pub instance_number: Option<i32>,
    pub slice_position_mm: f64,
}

/// An event on `ct.dead-letter.v1`: an input that will never be processed, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeadLetterEvent {
    /// [`EVENT_SCHEMA_VERSION`].
    pub schema_version: String,
    pub reason: ReasonCode,
    /// A sentence for people, without patient attributes.
    pub detail: String,
    /// The service that gave up.
    pub service: String,
    /// Position of the original event, when there was one.
    pub source: Option<SourcePosition>,
    /// Hospital and series, when known, so a report can show "rejected: reason".
    pub hospital: Option<String>,
    pub study_uid: Option<String>,
    pub series_uid: Option<String>,
    /// The original event as JSON when it parsed; otherwise its bytes as a
    /// lossy UTF-8 string.
    pub original: serde_json::Value,
    /// RFC 3339 UTC.
    pub failed_at: String,
}

/// Topic, partition and offset of a consumed event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SourcePosition {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// An event on `ct.lobes.v1`: the lobe bundle of a series is in the store, ready for the
/// networks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LobesEvent {
    /// [`EVENT_SCHEMA_VERSION`].
    pub schema_version: String,
    pub hospital: String,
    pub study_uid: String,
    pub series_uid: String,
    pub patient_key: Option<String>,
    /// The [`SeriesEvent::revision`] the bundle was made from.
    pub series_revision: u32,
    /// Key of the bundle (safetensors, zstd) in the object store.
    pub bundle_key: String,
    pub bundle_bytes: u64,
    /// Facts of the series: slices, spacing, lung volume, batch-effect statistics.
    pub series: crate::report::SeriesSummary,
    /// Version of the preprocessing that wrote the bundle; part of the bundle key.
    pub preprocess_version: String,
    /// Milliseconds spent so far; later stages fill their own fields.
    pub timings_ms: crate::report::Timings,
}

/// An event on `ct.results.v1`: what the networks found in one series, or why the series
/// could not be analysed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ResultsEvent {
    /// [`EVENT_SCHEMA_VERSION`].
    pub schema_version: String,
    pub hospital: String,
    pub study_uid: String,
    pub series_uid: String,
    pub patient_key: Option<String>,
    pub series_revision: u32,
    #[serde(flatten)]
    pub outcome: SeriesOutcome,
}

/// Result of one series.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum SeriesOutcome {
    /// The networks ran.
    Analysed(Box<Analysis>),
    /// A stage rejected the series; the report shows the hospital the reason.
    Rejected { reason: ReasonCode, detail: String },
}

/// The networks' findings for one series.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Analysis {
    /// The series report, exactly as `lungstream analyze` writes it to `report.json`:
    /// model, decision, probabilities, infected share and volume, model-free share,
    /// worst slices, every lobe's raw and softened scores, timings and warnings.
    pub report: crate::report::Report,
    /// Key of the maps object (safetensors, zstd) in the object store: every lobe's
    /// attention, coarse and fine infection maps and infected mask.
    pub maps_key: String,
    /// Keys of the overlay images (PNG) in the object store, in the order of
    /// `report.worst_slices`.
    pub overlay_keys: Vec<String>,
}

/// An event on `ct.reports.v1`, for analysts: one study's result, with no DICOM patient
/// attribute.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReportEvent {
    /// [`EVENT_SCHEMA_VERSION`].
    pub schema_version: String,
    pub hospital: String,
    pub study_uid: String,
    pub patient_key: Option<String>,
    /// The series the report is about, chosen among the study's series.
    pub series_uid: String,
    /// The study's other series, not reported on.
    pub other_series: Vec<String>,
    /// `analysed` or `rejected`.
    pub status: String,
    /// The reason code when rejected.
    pub reason: Option<ReasonCode>,
    pub decision: Option<crate::report::Decision>,
    pub probabilities: Option<crate::report::Probabilities>,
    pub infected_percent: Option<crate::report::PerSide>,
    pub infected_ml: Option<crate::report::PerSide>,
    /// Id and version (weights hash) of the model.
    pub model_id: Option<String>,
    pub model_version: Option<String>,
    pub research_only: Option<bool>,
    /// Key of the full report (JSON) in the object store.
    pub report_key: Option<String>,
    pub timings_ms: crate::report::Timings,
    /// RFC 3339 UTC.
    pub reported_at: String,
}

/// Generates the JSON Schema of the event type `T`, pretty-printed with a final newline.
pub fn json_schema<T: JsonSchema>() -> String {
    let schema = schemars::schema_for!(T);
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema serialises");
    text.push('\n');
    text
}

/// Returns the checked-in schema files: file name and generated text.
pub fn checked_in_schemas() -> Vec<(&'static str, String)> {
    vec![
        ("report.v1.schema.json", crate::report::report_json_schema()),
        ("instance-event.v1.schema.json", json_schema::<InstanceEvent>()),
        ("series-event.v1.schema.json", json_schema::<SeriesEvent>()),
        ("dead-letter-event.v1.schema.json", json_schema::<DeadLetterEvent>()),
        ("lobes-event.v1.schema.json", json_schema::<LobesEvent>()),
        ("results-event.v1.schema.json", json_schema::<ResultsEvent>()),
        ("report-event.v1.schema.json", json_schema::<ReportEvent>()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_in_event_schemas_match_types() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("json");
        let bless = std::env::var_os("LUNGSTREAM_BLESS").is_some();
        for (name, generated) in checked_in_schemas() {
            let path = dir.join(name);
            if bless {
                std::fs::write(&path, &generated).unwrap();
            }
            let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                checked_in == generated,
                "{} is out of date: run `LUNGSTREAM_BLESS=1 cargo test -p lungstream-schemas` and commit it",
                path.display()
            );
        }
    }

    #[test]
    fn major_version_decides_acceptance() {
        assert!(check_schema_version("1.0").is_ok());
        assert!(check_schema_version("1.7").is_ok());
        let error = check_schema_version("2.0").unwrap_err();
        assert_eq!(error.expected_major, 1);
        assert!(check_schema_version("1").is_err());
        assert!(check_schema_version("one.zero").is_err());
        assert_eq!(peek_schema_version(br#"{"schema_version":"3.1","x":1}"#).as_deref(), Some("3.1"));
        assert_eq!(peek_schema_version(b"not json"), None);
    }

    #[test]
    fn rejected_result_is_flat() {
        let event = ResultsEvent {
            schema_version: EVENT_SCHEMA_VERSION.into(),
            hospital: "north".into(),
            study_uid: "1.2".into(),
            series_uid: "1.2.3".into(),
            patient_key: None,
            series_revision: 1,
            outcome: SeriesOutcome::Rejected {
                reason: ReasonCode::NoLungs,
                detail: "no lungs found".into(),
            },
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["status"], "rejected");
        assert_eq!(json["reason"], "no_lungs");
        let back: ResultsEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn instance_event_json_is_flat() {
        let event = InstanceEvent {
            schema_version: EVENT_SCHEMA_VERSION.into(),
            hospital: "north".into(),
            study_uid: "1.2".into(),
            series_uid: "1.2.3".into(),
            received_at: "2026-12-05T06:00:00Z".into(),
            body: InstanceBody::Commit {
                trigger: CommitTrigger::AssociationReleased,
            },
        };
        let json: serde_json::Value = serde_json::to_value(&event).unwrap();
        assert_eq!(json["kind"], "commit");
        assert_eq!(json["trigger"], "association_released");
        let back: InstanceEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
    }
}
