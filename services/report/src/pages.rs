//! Web pages for radiologists, rendered on the server: the worklist, a study page and a
//! hospital dashboard. They need no script and load nothing from elsewhere (styles are
//! inline, charts are inline SVG, overlays come from this service), so they work on a
//! hospital network without internet access.
//!
//! A reader logs in at `/login` with the bearer token of their hospital. The service then
//! sets an `HttpOnly`, `SameSite=Strict` session cookie whose SHA-256 is stored in the
//! database; the pages show only that hospital's studies.
//!
//! - `GET /worklist?sort=severity|time&decision=&status=&offset=`
//! - `GET /studies/{study_uid}` (and `/report.html`, `/overlays/{name}` below it)
//! - `GET /dashboard?days=30`
//! - `GET /login`, `POST /login`, `POST /logout`

use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Form, Router};
use base64::Engine;
use lungstream_schemas::report::{PerSide, Report};
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::api::{self, AggregateParams, ApiError, ApiState, StudyDetail, StudySummary, WorklistParams};
use crate::db::{parse_decision, Aggregates, BackgroundStats, Sort};
use crate::html::escape;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "lungstream_session";

/// Rows of one worklist page.
const PAGE_ROWS: i64 = 50;

/// Days of history the batch-effect comparison of the study page looks at.
const BACKGROUND_DAYS: i32 = 30;

/// Builds the router of the pages.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/", get(|| async { see_other("/worklist") }))
        .route("/login", get(login_form).post(login))
        .route("/logout", axum::routing::post(logout))
        .route("/worklist", get(worklist))
        .route("/studies/{study_uid}", get(study))
        .route("/studies/{study_uid}/report.html", get(report_html))
        .route("/studies/{study_uid}/overlays/{name}", get(overlay))
        .route("/dashboard", get(dashboard))
        .with_state(state)
}

/// Outcome of a page handler other than its page.
enum PageError {
    /// No valid session: go to the login page, then back to `next`.
    Login { next: String },
    Api(ApiError),
}

impl From<ApiError> for PageError {
    fn from(error: ApiError) -> Self {
        PageError::Api(error)
    }
}

impl From<sqlx::Error> for PageError {
    fn from(error: sqlx::Error) -> Self {
        PageError::Api(error.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            PageError::Login { next } => {
                see_other(&format!("/login?next={}", encode_component(&next)))
            }
            PageError::Api(error) => {
                let (status, message) = error.status_and_message();
                let title = status.canonical_reason().unwrap_or("Error");
                let body = format!(
                    "<h1>{}</h1><p class=\"error\">{}</p><p><a href=\"/worklist\">Back to the worklist</a></p>",
                    escape(title),
                    escape(&message)
                );
                page(status, title, None, &body)
            }
        }
    }
}

