//! The report service's PostgreSQL database: every series result received, one row per
//! study with the series chosen for its report, the worklist and the aggregates.
//!
//! The schema lives in `migrations/` and is applied at start. Queries are plain SQL with
//! bind parameters, checked by the tests against a real server.

use std::str::FromStr;

use lungstream_schemas::events::{ResultsEvent, SeriesOutcome};
use lungstream_schemas::report::Decision;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgExecutor, Postgres, Transaction};
use time::OffsetDateTime;

/// Migrations embedded at build time from `services/report/migrations`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// SQLSTATE of "database does not exist".
const INVALID_CATALOG_NAME: &str = "3D000";
/// SQLSTATE of "database already exists".
const DUPLICATE_DATABASE: &str = "42P04";
/// SQLSTATE of a unique key violation. Two concurrent `CREATE DATABASE` of one name can
/// end with it instead of [`DUPLICATE_DATABASE`].
const UNIQUE_VIOLATION: &str = "23505";

/// Outcome of a series result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Analysed,
    Rejected,
}

impl Status {
    /// Returns the name used in the database, the API and report events.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Analysed => "analysed",
            Status::Rejected => "rejected",
        }
    }
}

impl FromStr for Status {
    type Err = String;

    fn from_str(text: &str) -> Result<Status, String> {
        match text {
            "analysed" => Ok(Status::Analysed),
            "rejected" => Ok(Status::Rejected),
            other => Err(format!(
                "unknown status {other:?}: expected analysed or rejected"
            )),
        }
    }
}

/// Returns the name of a decision as it appears in JSON (`covid19`, `other_disease`, …).
pub fn decision_name(decision: Decision) -> &'static str {
    match decision {
        Decision::Healthy => "healthy",
        Decision::Covid19 => "covid19",
        Decision::OtherDisease => "other_disease",
    }
}

/// Parses a decision name as [`decision_name`] writes it.
///
/// # Errors
///
/// A message naming the value and the accepted names.
pub fn parse_decision(text: &str) -> Result<Decision, String> {
    match text {
        "healthy" => Ok(Decision::Healthy),
        "covid19" => Ok(Decision::Covid19),
        "other_disease" => Ok(Decision::OtherDisease),
        other => Err(format!(
            "unknown decision {other:?}: expected healthy, covid19 or other_disease"
        )),
    }
}

/// Whether a result was new.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inserted {
    New,
    /// A result of the same hospital, series, revision and model version was already
    /// recorded, so the stored one was kept.
    Duplicate,
}

/// One row of `series_results`.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct SeriesResult {
    /// Insertion order.
    pub id: i64,
    pub hospital: String,
    pub study_uid: String,
    pub series_uid: String,
    pub series_revision: i64,
    /// Empty for a rejected series.
    pub model_version: String,
    pub status: String,
    pub reason: Option<String>,
    pub detail: Option<String>,
    pub decision: Option<String>,
    pub p_diseased: Option<f64>,
    pub p_covid: Option<f64>,
    pub infected_percent: Option<f64>,
    pub infected_ml: Option<f64>,
    pub slices_with_lungs: Option<i32>,
    pub patient_key: Option<String>,
    /// The results event as received.
    pub result: serde_json::Value,
    pub received_at: OffsetDateTime,
}

impl SeriesResult {
    /// Parses the stored results event.
    ///
    /// # Errors
    ///
    /// The stored JSON no longer fits [`ResultsEvent`].
    pub fn event(&self) -> Result<ResultsEvent, serde_json::Error> {
        serde_json::from_value(self.result.clone())
    }

    pub fn is_analysed(&self) -> bool {
        self.status == Status::Analysed.as_str()
    }

    /// Returns what identifies the report made from this result.
    pub fn choice(&self) -> Choice {
        Choice {
            series_uid: self.series_uid.clone(),
            series_revision: self.series_revision,
            model_version: self.model_version.clone(),
            status: self.status.clone(),
        }
    }
}

/// The series, revision, model version and status a study's report is made from. A new
/// report event is published whenever it changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub series_uid: String,
    pub series_revision: i64,
    pub model_version: String,
    pub status: String,
}

