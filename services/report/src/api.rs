//! The report service's HTTP API. Every request needs `Authorization: Bearer <token>`.
//! The token decides the hospital, and a hospital can read only its own studies.
//!
//! - `GET /api/v1/worklist?sort=severity|time&decision=&status=&limit=&offset=`
//! - `GET /api/v1/studies/{study_uid}`
//! - `GET /api/v1/studies/{study_uid}/report.html`
//! - `GET /api/v1/studies/{study_uid}/overlays/{name}`
//! - `GET /api/v1/aggregates?days=30`
//!
//! Errors are JSON `{"error": "..."}`: 400 for invalid parameters, 401 without a valid
//! token, 403 for a study that only another hospital has, 404 for an unknown study or
//! file, 503 while the database is not connected or the store or database fails.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use lungstream_runtime::tenants::Tenants;
use lungstream_runtime::{Store, StoreError};
use lungstream_schemas::events::SeriesOutcome;
use lungstream_schemas::report::{PerSide, Probabilities};
use serde::{Deserialize, Serialize};

use crate::config::WebConfig;
use crate::db::{
    parse_decision, Database, Sort, Status, StudyRow, WorklistQuery, MAX_AGGREGATE_DAYS,
};

/// Largest page of the worklist.
pub const MAX_LIMIT: i64 = 500;

/// State shared by the handlers.
pub struct ApiState {
    /// Set once the database is connected and migrated.
    pub database: OnceLock<Database>,
    pub store: Store,
    pub tenants: Tenants,
    /// Settings of the browser pages.
    pub web: WebConfig,
    /// SHA-256 of every configured reader token, with its hospital: a browser session
    /// stays valid only while the token it was opened with is configured.
    pub credentials: std::collections::HashMap<[u8; 32], String>,
}

impl ApiState {
    pub(crate) fn database(&self) -> Result<&Database, ApiError> {
        self.database.get().ok_or_else(|| {
            ApiError::Unavailable("the database is not connected yet; try again shortly".into())
        })
    }
}

/// Builds the router of the API.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/v1/worklist", get(worklist))
        .route("/api/v1/studies/{study_uid}", get(study))
        .route("/api/v1/studies/{study_uid}/report.html", get(report_html))
        .route("/api/v1/studies/{study_uid}/overlays/{name}", get(overlay))
        .route("/api/v1/aggregates", get(aggregates))
        .with_state(state)
}

/// An error response.
#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    Unauthorized,
    Forbidden(String),
    NotFound(String),
    Unavailable(String),
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        tracing::warn!("Database query failed: {error}");
        ApiError::Unavailable("the database failed; try again shortly".into())
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        tracing::warn!("Object store request failed: {error}");
        ApiError::Unavailable("the object store failed; try again shortly".into())
    }
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

impl ApiError {
    /// Returns the HTTP status and the message shown to the caller.
    pub(crate) fn status_and_message(self) -> (StatusCode, String) {
        match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "a valid bearer token is required".to_string(),
            ),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = self.status_and_message();
        let mut response = (status, Json(ErrorBody { error: message })).into_response();
        response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"lungstream\""),
            );
        }
        response
    }
}

/// Returns the hospital of the request's bearer token.
fn authenticate(tenants: &Tenants, headers: &HeaderMap) -> Result<String, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    token
        .and_then(|t| tenants.by_token(t))
        .map(str::to_string)
        .ok_or(ApiError::Unauthorized)
}

/// Marks a response as not for caches, because every response concerns patients.
pub(crate) fn private(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// One study in the worklist and in the study view. It carries the pseudonymous patient
/// key and no other patient attribute.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StudySummary {
    pub hospital: String,
    pub study_uid: String,
    pub patient_key: Option<String>,
    /// `analysed` or `rejected`.
    pub status: String,
    /// Reason code and detail of a rejected study.
    pub reason: Option<String>,
    pub detail: Option<String>,
    /// `healthy`, `covid19` or `other_disease`; `null` when rejected.
    pub decision: Option<String>,
    pub probabilities: Option<Probabilities>,
    /// Infected share of the lung, percent, per side and both.
    pub infected_percent: Option<PerSide>,
    /// Infected volume, mL, per side and both.
    pub infected_ml: Option<PerSide>,
    /// Sort key of the worklist: the infected share of both lungs; `null` when rejected.
    pub severity: Option<f64>,
    /// The series the report is about.
    pub series_uid: String,
    pub series_revision: i64,
    pub model_id: Option<String>,
    pub model_version: Option<String>,
    pub research_only: Option<bool>,
    /// The study's other series.
    pub other_series: Vec<String>,
    /// Key of `report.json` in the object store; `null` when rejected.
    pub report_key: Option<String>,
    /// RFC 3339 UTC: the first result of the study, and the report's current choice.
    pub first_seen_at: String,
    pub reported_at: String,
}

fn per_side(right: Option<f64>, left: Option<f64>, total: Option<f64>) -> Option<PerSide> {
    Some(PerSide {
        right: right?,
        left: left?,
        total: total?,
    })
}

