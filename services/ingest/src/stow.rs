//! DICOMweb STOW-RS (PS3.18 §10.5): `POST /studies` and `POST /studies/{study}` with a
//! `multipart/related; type="application/dicom"` body, with one result per instance in
//! DICOM JSON. Also `POST /studies/{study}/series/{series}/commit`, this service's own
//! extension, by which a client says a series is complete.
//!
//! The hospital is the one the bearer token belongs to. Each part is checked and stored
//! on its own: good instances are stored even when others in the request fail, and each
//! failure names its reason code.
//!
//! Status codes: 200 when every instance was stored, 202 when some were, 409 when none
//! was, 503 (with `Retry-After`) when none was and the cause may pass (store or broker
//! down), 400/415 for a body that is not a multipart/related request, 401 without a
//! valid token, 413 over the request size limit.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use futures::StreamExt;
use lungstream_schemas::events::{CommitTrigger, IngestSource};
use lungstream_schemas::ReasonCode;
use serde_json::{json, Map, Value};
use tracing::Instrument;

use crate::intake::{Accepted, Intake, Rejected};
use crate::multipart;
use crate::tenants::Tenants;

/// Media type of DICOM JSON responses.
pub const DICOM_JSON: &str = "application/dicom+json";

/// Private creator of the elements this service adds to its responses.
pub const PRIVATE_CREATOR: &str = "LUNGSTREAM 1";

/// Private element (0009,1010) with the whole reason of a failed instance, which the
/// _Error Comment_ would cut at 64 characters.
pub const FULL_REASON_TAG: &str = "00091010";

/// Returns the first `max` characters of `text`.
fn truncate_chars(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// Most parts read from one request.
const MAX_PARTS: usize = 100_000;

/// Instances checked and stored at the same time within one request.
const CONCURRENCY: usize = 8;

/// State of the STOW-RS routes.
pub struct StowState {
    pub intake: Intake,
    pub tenants: Arc<Tenants>,
    /// Largest request body (`limits.max_request_bytes`), named in the 413 response.
    pub max_request_bytes: u64,
}

/// Builds the STOW-RS and commit routes; `max_request_bytes` limits a request body.
pub fn router(state: Arc<StowState>, max_request_bytes: u64) -> Router {
    Router::new()
        .route("/studies", post(store_any_study))
        .route("/studies/{study}", post(store_one_study))
        .route("/studies/{study}/series/{series}/commit", post(commit_series))
        .layer(DefaultBodyLimit::max(usize::try_from(max_request_bytes).unwrap_or(usize::MAX)))
        .with_state(state)
}

/// The result of one part.
enum PartResult {
    Stored(Accepted),
    Failed { rejected: Rejected },
}

async fn store_any_study(State(state): State<Arc<StowState>>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    match body {
        Ok(body) => store(state, headers, body, None).await,
        Err(rejection) => body_rejected(&state, &rejection),
    }
}

async fn store_one_study(State(state): State<Arc<StowState>>, Path(study): Path<String>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    match body {
        Ok(body) => store(state, headers, body, Some(study)).await,
        Err(rejection) => body_rejected(&state, &rejection),
    }
}

/// Builds the response to a body that could not be read: over the size limit (413, naming the limit) or
/// broken off by the client.
fn body_rejected(state: &StowState, rejection: &BytesRejection) -> Response {
    let status = rejection.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        tracing::warn!(limit = state.max_request_bytes, "A STOW-RS request was larger than the limit.");
        return (
            status,
            format!(
                "too_large: the request body is larger than the limit of {} bytes (limits.max_request_bytes); send the instances in smaller requests, as `lungstream ingest` does\n",
                state.max_request_bytes
            ),
        )
            .into_response();
    }
    tracing::warn!("A STOW-RS request body could not be read: {}", rejection.body_text());
    (status, format!("{}\n", rejection.body_text())).into_response()
}

/// Returns the hospital of the request's bearer token, or the 401 response.
fn authenticate(tenants: &Tenants, headers: &HeaderMap) -> Result<String, Box<Response>> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    match token.and_then(|t| tenants.by_token(t)) {
        Some(hospital) => Ok(hospital.to_string()),
        None => Err(Box::new(
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer realm=\"lungstream\"")],
                "a valid bearer token is required\n",
            )
                .into_response(),
        )),
    }
}

async fn store(state: Arc<StowState>, headers: HeaderMap, body: Bytes, study: Option<String>) -> Response {
    let hospital = match authenticate(&state.tenants, &headers) {
        Ok(h) => h,
        Err(response) => return *response,
    };
    // Each request starts a trace; the instance events carry it to the assembler.
    let span = tracing::info_span!("stow_request", hospital = %hospital, bytes = body.len());
    store_parts(state, headers, body, study, hospital).instrument(span).await
}

async fn store_parts(state: Arc<StowState>, headers: HeaderMap, body: Bytes, study: Option<String>, hospital: String) -> Response {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let related = match multipart::parse_content_type(content_type) {
        Ok(r) => r,
        Err(e) => return (StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("{e}\n")).into_response(),
    };
    if let Some(root) = &related.root_type {
        if root != "application/dicom" {
            return (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("only type=\"application/dicom\" is accepted, not {root:?}\n"),
            )
                .into_response();
        }
    }
    let parts = match multipart::parse(&body, &related.boundary, MAX_PARTS) {
        Ok(p) if p.is_empty() => return (StatusCode::BAD_REQUEST, "the multipart body has no parts\n").into_response(),
        Ok(p) => p,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("cannot read the multipart body: {e}\n")).into_response(),
    };
    let intake = &state.intake;
    let hospital_ref = hospital.as_str();
    let study_ref = study.as_deref();
    let results: Vec<PartResult> = futures::stream::iter(parts.into_iter().enumerate())
        .map(|(i, part)| async move {
            let label = format!("part {}", i + 1);
            if let Some(media) = part.media_type() {
                if media != "application/dicom" {
                    intake.count_rejected(hospital_ref, IngestSource::StowRs, ReasonCode::InvalidDicom);
                    let rejected = Rejected {
                        reason: ReasonCode::InvalidDicom,
                        detail: format!("{label} has type {media}, not application/dicom"),
                        sop_instance_uid: None,
                        sop_class_uid: None,
                        transient: false,
                    };
                    return PartResult::Failed { rejected };
                }
            }
            match intake.accept_in_study(hospital_ref, part.body, IngestSource::StowRs, &label, study_ref).await {
                Ok(accepted) => PartResult::Stored(accepted),
                Err(rejected) => PartResult::Failed { rejected },
            }
        })
        .buffered(CONCURRENCY)
        .collect()
        .await;
    respond(&hospital, &results)
}