/// Chooses the series a study's report is about, among all results of the study:
///
/// 1. an analysed series over a rejected one;
/// 2. then the series with the maximum number of slices with lungs (a rejected series
///    counts 0);
/// 3. then the latest series revision;
/// 4. then the result received last (a newer model version of the same revision wins).
///
/// Returns `None` only for an empty list.
pub fn choose_series(results: &[SeriesResult]) -> Option<&SeriesResult> {
    results.iter().max_by_key(|r| {
        (
            r.is_analysed(),
            r.slices_with_lungs.unwrap_or(0),
            r.series_revision,
            r.received_at,
            r.id,
        )
    })
}

/// One row of `studies`.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct StudyRow {
    pub hospital: String,
    pub study_uid: String,
    pub patient_key: Option<String>,
    pub series_uid: String,
    pub series_revision: i64,
    pub model_version: String,
    pub model_id: Option<String>,
    pub research_only: Option<bool>,
    pub status: String,
    pub reason: Option<String>,
    pub detail: Option<String>,
    pub decision: Option<String>,
    pub p_diseased: Option<f64>,
    pub p_covid: Option<f64>,
    pub infected_percent: Option<f64>,
    pub infected_percent_right: Option<f64>,
    pub infected_percent_left: Option<f64>,
    pub infected_ml: Option<f64>,
    pub infected_ml_right: Option<f64>,
    pub infected_ml_left: Option<f64>,
    /// The infected share of both lungs for an analysed study; `None` for a rejected one.
    pub severity: Option<f64>,
    pub other_series: Vec<String>,
    pub report_key: Option<String>,
    pub published: bool,
    pub first_seen_at: OffsetDateTime,
    pub reported_at: OffsetDateTime,
}

impl StudyRow {
    pub fn choice(&self) -> Choice {
        Choice {
            series_uid: self.series_uid.clone(),
            series_revision: self.series_revision,
            model_version: self.model_version.clone(),
            status: self.status.clone(),
        }
    }
}

/// Order of the worklist.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sort {
    /// Highest severity first and rejected studies last. Ties go to the higher
    /// P(diseased), then to the newest report.
    #[default]
    Severity,
    /// Newest report first.
    Time,
}

impl Sort {
    /// Returns the name used in the worklist's `sort` parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            Sort::Severity => "severity",
            Sort::Time => "time",
        }
    }
}

/// Filters and paging of the worklist.
#[derive(Clone, Debug, PartialEq)]
pub struct WorklistQuery {
    pub sort: Sort,
    pub decision: Option<Decision>,
    pub status: Option<Status>,
    pub limit: i64,
    pub offset: i64,
}

impl Default for WorklistQuery {
    fn default() -> Self {
        WorklistQuery {
            sort: Sort::Severity,
            decision: None,
            status: None,
            limit: 50,
            offset: 0,
        }
    }
}

/// Studies of one day, by class. The day is the UTC date of the study's first result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct DayCounts {
    /// `YYYY-MM-DD`.
    pub day: String,
    pub healthy: i64,
    pub covid19: i64,
    pub other_disease: i64,
    pub rejected: i64,
}

/// Studies whose severity falls in `[from, to)`. The last bin includes 100.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeverityBin {
    pub from: f64,
    pub to: f64,
    pub studies: i64,
}

/// Counts of one hospital's studies first seen in the last `days` UTC days, today
/// included.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Aggregates {
    pub hospital: String,
    pub days: i32,
    /// Every day of the window, oldest first, zeros included.
    pub per_day: Vec<DayCounts>,
    /// Analysed studies by severity (infected share of both lungs) in 10-point bins.
    pub severity_histogram: Vec<SeverityBin>,
}

/// Largest `days` the aggregates accept.
pub const MAX_AGGREGATE_DAYS: i32 = 366;

/// A connection pool to the report database.
#[derive(Clone, Debug)]
pub struct Database {
    pool: PgPool,
}