impl From<&StudyRow> for StudySummary {
    fn from(row: &StudyRow) -> Self {
        let probabilities = match (row.p_diseased, row.p_covid) {
            (Some(diseased), Some(covid19)) => Some(Probabilities { diseased, covid19 }),
            _ => None,
        };
        StudySummary {
            hospital: row.hospital.clone(),
            study_uid: row.study_uid.clone(),
            patient_key: row.patient_key.clone(),
            status: row.status.clone(),
            reason: row.reason.clone(),
            detail: row.detail.clone(),
            decision: row.decision.clone(),
            probabilities,
            infected_percent: per_side(
                row.infected_percent_right,
                row.infected_percent_left,
                row.infected_percent,
            ),
            infected_ml: per_side(row.infected_ml_right, row.infected_ml_left, row.infected_ml),
            severity: row.severity,
            series_uid: row.series_uid.clone(),
            series_revision: row.series_revision,
            model_id: row.model_id.clone(),
            model_version: Some(row.model_version.clone()).filter(|v| !v.is_empty()),
            research_only: row.research_only,
            other_series: row.other_series.clone(),
            report_key: row.report_key.clone(),
            first_seen_at: lungstream_runtime::telemetry::format_rfc3339(row.first_seen_at),
            reported_at: lungstream_runtime::telemetry::format_rfc3339(row.reported_at),
        }
    }
}

/// One result received for a study.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeriesEntry {
    pub series_uid: String,
    pub series_revision: i64,
    pub model_version: Option<String>,
    pub status: String,
    pub reason: Option<String>,
    pub detail: Option<String>,
    pub decision: Option<String>,
    pub slices_with_lungs: Option<i32>,
    /// RFC 3339 UTC.
    pub received_at: String,
}

/// The study view: the study, its report (the `report.json` of the chosen series) and
/// every result received for it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StudyDetail {
    #[serde(flatten)]
    pub study: StudySummary,
    /// `null` for a rejected study.
    pub report: Option<serde_json::Value>,
    /// Every series result of the study, oldest first.
    pub series: Vec<SeriesEntry>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct WorklistParams {
    pub sort: Option<String>,
    pub decision: Option<String>,
    pub status: Option<String>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

impl WorklistParams {
    pub(crate) fn parse(self) -> Result<WorklistQuery, ApiError> {
        let sort = match self.sort.as_deref() {
            None | Some("severity") => Sort::Severity,
            Some("time") => Sort::Time,
            Some(other) => {
                return Err(ApiError::BadRequest(format!(
                    "unknown sort {other:?}: expected severity or time"
                )))
            }
        };
        let decision = self
            .decision
            .filter(|d| !d.is_empty())
            .map(|d| parse_decision(&d))
            .transpose()
            .map_err(ApiError::BadRequest)?;
        let status = self
            .status
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<Status>())
            .transpose()
            .map_err(ApiError::BadRequest)?;
        let limit = self.limit.unwrap_or(50);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::BadRequest(format!(
                "limit {limit} is out of range: expected 1 to {MAX_LIMIT}"
            )));
        }
        let offset = self.offset.unwrap_or(0);
        if offset < 0 {
            return Err(ApiError::BadRequest(format!("offset {offset} is negative")));
        }
        Ok(WorklistQuery {
            sort,
            decision,
            status,
            limit,
            offset,
        })
    }
}

async fn worklist(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    params: Result<Query<WorklistParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let hospital = authenticate(&state.tenants, &headers)?;
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let query = params.parse()?;
    let rows = state.database()?.worklist(&hospital, &query).await?;
    let studies: Vec<StudySummary> = rows.iter().map(StudySummary::from).collect();
    Ok(private(Json(studies).into_response()))
}

/// Returns the caller's study: 404 when no hospital has one of this UID, 403 when only
/// other hospitals do.
pub(crate) async fn find_study(
    state: &ApiState,
    hospital: &str,
    study_uid: &str,
) -> Result<StudyRow, ApiError> {
    let database = state.database()?;
    if let Some(row) = database.study(hospital, study_uid).await? {
        return Ok(row);
    }
    if database.study_hospitals(study_uid).await?.is_empty() {
        Err(ApiError::NotFound(format!("study {study_uid} not found")))
    } else {
        Err(ApiError::Forbidden(format!(
            "study {study_uid} belongs to another hospital"
        )))
    }
}

async fn study(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(study_uid): Path<String>,
) -> Result<Response, ApiError> {
    let hospital = authenticate(&state.tenants, &headers)?;
    let detail = study_detail(&state, &hospital, &study_uid).await?;
    Ok(private(Json(detail).into_response()))
}