/// Checks the form of a DICOM UID: at most 64 characters, components of digits separated
/// by dots, no leading zero in a component of more than one digit.
pub fn valid_uid(uid: &str) -> bool {
    uid.len() <= 64
        && uid
            .split('.')
            .all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()) && (c.len() == 1 || !c.starts_with('0')))
}

/// Returns the DICOM _Failure Reason_ (0008,1197) for a refusal.
pub fn failure_reason(rejected: &Rejected) -> u16 {
    if rejected.transient {
        return 0xA700; // Out of resources
    }
    match rejected.reason {
        ReasonCode::NotCt => 0x0122,               // SOP class not supported
        ReasonCode::ConflictingInstance => 0x0111, // Duplicate SOP instance
        _ => 0xC000,                               // Cannot understand
    }
}

fn respond(hospital: &str, results: &[PartResult]) -> Response {
    let mut referenced = Vec::new();
    let mut failed = Vec::new();
    let mut transient = false;
    for result in results {
        match result {
            PartResult::Stored(a) => referenced.push(json!({
                "00081150": {"vr": "UI", "Value": [a.sop_class_uid]},
                "00081155": {"vr": "UI", "Value": [a.sop_instance_uid]},
            })),
            PartResult::Failed { rejected } => {
                transient |= rejected.transient;
                let mut item = Map::new();
                if let Some(class) = &rejected.sop_class_uid {
                    item.insert("00081150".into(), json!({"vr": "UI", "Value": [class]}));
                }
                if let Some(uid) = &rejected.sop_instance_uid {
                    item.insert("00081155".into(), json!({"vr": "UI", "Value": [uid]}));
                }
                item.insert("00081197".into(), json!({"vr": "US", "Value": [failure_reason(rejected)]}));
                // Error Comment (LO, at most 64 characters): the reason code first, so
                // clients can match on it. The whole sentence goes in a private element.
                let comment = format!("{}: {}", rejected.reason.as_str(), rejected.detail);
                item.insert("00000902".into(), json!({"vr": "LO", "Value": [truncate_chars(&comment, 64)]}));
                item.insert("00090010".into(), json!({"vr": "LO", "Value": [PRIVATE_CREATOR]}));
                item.insert(FULL_REASON_TAG.into(), json!({"vr": "UT", "Value": [comment]}));
                failed.push(Value::Object(item));
            }
        }
    }
    tracing::info!(hospital, stored = referenced.len(), failed = failed.len(), "STOW-RS request handled.");
    let status = if failed.is_empty() {
        StatusCode::OK
    } else if !referenced.is_empty() {
        StatusCode::ACCEPTED
    } else if transient {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::CONFLICT
    };
    let mut body = Map::new();
    if !referenced.is_empty() {
        body.insert("00081199".into(), json!({"vr": "SQ", "Value": referenced}));
    }
    if !failed.is_empty() {
        body.insert("00081198".into(), json!({"vr": "SQ", "Value": failed}));
    }
    let mut response = (status, [(header::CONTENT_TYPE, DICOM_JSON)], Value::Object(body).to_string()).into_response();
    // Some instances may succeed when sent again, so give the time to wait.
    if transient {
        response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
    }
    response
}

async fn commit_series(State(state): State<Arc<StowState>>, Path((study, series)): Path<(String, String)>, headers: HeaderMap) -> Response {
    let hospital = match authenticate(&state.tenants, &headers) {
        Ok(h) => h,
        Err(response) => return *response,
    };
    if !valid_uid(&study) || !valid_uid(&series) {
        return (StatusCode::BAD_REQUEST, "study and series must be DICOM UIDs\n").into_response();
    }
    let span = tracing::info_span!("commit_request", hospital = %hospital);
    let published = state
        .intake
        .commit(&hospital, &study, &series, CommitTrigger::ExplicitCommit)
        .instrument(span)
        .await;
    match published {
        Ok(()) => (StatusCode::ACCEPTED, "commit recorded\n").into_response(),
        Err(e) => {
            tracing::warn!("Cannot publish a commit: {e}");
            (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "5")], "the broker is unavailable; try again\n").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_form_is_checked() {
        assert!(valid_uid("1.2.840.10008.5.1.4.1.1.2"));
        assert!(valid_uid("1.0.3"));
        assert!(!valid_uid("1.02.3"));
        assert!(!valid_uid("1..2"));
        assert!(!valid_uid(""));
        assert!(!valid_uid("1.2.a"));
        assert!(!valid_uid(&"1.".repeat(40)));
    }

    #[test]
    fn error_comment_fits_lo() {
        let long = "invalid_attribute: part 1 belongs to another study than the one in the URL";
        assert_eq!(truncate_chars(long, 64).chars().count(), 64);
        assert_eq!(truncate_chars("short", 64), "short");
    }
}