impl Database {
    /// Connects to `url`, creating the database first when the server has none of that
    /// name, and applies the migrations.
    ///
    /// # Errors
    ///
    /// An invalid URL, a server that does not respond or refuses the login, a database
    /// that is missing and cannot be created, or a migration that fails.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Database> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| anyhow::anyhow!("invalid database URL: {e}"))?;
        create_database_if_missing(&options).await?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect_with(options)
            .await?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| anyhow::anyhow!("cannot apply the database migrations: {e}"))?;
        Ok(Database { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Starts a transaction that holds the study's lock until it ends, so two workers
    /// that receive results of one study (series of one study may sit on different
    /// partitions) make their choices one after the other.
    ///
    /// # Errors
    ///
    /// The database does not respond.
    pub async fn lock_study(
        &self,
        hospital: &str,
        study_uid: &str,
    ) -> Result<StudyLock, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("{hospital}/{study_uid}"))
            .execute(&mut *tx)
            .await?;
        Ok(StudyLock {
            tx,
            hospital: hospital.to_string(),
            study_uid: study_uid.to_string(),
        })
    }

    /// Returns the study of one hospital, if any.
    ///
    /// # Errors
    ///
    /// The database does not respond.
    pub async fn study(
        &self,
        hospital: &str,
        study_uid: &str,
    ) -> Result<Option<StudyRow>, sqlx::Error> {
        fetch_study(&self.pool, hospital, study_uid).await
    }

    /// Returns the hospitals that have a study with this UID, in name order.
    ///
    /// # Errors
    ///
    /// The database does not respond.
    pub async fn study_hospitals(&self, study_uid: &str) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT hospital FROM studies WHERE study_uid = $1 ORDER BY hospital")
            .bind(study_uid)
            .fetch_all(&self.pool)
            .await
    }

    /// Returns every result of a study, oldest first.
    ///
    /// # Errors
    ///
    /// The database does not respond.
    pub async fn results(
        &self,
        hospital: &str,
        study_uid: &str,
    ) -> Result<Vec<SeriesResult>, sqlx::Error> {
        fetch_results(&self.pool, hospital, study_uid).await
    }

    /// Returns the result a study's report is made from.
    ///
    /// # Errors
    ///
    /// The database does not respond.
    pub async fn result(
        &self,
        hospital: &str,
        study_uid: &str,
        choice: &Choice,
    ) -> Result<Option<SeriesResult>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {RESULT_COLUMNS} FROM series_results \
             WHERE hospital = $1 AND study_uid = $2 AND series_uid = $3 AND series_revision = $4 AND model_version = $5"
        ))
        .bind(hospital)
        .bind(study_uid)
        .bind(&choice.series_uid)
        .bind(choice.series_revision)
        .bind(&choice.model_version)
        .fetch_optional(&self.pool)
        .await
    }

    /// Returns one page of a hospital's worklist.
    ///
    /// # Errors
    ///
    /// The database does not respond.
    pub async fn worklist(
        &self,
        hospital: &str,
        query: &WorklistQuery,
    ) -> Result<Vec<StudyRow>, sqlx::Error> {
        let order = match query.sort {
            Sort::Severity => {
                "severity DESC NULLS LAST, p_diseased DESC NULLS LAST, reported_at DESC, study_uid"
            }
            Sort::Time => "reported_at DESC, study_uid",
        };
        let sql = format!(
            "SELECT {STUDY_COLUMNS} FROM studies \
             WHERE hospital = $1 AND ($2::text IS NULL OR decision = $2) AND ($3::text IS NULL OR status = $3) \
             ORDER BY {order} LIMIT $4 OFFSET $5"
        );
        sqlx::query_as(&sql)
            .bind(hospital)
            .bind(query.decision.map(decision_name))
            .bind(query.status.map(Status::as_str))
            .bind(query.limit)
            .bind(query.offset)
            .fetch_all(&self.pool)
            .await
    }

    /// Counts a hospital's studies per class and UTC day, and its analysed studies per
    /// severity bin, over the last `days` days (1 to [`MAX_AGGREGATE_DAYS`], clamped).
    ///
    /// # Errors
    ///
    /// The database does not respond.
    pub async fn aggregates(&self, hospital: &str, days: i32) -> Result<Aggregates, sqlx::Error> {
        let days = days.clamp(1, MAX_AGGREGATE_DAYS);
        // Both queries take the window's days from the server's clock, as UTC dates.
        let per_day: Vec<DayCounts> = sqlx::query_as(
            "WITH window_days AS ( \
                 SELECT generate_series((now() AT TIME ZONE 'UTC')::date - ($2::int - 1), (now() AT TIME ZONE 'UTC')::date, interval '1 day')::date AS day \
             ) \
             SELECT to_char(w.day, 'YYYY-MM-DD') AS day, \
                    count(s.study_uid) FILTER (WHERE s.status = 'analysed' AND s.decision = 'healthy') AS healthy, \
                    count(s.study_uid) FILTER (WHERE s.status = 'analysed' AND s.decision = 'covid19') AS covid19, \
                    count(s.study_uid) FILTER (WHERE s.status = 'analysed' AND s.decision = 'other_disease') AS other_disease, \
                    count(s.study_uid) FILTER (WHERE s.status = 'rejected') AS rejected \
             FROM window_days w \
             LEFT JOIN studies s ON s.hospital = $1 AND (s.first_seen_at AT TIME ZONE 'UTC')::date = w.day \
             GROUP BY w.day ORDER BY w.day",
        )
        .bind(hospital)
        .bind(days)
        .fetch_all(&self.pool)
        .await?;

        let bins: Vec<(i32, i64)> = sqlx::query_as(
            "SELECT LEAST(GREATEST(floor(severity / 10)::int, 0), 9) AS bin, count(*) \
             FROM studies \
             WHERE hospital = $1 AND status = 'analysed' AND severity IS NOT NULL \
               AND (first_seen_at AT TIME ZONE 'UTC')::date >= (now() AT TIME ZONE 'UTC')::date - ($2::int - 1) \
             GROUP BY bin",
        )
        .bind(hospital)
        .bind(days)
        .fetch_all(&self.pool)
        .await?;
        let severity_histogram = (0..10)
            .map(|bin| SeverityBin {
                from: f64::from(bin * 10),
                to: f64::from(bin * 10 + 10),
                studies: bins.iter().find(|(b, _)| *b == bin).map_or(0, |(_, n)| *n),
            })
            .collect();
        Ok(Aggregates {
            hospital: hospital.to_string(),
            days,
            per_day,
            severity_histogram,
        })
    }
}