/// Loads the caller's study with its report and every result received for it.
pub(crate) async fn study_detail(
    state: &ApiState,
    hospital: &str,
    study_uid: &str,
) -> Result<StudyDetail, ApiError> {
    let row = find_study(state, hospital, study_uid).await?;
    let report = match &row.report_key {
        Some(key) => match state.store.get_opt(key).await? {
            Some(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| {
                tracing::warn!(report_key = %key, "Stored report is not JSON: {e}");
                ApiError::Unavailable(format!(
                    "the stored report of study {study_uid} is unreadable"
                ))
            })?),
            None => {
                tracing::warn!(report_key = %key, study_uid, "The study's report.json is missing from the store.");
                None
            }
        },
        None => None,
    };
    let results = state.database()?.results(hospital, study_uid).await?;
    let series = results
        .iter()
        .map(|r| SeriesEntry {
            series_uid: r.series_uid.clone(),
            series_revision: r.series_revision,
            model_version: Some(r.model_version.clone()).filter(|v| !v.is_empty()),
            status: r.status.clone(),
            reason: r.reason.clone(),
            detail: r.detail.clone(),
            decision: r.decision.clone(),
            slices_with_lungs: r.slices_with_lungs,
            received_at: lungstream_runtime::telemetry::format_rfc3339(r.received_at),
        })
        .collect();
    Ok(StudyDetail {
        study: StudySummary::from(&row),
        report,
        series,
    })
}

/// Returns the report key of an analysed study, or 404 naming the rejection.
fn report_key(row: &StudyRow) -> Result<&str, ApiError> {
    row.report_key.as_deref().ok_or_else(|| {
        ApiError::NotFound(format!(
            "study {} was rejected ({}) and has no report",
            row.study_uid,
            row.reason.as_deref().unwrap_or("no reason recorded")
        ))
    })
}

async fn report_html(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(study_uid): Path<String>,
) -> Result<Response, ApiError> {
    let hospital = authenticate(&state.tenants, &headers)?;
    let html = stored_report_html(&state, &hospital, &study_uid).await?;
    Ok(private(
        ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response(),
    ))
}

/// Loads the self-contained `report.html` of the caller's study.
pub(crate) async fn stored_report_html(
    state: &ApiState,
    hospital: &str,
    study_uid: &str,
) -> Result<Bytes, ApiError> {
    let row = find_study(state, hospital, study_uid).await?;
    let json_key = report_key(&row)?;
    let html_key = format!(
        "{}report.html",
        json_key.strip_suffix("report.json").unwrap_or(json_key)
    );
    state.store.get_opt(&html_key).await?.ok_or_else(|| {
        ApiError::NotFound(format!(
            "the report page of study {study_uid} is not in the store"
        ))
    })
}

async fn overlay(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((study_uid, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let hospital = authenticate(&state.tenants, &headers)?;
    let png = overlay_png(&state, &hospital, &study_uid, &name).await?;
    Ok(private(
        ([(header::CONTENT_TYPE, "image/png")], png).into_response(),
    ))
}

/// Loads one overlay PNG listed in the report of the caller's study.
pub(crate) async fn overlay_png(
    state: &ApiState,
    hospital: &str,
    study_uid: &str,
    name: &str,
) -> Result<Bytes, ApiError> {
    let row = find_study(state, hospital, study_uid).await?;
    report_key(&row)?;
    let not_listed = || {
        ApiError::NotFound(format!(
            "overlay {name:?} is not in the report of study {study_uid}"
        ))
    };
    let result = state
        .database()?
        .result(hospital, study_uid, &row.choice())
        .await?
        .ok_or_else(not_listed)?;
    let event = result.event().map_err(|e| {
        tracing::warn!(
            study_uid,
            "The stored result of the study no longer parses: {e}"
        );
        ApiError::Unavailable(format!(
            "the stored result of study {study_uid} is unreadable"
        ))
    })?;
    let SeriesOutcome::Analysed(analysis) = event.outcome else {
        return Err(not_listed());
    };
    let pairs = crate::service::overlay_pairs(&analysis);
    let (_, key) = pairs
        .iter()
        .find(|(slice, _)| slice.overlay == name)
        .ok_or_else(not_listed)?;
    state.store.get_opt(key).await?.ok_or_else(|| {
        ApiError::NotFound(format!(
            "overlay {name:?} of study {study_uid} is not in the store"
        ))
    })
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct AggregateParams {
    pub days: Option<i32>,
}

/// Returns the window of the aggregates: 30 days unless `days` requests 1 to
/// [`MAX_AGGREGATE_DAYS`].
pub(crate) fn check_days(days: Option<i32>) -> Result<i32, ApiError> {
    let days = days.unwrap_or(30);
    if !(1..=MAX_AGGREGATE_DAYS).contains(&days) {
        return Err(ApiError::BadRequest(format!(
            "days {days} is out of range: expected 1 to {MAX_AGGREGATE_DAYS}"
        )));
    }
    Ok(days)
}

async fn aggregates(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    params: Result<Query<AggregateParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let hospital = authenticate(&state.tenants, &headers)?;
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let days = check_days(params.days)?;
    let aggregates = state.database()?.aggregates(&hospital, days).await?;
    Ok(private(Json(aggregates).into_response()))
}