/// Headers of every page: nothing is cached, nothing is loaded from elsewhere, and no
/// other site may frame the page.
fn secure(response: Response) -> Response {
    let mut response = api::private(response);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Not `no-referrer`: with it, browsers post forms with `Origin: null`, which the
    // same-origin check of the forms rejects.
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    secure(response)
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#1b1b1b;background:#fafafa}\
header{background:#263238;color:#fff;padding:0.6em 1.5em;display:flex;gap:1.5em;align-items:center}\
header a{color:#fff}header .who{margin-left:auto}header form{margin:0}\
main{padding:1em 1.5em;max-width:1200px}\
table{border-collapse:collapse;margin:0.5em 0;background:#fff}td,th{border:1px solid #ccc;padding:0.3em 0.6em;text-align:right}\
th{background:#eceff1}td.l,th.l{text-align:left}\
.bar{display:inline-block;height:0.8em;background:#c62828;vertical-align:middle}\
.d-healthy{color:#2e7d32}.d-covid19{color:#c62828;font-weight:bold}.d-other_disease{color:#ef6c00;font-weight:bold}.rejected{color:#616161}\
.decision{font-size:1.4em}.warning{background:#fdecea;border:2px solid #c62828;color:#8e0000;padding:0.6em;margin:1em 0;font-weight:bold}\
.note{background:#fff8e1;border:1px solid #f9a825;padding:0.6em;margin:1em 0}.error{color:#b71c1c;font-weight:bold}\
figure{display:inline-block;margin:0.5em;vertical-align:top;max-width:540px}figure img{max-width:100%;background:#000}\
figcaption{color:#444;font-size:0.9em}form.filters{margin:0.5em 0}form.filters label{margin-right:1em}\
.legend span{display:inline-block;width:0.9em;height:0.9em;margin:0 0.3em 0 1em;vertical-align:middle}\
.badge{background:#fdecea;color:#8e0000;border:1px solid #c62828;border-radius:3px;padding:0 0.3em;font-size:0.85em;white-space:nowrap}";

/// Wraps `body` in the page frame; `hospital` is the logged-in hospital, if any.
fn page(status: StatusCode, title: &str, hospital: Option<&str>, body: &str) -> Response {
    let mut out = String::with_capacity(body.len() + 2048);
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{} · lungstream</title><style>{STYLE}</style></head><body><header><b>lungstream</b>",
        escape(title)
    );
    if let Some(hospital) = hospital {
        let _ = write!(
            out,
            "<a href=\"/worklist\">Worklist</a><a href=\"/dashboard\">Dashboard</a><span class=\"who\">Hospital: <b id=\"hospital\">{}</b></span><form method=\"post\" action=\"/logout\"><button type=\"submit\">Log out</button></form>",
            escape(hospital)
        );
    }
    let _ = write!(out, "</header><main>{body}</main></body></html>");
    secure((status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], out).into_response())
}

/// Percent-encodes a query value or path segment.
fn encode_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

fn cookie_hash(value: &str) -> [u8; 32] {
    Sha256::digest(value.as_bytes()).into()
}

/// Maps the SHA-256 of every configured token to its hospital.
pub fn credential_hashes(tenants: &[crate::config::Tenant]) -> std::collections::HashMap<[u8; 32], String> {
    tenants
        .iter()
        .flat_map(|t| t.tokens.iter().map(|token| (cookie_hash(token.trim()), t.hospital.clone())))
        .collect()
}

/// Returns the session cookie's value, if the request has one.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == SESSION_COOKIE && !value.is_empty()).then_some(value)
        })
}

/// Returns the hospital of the request's session, or the way to the login page.
async fn session(state: &ApiState, headers: &HeaderMap, uri: &OriginalUri) -> Result<String, PageError> {
    let login = || PageError::Login {
        next: uri.0.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/worklist".into()),
    };
    let Some(value) = session_cookie(headers) else {
        return Err(login());
    };
    let Some((hospital, credential)) = state.database()?.session(&cookie_hash(value)).await? else {
        return Err(login());
    };
    // A token removed from the configuration (rotated, or its hospital gone) ends the
    // sessions opened with it.
    let still_valid = <[u8; 32]>::try_from(credential.as_slice())
        .ok()
        .and_then(|c| state.credentials.get(&c))
        .is_some_and(|h| *h == hospital);
    if !still_valid {
        tracing::info!(hospital, "A browser session was rejected: its token is no longer configured.");
        return Err(login());
    }
    Ok(hospital)
}

/// Accepts only a path on this site as the page to return to after login.
fn local_path(next: Option<&str>) -> &str {
    match next {
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && !path.contains('\\')
                && !path.chars().any(char::is_control) =>
        {
            path
        }
        _ => "/worklist",
    }
}

/// Rejects a form posted from a page of another site: the browser's `Origin` must name
/// this host.
fn same_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let origin_host = origin.split_once("://").map(|(_, rest)| rest).unwrap_or("");
    if origin_host.eq_ignore_ascii_case(host) {
        Ok(())
    } else {
        tracing::warn!(origin, host, "Rejected a form posted from another site.");
        Err(ApiError::Forbidden("the form was posted from another site".into()))
    }
}

#[derive(Debug, Default, Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

fn login_page(status: StatusCode, next: &str, message: Option<&str>) -> Response {
    let mut body = String::from("<h1>Log in</h1>");
    if let Some(message) = message {
        let _ = write!(body, "<p class=\"error\" id=\"login-error\">{}</p>", escape(message));
    }
    let _ = write!(
        body,
        "<p>Enter your hospital's reader token. It decides which hospital's studies you see.</p>\
         <form method=\"post\" action=\"/login\"><input type=\"hidden\" name=\"next\" value=\"{}\">\
         <label>Token <input type=\"password\" name=\"token\" id=\"token\" autocomplete=\"current-password\" required size=\"40\"></label> \
         <button type=\"submit\" id=\"login\">Log in</button></form>",
        escape(next)
    );
    page(status, "Log in", None, &body)
}

async fn login_form(query: Result<Query<LoginQuery>, QueryRejection>) -> Response {
    let next = query.ok().and_then(|Query(q)| q.next);
    login_page(StatusCode::OK, local_path(next.as_deref()), None)
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
    next: Option<String>,
}

async fn login(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Result<Response, PageError> {
    same_origin(&headers)?;
    let Form(form) = form.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let next = local_path(form.next.as_deref()).to_string();
    let Some(hospital) = state.tenants.by_token(form.token.trim()).map(str::to_string) else {
        tracing::warn!("A browser login failed: the token matches no hospital.");
        // Slows down guessing; tokens are long and random anyway.
        tokio::time::sleep(Duration::from_millis(500)).await;
        return Ok(login_page(StatusCode::UNAUTHORIZED, &next, Some("This token is not valid.")));
    };
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    let minutes = state.web.session_minutes.max(1);
    state
        .database()?
        .create_session(&cookie_hash(&value), &hospital, &cookie_hash(form.token.trim()), minutes)
        .await?;
    tracing::info!(hospital, "A reader logged in to the web pages.");
    let cookie = format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        minutes * 60,
        if state.web.secure_cookie { "; Secure" } else { "" }
    );
    let mut response = see_other(&next);
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("the cookie is ASCII"),
    );
    Ok(response)
}

async fn logout(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> Result<Response, PageError> {
    same_origin(&headers)?;
    if let Some(value) = session_cookie(&headers) {
        state.database()?.delete_session(&cookie_hash(value)).await?;
    }
    let mut response = see_other("/login");
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("lungstream_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    Ok(response)
}

fn decision_label(decision: Option<&str>) -> String {
    match decision.map(parse_decision) {
        Some(Ok(d)) => d.describe().to_string(),
        Some(Err(_)) => decision.unwrap_or_default().to_string(),
        None => "—".to_string(),
    }
}

fn number(value: Option<f64>, digits: usize) -> String {
    value.map_or_else(|| "—".to_string(), |v| format!("{v:.digits$}"))
}

/// Shortens an RFC 3339 time to minutes: `2026-12-05 11:42`.
fn short_time(rfc3339: &str) -> String {
    rfc3339.get(..16).map_or_else(|| rfc3339.to_string(), |t| t.replace('T', " "))
}

/// Query string of a worklist link.
fn worklist_href(sort: Sort, decision: &str, status: &str, offset: i64) -> String {
    format!(
        "/worklist?sort={}&amp;decision={}&amp;status={}&amp;offset={offset}",
        sort.as_str(),
        encode_component(decision),
        encode_component(status)
    )
}

fn select(name: &str, label: &str, current: &str, options: &[(&str, &str)]) -> String {
    let mut out = format!("<label>{label} <select name=\"{name}\" id=\"{name}\">");
    for (value, text) in options {
        let selected = if *value == current { " selected" } else { "" };
        let _ = write!(out, "<option value=\"{value}\"{selected}>{text}</option>");
    }
    out.push_str("</select></label>");
    out
}

async fn worklist(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    uri: OriginalUri,
    params: Result<Query<WorklistParams>, QueryRejection>,
) -> Result<Response, PageError> {
    let hospital = session(&state, &headers, &uri).await?;
    let Query(mut params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    params.limit = Some(PAGE_ROWS);
    let decision = params.decision.clone().unwrap_or_default();
    let status = params.status.clone().unwrap_or_default();
    let query = params.parse()?;
    let rows = state.database()?.worklist(&hospital, &query).await?;
    let studies: Vec<StudySummary> = rows.iter().map(StudySummary::from).collect();

    let mut body = String::from("<h1>Worklist</h1>");
    let _ = write!(
        body,
        "<form class=\"filters\" method=\"get\" action=\"/worklist\">{}{}{} <button type=\"submit\" id=\"apply\">Apply</button></form>",
        select("sort", "Order", query.sort.as_str(), &[("severity", "most infected first"), ("time", "latest first")]),
        select(
            "decision",
            "Decision",
            &decision,
            &[("", "any"), ("covid19", "COVID-19 pneumonia"), ("other_disease", "other lung disease"), ("healthy", "healthy")]
        ),
        select("status", "Status", &status, &[("", "any"), ("analysed", "analysed"), ("rejected", "rejected")]),
    );
    if studies.iter().any(|s| s.research_only == Some(true)) {
        body.push_str("<p class=\"warning\" id=\"research-banner\">Decisions marked \"research only\" come from models that are not for clinical decisions.</p>");
    }
    if studies.is_empty() {
        body.push_str("<p id=\"empty\">No studies match.</p>");
    } else {
        body.push_str(
            "<table id=\"worklist\"><tr><th class=\"l\">Infected (both lungs)</th><th class=\"l\">Decision</th><th>P(diseased)</th><th>P(COVID-19 | diseased)</th>\
             <th>Right lung infected, %</th><th>Left lung infected, %</th><th>Infected, mL (both lungs)</th><th class=\"l\">Patient key</th><th class=\"l\">Study</th><th class=\"l\">Arrived (UTC)</th><th class=\"l\">Model</th></tr>",
        );
        for s in &studies {
            let href = format!("/studies/{}", encode_component(&s.study_uid));
            let severity = match s.severity {
                Some(v) => format!(
                    "<span class=\"bar\" style=\"width:{:.0}px\"></span> {v:.1}%",
                    (v.clamp(0.0, 100.0) * 1.2).max(1.0)
                ),
                None => "—".to_string(),
            };
            let decision = if s.status == "rejected" {
                format!(
                    "<span class=\"rejected\">rejected: {}</span>",
                    escape(s.reason.as_deref().unwrap_or("no reason recorded"))
                )
            } else {
                format!(
                    "<span class=\"d-{}\">{}</span>",
                    escape(s.decision.as_deref().unwrap_or("")),
                    escape(&decision_label(s.decision.as_deref()))
                )
            };
            let (right, left) = match &s.infected_percent {
                Some(p) => (format!("{:.1}", p.right), format!("{:.1}", p.left)),
                None => ("—".into(), "—".into()),
            };
            let model = match (&s.model_id, s.research_only) {
                (Some(id), Some(true)) => format!("{} <span class=\"badge\">research only</span>", escape(id)),
                (Some(id), _) => escape(id),
                (None, _) => "—".to_string(),
            };
            let _ = write!(
                body,
                "<tr class=\"study\"><td class=\"l\">{severity}</td><td class=\"l\">{decision}</td><td>{}</td><td>{}</td><td>{right}</td><td>{left}</td><td>{}</td><td class=\"l\">{}</td><td class=\"l\"><a href=\"{href}\">{}</a></td><td class=\"l\">{}</td><td class=\"l\">{model}</td></tr>",
                number(s.probabilities.as_ref().map(|p| p.diseased), 3),
                number(s.probabilities.as_ref().map(|p| p.covid19), 3),
                number(s.infected_ml.as_ref().map(|m| m.total), 0),
                escape(s.patient_key.as_deref().unwrap_or("—")),
                escape(&s.study_uid),
                escape(&short_time(&s.first_seen_at)),
            );
        }
        body.push_str("</table>");
    }
    body.push_str("<p>");
    if query.offset > 0 {
        let _ = write!(
            body,
            "<a href=\"{}\">Previous page</a> ",
            worklist_href(query.sort, &decision, &status, (query.offset - PAGE_ROWS).max(0))
        );
    }
    if studies.len() as i64 == PAGE_ROWS {
        let _ = write!(
            body,
            "<a href=\"{}\">Next page</a>",
            worklist_href(query.sort, &decision, &status, query.offset + PAGE_ROWS)
        );
    }
    body.push_str("</p>");
    Ok(page(StatusCode::OK, "Worklist", Some(&hospital), &body))
}

fn side_row(out: &mut String, id: &str, label: &str, values: &PerSide, digits: usize) {
    let _ = write!(
        out,
        "<tr id=\"{id}\"><td class=\"l\">{}</td><td>{:.digits$}</td><td>{:.digits$}</td><td>{:.digits$}</td></tr>",
        escape(label),
        values.right,
        values.left,
        values.total
    );
}

fn study_body(detail: &StudyDetail, report: Option<&Report>, background: &BackgroundStats) -> String {
    let s = &detail.study;
    let uid_path = encode_component(&s.study_uid);
    let mut body = format!("<h1>Study <span id=\"study-uid\">{}</span></h1>", escape(&s.study_uid));
    let _ = write!(
        body,
        "<p>Patient key (pseudonymous): {} · series {} (revision {}) · arrived {} UTC · reported {} UTC</p>",
        escape(s.patient_key.as_deref().unwrap_or("—")),
        escape(&s.series_uid),
        s.series_revision,
        escape(&short_time(&s.first_seen_at)),
        escape(&short_time(&s.reported_at))
    );
    if s.status == "rejected" {
        let _ = write!(
            body,
            "<p class=\"decision rejected\" id=\"decision\">Not analysed: <b>{}</b></p><p>{}</p>",
            escape(s.reason.as_deref().unwrap_or("no reason recorded")),
            escape(s.detail.as_deref().unwrap_or(""))
        );
    }
    if let Some(r) = report {
        let untrained = if r.model.trained {
            ""
        } else {
            " <span class=\"error\">(untrained model: meaningless)</span>"
        };
        for warning in &r.warnings {
            let _ = write!(body, "<div class=\"warning\">{}</div>", escape(warning));
        }
        let _ = write!(
            body,
            "<p class=\"decision\">Decision: <b id=\"decision\" class=\"d-{}\">{}</b>{untrained}</p>\
             <p>P(diseased) = <b id=\"p-diseased\">{:.3}</b> · P(COVID-19 | diseased) = <b id=\"p-covid\">{:.3}</b></p>",
            escape(s.decision.as_deref().unwrap_or("")),
            escape(r.decision.describe()),
            r.probabilities.diseased,
            r.probabilities.covid19
        );
        let _ = write!(
            body,
            "<p class=\"note\" id=\"model-statement\">Produced by model <b>{}</b> version <b>{}</b> ({} configuration), trained on {}, running on {}. {}</p>",
            escape(&r.model.id),
            escape(&r.model.version),
            escape(&r.model.config),
            escape(&r.model.trained_on),
            escape(&r.model.device),
            if r.model.research_only {
                "For research only, not for clinical decisions."
            } else {
                ""
            }
        );
        body.push_str("<h2>Infected share of the lung</h2><table id=\"infection\"><tr><th class=\"l\"></th><th>right</th><th>left</th><th>both</th></tr>");
        side_row(&mut body, "infected-percent", "infected, % of each lung", &r.infection.percent, 2);
        side_row(&mut body, "infected-ml", "infected, mL", &r.infection.volume_ml, 1);
        side_row(&mut body, "lung-ml", "lung volume, mL", &r.series.lung_volume_ml, 0);
        body.push_str("</table>");

        body.push_str("<h2>Worst slices</h2><p>Each image: left, the lung window (-1350 to 150 HU) with the infected area in red; right, the attention of the diseased-or-healthy network (blue low, red high).</p><div id=\"overlays\">");
        for slice in r.worst_slices.iter().filter(|w| !w.overlay.is_empty()) {
            let _ = write!(
                body,
                "<figure><img alt=\"overlay of slice {}\" src=\"/studies/{uid_path}/overlays/{}\"><figcaption>Slice index {} (from the feet, from 0) at {:.1} mm: infected {:.0} mm² ({:.1}% of its lung), P(diseased) {:.3}</figcaption></figure>",
                slice.slice,
                encode_component(&slice.overlay),
                slice.slice,
                slice.position_mm,
                slice.infected_mm2,
                slice.infected_percent,
                slice.p_diseased
            );
        }
        body.push_str("</div>");

        body.push_str("<h2>Model-free share</h2><p>Lung voxels in Hounsfield bands, without the networks. Vessels and partial volume fall in the bands too, so these run high on healthy lungs.</p><table id=\"model-free\"><tr><th class=\"l\"></th><th>right</th><th>left</th><th>both</th></tr>");
        side_row(&mut body, "mf-infected", "-700 to 100 HU, %", &r.model_free.infected_percent, 2);
        side_row(&mut body, "mf-ground-glass", "ground glass, %", &r.model_free.ground_glass_percent, 2);
        side_row(&mut body, "mf-consolidation", "consolidation, %", &r.model_free.consolidation_percent, 2);
        body.push_str("</table>");

        let _ = write!(
            body,
            "<h2>Scanner batch effect</h2><table id=\"batch-effect\"><tr><td class=\"l\">background (outside air) median, this scan</td><td id=\"background-hu\">{:.0} HU</td></tr>\
             <tr><td class=\"l\">plausible for air</td><td>{}</td></tr>\
             <tr><td class=\"l\">this hospital, last {BACKGROUND_DAYS} days: median (10th to 90th percentile) of {} series</td><td id=\"background-hospital\">{} ({} to {}) HU</td></tr>\
             <tr><td class=\"l\">spacing, mm (slices, rows, columns)</td><td>{:.2}, {:.3}, {:.3}</td></tr>\
             <tr><td class=\"l\">slices (with lungs)</td><td>{} ({})</td></tr></table>\
             <p>Preprocessing subtracts the background median from every scan, so that scanners with different offsets give the networks the same values. A scan far from its hospital's usual value points to a scanner or protocol change.</p>",
            r.series.background_median_hu,
            if r.series.background_plausible { "yes" } else { "<b class=\"error\">no</b>" },
            background.series,
            number(background.median_hu, 0),
            number(background.p10_hu, 0),
            number(background.p90_hu, 0),
            r.series.spacing_mm[0],
            r.series.spacing_mm[1],
            r.series.spacing_mm[2],
            r.series.slices,
            r.series.slices_with_lungs
        );

        let _ = write!(
            body,
            "<p><a href=\"/studies/{uid_path}/report.html\">Offline report page</a> (one file, images included)</p>"
        );
    } else if s.status == "analysed" {
        body.push_str("<p class=\"error\">The report of this study is not in the object store.</p>");
    }

    body.push_str("<h2>Series received</h2><table id=\"series\"><tr><th class=\"l\">series</th><th>revision</th><th class=\"l\">status</th><th class=\"l\">decision or reason</th><th>slices with lungs</th><th class=\"l\">received (UTC)</th></tr>");
    for e in &detail.series {
        let outcome = if e.status == "rejected" {
            format!(
                "{}: {}",
                e.reason.as_deref().unwrap_or(""),
                e.detail.as_deref().unwrap_or("")
            )
        } else {
            decision_label(e.decision.as_deref())
        };
        let chosen = if e.series_uid == s.series_uid && e.series_revision == s.series_revision {
            " (this report)"
        } else {
            ""
        };
        let _ = write!(
            body,
            "<tr><td class=\"l\">{}{chosen}</td><td>{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td><td>{}</td><td class=\"l\">{}</td></tr>",
            escape(&e.series_uid),
            e.series_revision,
            escape(&e.status),
            escape(&outcome),
            e.slices_with_lungs.map_or_else(|| "—".to_string(), |n| n.to_string()),
            escape(&short_time(&e.received_at))
        );
    }
    body.push_str("</table>");
    body
}

async fn study(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    uri: OriginalUri,
    Path(study_uid): Path<String>,
) -> Result<Response, PageError> {
    let hospital = session(&state, &headers, &uri).await?;
    let detail = api::study_detail(&state, &hospital, &study_uid).await?;
    let report = match &detail.report {
        Some(value) => match serde_json::from_value::<Report>(value.clone()) {
            Ok(report) => Some(report),
            Err(e) => {
                tracing::warn!(study_uid, "The stored report does not match the report schema: {e}");
                return Err(ApiError::Unavailable(format!(
                    "the stored report of study {study_uid} is unreadable"
                ))
                .into());
            }
        },
        None => None,
    };
    let background = state.database()?.background_stats(&hospital, BACKGROUND_DAYS).await?;
    let body = study_body(&detail, report.as_ref(), &background);
    Ok(page(StatusCode::OK, "Study", Some(&hospital), &body))
}

async fn report_html(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    uri: OriginalUri,
    Path(study_uid): Path<String>,
) -> Result<Response, PageError> {
    let hospital = session(&state, &headers, &uri).await?;
    let html = api::stored_report_html(&state, &hospital, &study_uid).await?;
    Ok(secure(
        ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response(),
    ))
}

async fn overlay(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    uri: OriginalUri,
    Path((study_uid, name)): Path<(String, String)>,
) -> Result<Response, PageError> {
    let hospital = session(&state, &headers, &uri).await?;
    let png = api::overlay_png(&state, &hospital, &study_uid, &name).await?;
    Ok(secure(([(header::CONTENT_TYPE, "image/png")], png).into_response()))
}

/// Colours of the classes in the charts.
const CLASSES: [(&str, &str); 4] = [
    ("healthy", "#2e7d32"),
    ("COVID-19 pneumonia", "#c62828"),
    ("other lung disease", "#ef6c00"),
    ("rejected", "#9e9e9e"),
];

/// Stacked bars of the studies per class and day.
fn per_day_chart(aggregates: &Aggregates) -> String {
    let (width, height, left, bottom, top) = (960.0_f64, 260.0_f64, 40.0_f64, 30.0_f64, 10.0_f64);
    let days = aggregates.per_day.len().max(1) as f64;
    let max = aggregates
        .per_day
        .iter()
        .map(|d| d.healthy + d.covid19 + d.other_disease + d.rejected)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let plot_h = height - bottom - top;
    let slot = (width - left) / days;
    let mut svg = format!(
        "<svg id=\"per-day-chart\" role=\"img\" aria-label=\"studies per day by class\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" xmlns=\"http://www.w3.org/2000/svg\" font-size=\"11\">"
    );
    for tick in [0.0, max / 2.0, max] {
        let y = top + plot_h * (1.0 - tick / max);
        let _ = write!(
            svg,
            "<line x1=\"{left}\" x2=\"{width}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            left - 4.0,
            y + 4.0,
            if tick.fract() == 0.0 { format!("{tick:.0}") } else { format!("{tick:.1}") }
        );
    }
    for (i, day) in aggregates.per_day.iter().enumerate() {
        let x = left + slot * i as f64 + slot * 0.1;
        let mut y = top + plot_h;
        for ((name, colour), count) in CLASSES
            .iter()
            .zip([day.healthy, day.covid19, day.other_disease, day.rejected])
        {
            if count == 0 {
                continue;
            }
            let h = plot_h * count as f64 / max;
            y -= h;
            let _ = write!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{colour}\"><title>{}: {count} {name}</title></rect>",
                slot * 0.8,
                escape(&day.day)
            );
        }
        let label_every = (days / 6.0).ceil().max(1.0) as usize;
        if i % label_every == 0 || i + 1 == aggregates.per_day.len() {
            let _ = write!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                x + slot * 0.4,
                height - 10.0,
                escape(day.day.get(5..).unwrap_or(&day.day))
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// Bars of the analysed studies per severity bin.
fn severity_chart(aggregates: &Aggregates) -> String {
    let (width, height, left, bottom, top) = (600.0_f64, 220.0_f64, 40.0_f64, 30.0_f64, 16.0_f64);
    let bins = aggregates.severity_histogram.len().max(1) as f64;
    let max = aggregates.severity_histogram.iter().map(|b| b.studies).max().unwrap_or(0).max(1) as f64;
    let plot_h = height - bottom - top;
    let slot = (width - left) / bins;
    let mut svg = format!(
        "<svg id=\"severity-chart\" role=\"img\" aria-label=\"analysed studies by infected share\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" xmlns=\"http://www.w3.org/2000/svg\" font-size=\"11\">"
    );
    let _ = write!(
        svg,
        "<line x1=\"{left}\" x2=\"{width}\" y1=\"{0:.1}\" y2=\"{0:.1}\" stroke=\"#999\"/>",
        top + plot_h
    );
    for (i, bin) in aggregates.severity_histogram.iter().enumerate() {
        let x = left + slot * i as f64;
        let h = plot_h * bin.studies as f64 / max;
        let y = top + plot_h - h;
        let _ = write!(
            svg,
            "<rect x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"#c62828\"><title>{:.0} to {:.0}%: {}</title></rect>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{:.0}–{:.0}</text>",
            x + slot * 0.1,
            slot * 0.8,
            bin.from,
            bin.to,
            bin.studies,
            x + slot * 0.5,
            y - 3.0,
            bin.studies,
            x + slot * 0.5,
            height - 10.0,
            bin.from,
            bin.to
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Windows offered on the dashboard, with the current one among them.
fn window_options(current: i32) -> Vec<(String, String)> {
    let mut days = vec![7, 30, 90, 365];
    if !days.contains(&current) {
        days.push(current);
        days.sort_unstable();
    }
    days.into_iter().map(|d| (d.to_string(), format!("{d} days"))).collect()
}

async fn dashboard(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    uri: OriginalUri,
    params: Result<Query<AggregateParams>, QueryRejection>,
) -> Result<Response, PageError> {
    let hospital = session(&state, &headers, &uri).await?;
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let days = api::check_days(params.days)?;
    let aggregates = state.database()?.aggregates(&hospital, days).await?;
    let totals = aggregates.per_day.iter().fold([0i64; 4], |mut t, d| {
        t[0] += d.healthy;
        t[1] += d.covid19;
        t[2] += d.other_disease;
        t[3] += d.rejected;
        t
    });
    let mut body = format!("<h1>Dashboard: last {days} days</h1>");
    let _ = write!(
        body,
        "<form class=\"filters\" method=\"get\" action=\"/dashboard\">{} <button type=\"submit\">Show</button></form>",
        select("days", "Window", &days.to_string(), &window_options(days).iter().map(|(v, t)| (v.as_str(), t.as_str())).collect::<Vec<_>>())
    );
    body.push_str("<table id=\"totals\"><tr>");
    for (name, _) in CLASSES {
        let _ = write!(body, "<th>{name}</th>");
    }
    body.push_str("<th>all</th></tr><tr>");
    for (i, count) in totals.iter().enumerate() {
        let _ = write!(body, "<td id=\"total-{i}\">{count}</td>");
    }
    let _ = write!(body, "<td id=\"total-all\">{}</td></tr></table>", totals.iter().sum::<i64>());
    body.push_str("<h2>Studies per day (UTC, by first arrival)</h2><p class=\"legend\">");
    for (name, colour) in CLASSES {
        let _ = write!(body, "<span style=\"background:{colour}\"></span>{name}");
    }
    body.push_str("</p>");
    body.push_str(&per_day_chart(&aggregates));
    body.push_str("<h2>Severity of analysed studies (infected % of both lungs)</h2>");
    body.push_str(&severity_chart(&aggregates));
    body.push_str("<details><summary>Counts per day</summary><table id=\"per-day\"><tr><th class=\"l\">day</th>");
    for (name, _) in CLASSES {
        let _ = write!(body, "<th>{name}</th>");
    }
    body.push_str("</tr>");
    for d in aggregates.per_day.iter().rev() {
        let _ = write!(
            body,
            "<tr><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&d.day),
            d.healthy,
            d.covid19,
            d.other_disease,
            d.rejected
        );
    }
    body.push_str("</table></details>");
    Ok(page(StatusCode::OK, "Dashboard", Some(&hospital), &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_login() {
        assert_eq!(local_path(Some("/studies/1.2.3?x=1")), "/studies/1.2.3?x=1");
        assert_eq!(local_path(Some("//evil.example/")), "/worklist");
        assert_eq!(local_path(Some("https://evil.example/")), "/worklist");
        assert_eq!(local_path(Some("/\\evil.example")), "/worklist");
        assert_eq!(local_path(Some("/a\nb")), "/worklist");
        assert_eq!(local_path(None), "/worklist");
    }

    #[test]
    fn session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; lungstream_session=abc; b=2"));
        assert_eq!(session_cookie(&headers), Some("abc"));
        headers.insert(header::COOKIE, HeaderValue::from_static("lungstream_session="));
        assert_eq!(session_cookie(&headers), None);
    }

    #[test]
    fn components_are_percent_encoded() {
        assert_eq!(encode_component("/studies/1.2 3?a&b"), "%2Fstudies%2F1.2%203%3Fa%26b");
    }

    #[test]
    fn forms_from_other_sites_are_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8082"));
        assert!(same_origin(&headers).is_ok());
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:8082"));
        assert!(same_origin(&headers).is_ok());
        headers.insert(header::ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(same_origin(&headers).is_err());
    }
}