/// Background (outside air) median HU of a hospital's recent analysed series: the
/// batch-effect statistic of preprocessing, to compare one scan with its scanners' usual
/// value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackgroundStats {
    pub series: i64,
    pub median_hu: Option<f64>,
    pub p10_hu: Option<f64>,
    pub p90_hu: Option<f64>,
}

impl Database {
    /// Stores a browser session of `hospital` under the SHA-256 of its cookie value, valid
    /// for `ttl_minutes`, and deletes sessions that have expired.
    ///
    /// # Errors
    ///
    /// The database does not respond.
    pub async fn create_session(
        &self,
        token_hash: &[u8],
        hospital: &str,
        credential_hash: &[u8],
        ttl_minutes: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM web_sessions WHERE expires_at < now()")
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO web_sessions (token_hash, hospital, credential_hash, expires_at) \
             VALUES ($1, $2, $3, now() + make_interval(mins => $4::int))",
        )
        .bind(token_hash)
        .bind(hospital)
        .bind(credential_hash)
        .bind(ttl_minutes.clamp(1, i64::from(i32::MAX)) as i32)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Returns the hospital and the credential hash of an unexpired session.
    ///
    /// # Errors
    ///
    /// The database does not respond.
    pub async fn session(&self, token_hash: &[u8]) -> Result<Option<(String, Vec<u8>)>, sqlx::Error> {
        sqlx::query_as("SELECT hospital, credential_hash FROM web_sessions WHERE token_hash = $1 AND expires_at > now()")
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await
    }

    /// Ends a session.
    ///
    /// # Errors
    ///
    /// The database does not respond.
    pub async fn delete_session(&self, token_hash: &[u8]) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM web_sessions WHERE token_hash = $1")
            .bind(token_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Median and 10th and 90th percentiles of the background median HU of the
    /// hospital's analysed series received in the last `days` days.
    ///
    /// # Errors
    ///
    /// The database does not respond.
    pub async fn background_stats(&self, hospital: &str, days: i32) -> Result<BackgroundStats, sqlx::Error> {
        let (series, median_hu, p10_hu, p90_hu): (i64, Option<f64>, Option<f64>, Option<f64>) = sqlx::query_as(
            "WITH b AS ( \
                 SELECT (result->'report'->'series'->>'background_median_hu')::double precision AS hu \
                 FROM series_results \
                 WHERE hospital = $1 AND status = 'analysed' AND received_at > now() - make_interval(days => $2::int) \
             ) \
             SELECT count(hu), \
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY hu), \
                    percentile_cont(0.1) WITHIN GROUP (ORDER BY hu), \
                    percentile_cont(0.9) WITHIN GROUP (ORDER BY hu) \
             FROM b WHERE hu IS NOT NULL",
        )
        .bind(hospital)
        .bind(days.clamp(1, MAX_AGGREGATE_DAYS))
        .fetch_one(&self.pool)
        .await?;
        Ok(BackgroundStats { series, median_hu, p10_hu, p90_hu })
    }
}

/// A transaction holding one study's lock (see [`Database::lock_study`]). Dropping it
/// without [`StudyLock::commit`] rolls everything back.
pub struct StudyLock {
    tx: Transaction<'static, Postgres>,
    hospital: String,
    study_uid: String,
}

impl StudyLock {
    /// Records a result of this study, leaving a result already recorded as it was.
    ///
    /// # Errors
    ///
    /// The database does not respond or refuses the row. The event must be of this
    /// lock's study and contain no NUL character, which PostgreSQL text cannot hold.
    pub async fn insert_result(&mut self, event: &ResultsEvent) -> Result<Inserted, sqlx::Error> {
        debug_assert_eq!(
            (event.hospital.as_str(), event.study_uid.as_str()),
            (self.hospital.as_str(), self.study_uid.as_str())
        );
        let columns = ResultColumns::of(event);
        let json = serde_json::to_value(event).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        let done = sqlx::query(
            "INSERT INTO series_results (hospital, study_uid, series_uid, series_revision, model_version, status, reason, detail, \
                 decision, p_diseased, p_covid, infected_percent, infected_ml, slices_with_lungs, patient_key, result) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
             ON CONFLICT (hospital, study_uid, series_uid, series_revision, model_version) DO NOTHING",
        )
        .bind(&event.hospital)
        .bind(&event.study_uid)
        .bind(&event.series_uid)
        .bind(i64::from(event.series_revision))
        .bind(columns.model_version)
        .bind(columns.status.as_str())
        .bind(columns.reason)
        .bind(columns.detail)
        .bind(columns.decision)
        .bind(columns.p_diseased)
        .bind(columns.p_covid)
        .bind(columns.infected_percent)
        .bind(columns.infected_ml)
        .bind(columns.slices_with_lungs)
        .bind(&event.patient_key)
        .bind(json)
        .execute(&mut *self.tx)
        .await?;
        Ok(if done.rows_affected() == 1 {
            Inserted::New
        } else {
            Inserted::Duplicate
        })
    }

    /// Returns every result of the study, oldest first.
    ///
    /// # Errors
    ///
    /// The database does not respond.
    pub async fn results(&mut self) -> Result<Vec<SeriesResult>, sqlx::Error> {
        fetch_results(&mut *self.tx, &self.hospital, &self.study_uid).await
    }

    /// Returns the study row, if there is one yet.
    ///
    /// # Errors
    ///
    /// The database does not respond.
    pub async fn study(&mut self) -> Result<Option<StudyRow>, sqlx::Error> {
        fetch_study(&mut *self.tx, &self.hospital, &self.study_uid).await
    }

    /// Writes the study row, replacing the one there. `first_seen_at` keeps the earlier
    /// of the two times.
    ///
    /// # Errors
    ///
    /// The database does not respond or refuses the row.
    pub async fn upsert_study(&mut self, row: &StudyRow) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO studies (hospital, study_uid, patient_key, series_uid, series_revision, model_version, model_id, research_only, \
                 status, reason, detail, decision, p_diseased, p_covid, infected_percent, infected_percent_right, infected_percent_left, \
                 infected_ml, infected_ml_right, infected_ml_left, severity, other_series, report_key, published, first_seen_at, reported_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26) \
             ON CONFLICT (hospital, study_uid) DO UPDATE SET \
                 patient_key = EXCLUDED.patient_key, series_uid = EXCLUDED.series_uid, series_revision = EXCLUDED.series_revision, \
                 model_version = EXCLUDED.model_version, model_id = EXCLUDED.model_id, research_only = EXCLUDED.research_only, \
                 status = EXCLUDED.status, reason = EXCLUDED.reason, detail = EXCLUDED.detail, decision = EXCLUDED.decision, \
                 p_diseased = EXCLUDED.p_diseased, p_covid = EXCLUDED.p_covid, infected_percent = EXCLUDED.infected_percent, \
                 infected_percent_right = EXCLUDED.infected_percent_right, infected_percent_left = EXCLUDED.infected_percent_left, \
                 infected_ml = EXCLUDED.infected_ml, infected_ml_right = EXCLUDED.infected_ml_right, infected_ml_left = EXCLUDED.infected_ml_left, \
                 severity = EXCLUDED.severity, other_series = EXCLUDED.other_series, report_key = EXCLUDED.report_key, \
                 published = EXCLUDED.published, first_seen_at = LEAST(studies.first_seen_at, EXCLUDED.first_seen_at), \
                 reported_at = EXCLUDED.reported_at",
        )
        .bind(&row.hospital)
        .bind(&row.study_uid)
        .bind(&row.patient_key)
        .bind(&row.series_uid)
        .bind(row.series_revision)
        .bind(&row.model_version)
        .bind(&row.model_id)
        .bind(row.research_only)
        .bind(&row.status)
        .bind(&row.reason)
        .bind(&row.detail)
        .bind(&row.decision)
        .bind(row.p_diseased)
        .bind(row.p_covid)
        .bind(row.infected_percent)
        .bind(row.infected_percent_right)
        .bind(row.infected_percent_left)
        .bind(row.infected_ml)
        .bind(row.infected_ml_right)
        .bind(row.infected_ml_left)
        .bind(row.severity)
        .bind(&row.other_series)
        .bind(&row.report_key)
        .bind(row.published)
        .bind(row.first_seen_at)
        .bind(row.reported_at)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Commits the transaction, which releases the study's lock.
    ///
    /// # Errors
    ///
    /// The database does not respond, and then nothing of the transaction is kept.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

/// The columns of `series_results` taken out of an event, for queries and sorting.
struct ResultColumns {
    model_version: String,
    status: Status,
    reason: Option<&'static str>,
    detail: Option<String>,
    decision: Option<&'static str>,
    p_diseased: Option<f64>,
    p_covid: Option<f64>,
    infected_percent: Option<f64>,
    infected_ml: Option<f64>,
    slices_with_lungs: Option<i32>,
}

impl ResultColumns {
    fn of(event: &ResultsEvent) -> ResultColumns {
        match &event.outcome {
            SeriesOutcome::Analysed(analysis) => {
                let report = &analysis.report;
                ResultColumns {
                    model_version: report.model.version.clone(),
                    status: Status::Analysed,
                    reason: None,
                    detail: None,
                    decision: Some(decision_name(report.decision)),
                    p_diseased: Some(report.probabilities.diseased),
                    p_covid: Some(report.probabilities.covid19),
                    infected_percent: Some(report.infection.percent.total),
                    infected_ml: Some(report.infection.volume_ml.total),
                    slices_with_lungs: Some(
                        i32::try_from(report.series.slices_with_lungs).unwrap_or(i32::MAX),
                    ),
                }
            }
            SeriesOutcome::Rejected { reason, detail } => ResultColumns {
                model_version: String::new(),
                status: Status::Rejected,
                reason: Some(reason.as_str()),
                detail: Some(detail.clone()),
                decision: None,
                p_diseased: None,
                p_covid: None,
                infected_percent: None,
                infected_ml: None,
                slices_with_lungs: None,
            },
        }
    }
}

const RESULT_COLUMNS: &str = "id, hospital, study_uid, series_uid, series_revision, model_version, status, reason, detail, decision, \
     p_diseased, p_covid, infected_percent, infected_ml, slices_with_lungs, patient_key, result, received_at";

const STUDY_COLUMNS: &str = "hospital, study_uid, patient_key, series_uid, series_revision, model_version, model_id, research_only, \
     status, reason, detail, decision, p_diseased, p_covid, infected_percent, infected_percent_right, infected_percent_left, \
     infected_ml, infected_ml_right, infected_ml_left, severity, other_series, report_key, published, first_seen_at, reported_at";

async fn fetch_results<'e>(
    executor: impl PgExecutor<'e>,
    hospital: &str,
    study_uid: &str,
) -> Result<Vec<SeriesResult>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {RESULT_COLUMNS} FROM series_results WHERE hospital = $1 AND study_uid = $2 ORDER BY id"
    ))
    .bind(hospital)
    .bind(study_uid)
    .fetch_all(executor)
    .await
}

async fn fetch_study<'e>(
    executor: impl PgExecutor<'e>,
    hospital: &str,
    study_uid: &str,
) -> Result<Option<StudyRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {STUDY_COLUMNS} FROM studies WHERE hospital = $1 AND study_uid = $2"
    ))
    .bind(hospital)
    .bind(study_uid)
    .fetch_optional(executor)
    .await
}

fn sql_state(error: &sqlx::Error) -> Option<String> {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned())
}

/// Creates the database `options` names when the server reports that it does not exist.
/// The database is created by connecting to the `postgres` maintenance database with the
/// same login.
async fn create_database_if_missing(options: &PgConnectOptions) -> anyhow::Result<()> {
    let probe = options.connect().await;
    let error = match probe {
        Ok(connection) => {
            connection.close().await?;
            return Ok(());
        }
        Err(error) => error,
    };
    if sql_state(&error).as_deref() != Some(INVALID_CATALOG_NAME) {
        return Err(error.into());
    }
    let name = options
        .get_database()
        .ok_or_else(|| anyhow::anyhow!("the database URL names no database"))?
        .to_string();
    tracing::info!(database = %name, "The database does not exist; creating it.");
    let mut admin = options.clone().database("postgres").connect().await?;
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    let created = sqlx::query(&format!("CREATE DATABASE {quoted}"))
        .execute(&mut admin)
        .await;
    admin.close().await?;
    match created {
        Ok(_) => Ok(()),
        // Another replica created it meanwhile.
        Err(e)
            if matches!(
                sql_state(&e).as_deref(),
                Some(DUPLICATE_DATABASE | UNIQUE_VIOLATION)
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!("cannot create database {name}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(
        id: i64,
        series: &str,
        status: Status,
        slices: Option<i32>,
        revision: i64,
        received_s: i64,
    ) -> SeriesResult {
        SeriesResult {
            id,
            hospital: "north".into(),
            study_uid: "1.2".into(),
            series_uid: series.into(),
            series_revision: revision,
            model_version: if status == Status::Analysed {
                "m1".into()
            } else {
                String::new()
            },
            status: status.as_str().into(),
            reason: None,
            detail: None,
            decision: None,
            p_diseased: None,
            p_covid: None,
            infected_percent: None,
            infected_ml: None,
            slices_with_lungs: slices,
            patient_key: None,
            result: serde_json::Value::Null,
            received_at: OffsetDateTime::from_unix_timestamp(received_s).unwrap(),
        }
    }

    fn chosen(results: &[SeriesResult]) -> i64 {
        choose_series(results).unwrap().id
    }

    #[test]
    fn choice_prefers_analysed_then_lung_slices() {
        let rejected_first = [
            result(1, "a", Status::Rejected, None, 1, 10),
            result(2, "b", Status::Analysed, Some(5), 1, 20),
        ];
        assert_eq!(chosen(&rejected_first), 2);
        let rejected_last = [
            result(1, "b", Status::Analysed, Some(5), 1, 10),
            result(2, "a", Status::Rejected, None, 3, 20),
        ];
        assert_eq!(chosen(&rejected_last), 1);
        let more_lungs = [
            result(1, "a", Status::Analysed, Some(80), 1, 10),
            result(2, "b", Status::Analysed, Some(40), 1, 20),
        ];
        assert_eq!(chosen(&more_lungs), 1);
    }

    #[test]
    fn choice_ties_go_to_revision_then_arrival() {
        let revisions = [
            result(1, "a", Status::Analysed, Some(40), 2, 10),
            result(2, "a", Status::Analysed, Some(40), 1, 20),
        ];
        assert_eq!(chosen(&revisions), 1);
        let arrival = [
            result(1, "a", Status::Analysed, Some(40), 1, 10),
            result(2, "b", Status::Analysed, Some(40), 1, 20),
        ];
        assert_eq!(chosen(&arrival), 2);
        let rejections = [
            result(1, "a", Status::Rejected, None, 1, 10),
            result(2, "b", Status::Rejected, None, 1, 20),
        ];
        assert_eq!(chosen(&rejections), 2);
        assert!(choose_series(&[]).is_none());
    }

    #[test]
    fn names_round_trip() {
        for decision in [Decision::Healthy, Decision::Covid19, Decision::OtherDisease] {
            assert_eq!(parse_decision(decision_name(decision)), Ok(decision));
            assert_eq!(
                serde_json::to_value(decision).unwrap(),
                decision_name(decision)
            );
        }
        assert!(parse_decision("covid").is_err());
        assert_eq!("rejected".parse::<Status>(), Ok(Status::Rejected));
        assert!("done".parse::<Status>().is_err());
    }
}
