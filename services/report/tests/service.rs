//! The report service against the real broker, object store and PostgreSQL: results
//! events in, study rows, report files, report events and the HTTP API out.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{analysed, get, rejected, wait_for, Findings, Servers, NORTH_TOKEN, SOUTH_TOKEN};
use lungstream_runtime::store::keys;
use lungstream_schemas::events::{topics, DeadLetterEvent};
use lungstream_schemas::report::{Decision, Report};
use lungstream_schemas::ReasonCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analysed_result_gives_one_report() {
    let servers = Servers::new("report-once");
    let store = servers.store();
    let (running, shutdown) = servers.start().await;
    assert_eq!(get(&running, "/readyz", None).await.status, 200);
    let producer = servers.producer();
    let (event, overlays) = analysed(
        &store,
        "north",
        "1.2.100",
        "1.2.100.1",
        1,
        &Findings::default(),
    )
    .await;
    servers.send(&producer, &event).await;

    let reports = servers.report_events(1).await;
    assert_eq!(reports.len(), 1);
    let report_event = &reports[0];
    assert_eq!(report_event.hospital, "north");
    assert_eq!(report_event.study_uid, "1.2.100");
    assert_eq!(report_event.series_uid, "1.2.100.1");
    assert_eq!(report_event.status, "analysed");
    assert_eq!(report_event.decision, Some(Decision::Covid19));
    assert_eq!(
        report_event.patient_key.as_deref(),
        Some("patient-key-0123")
    );
    assert_eq!(report_event.model_version.as_deref(), Some("model-v1"));
    assert_eq!(report_event.infected_percent.unwrap().total, 12.5);
    assert!(report_event.other_series.is_empty());
    let expected_key = format!(
        "{}report.json",
        keys::report_prefix("north", "1.2.100", "1.2.100.1", 1, "model-v1")
    );
    assert_eq!(
        report_event.report_key.as_deref(),
        Some(expected_key.as_str())
    );

    // The event's fields are the pseudonymous keys and findings only.
    let json = serde_json::to_value(report_event).unwrap();
    let fields: BTreeSet<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let allowed: BTreeSet<&str> = [
        "schema_version",
        "hospital",
        "study_uid",
        "patient_key",
        "series_uid",
        "other_series",
        "status",
        "reason",
        "decision",
        "probabilities",
        "infected_percent",
        "infected_ml",
        "model_id",
        "model_version",
        "research_only",
        "report_key",
        "timings_ms",
        "reported_at",
    ]
    .into();
    assert_eq!(fields, allowed);

    // One study row, published.
    let row = running
        .database
        .study("north", "1.2.100")
        .await
        .unwrap()
        .expect("a study row");
    assert!(row.published);
    assert_eq!(row.severity, Some(12.5));
    assert_eq!(row.decision.as_deref(), Some("covid19"));
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM studies")
        .fetch_one(running.database.pool())
        .await
        .unwrap();
    assert_eq!(count, 1);

    // report.json is the series report; report.html embeds both overlays.
    let stored: Report = serde_json::from_slice(&store.get(&expected_key).await.unwrap()).unwrap();
    let lungstream_schemas::events::SeriesOutcome::Analysed(analysis) = &event.outcome else {
        unreachable!()
    };
    assert_eq!(stored, analysis.report);
    let html_key = expected_key.replace("report.json", "report.html");
    let html = String::from_utf8(store.get(&html_key).await.unwrap().to_vec()).unwrap();
    assert_eq!(html.matches("data:image/png;base64,").count(), 2, "{html}");

    // The same result again: nothing new on the topic, one duplicate counted.
    servers.send(&producer, &event).await;
    wait_for("the duplicate to be counted", || async {
        running
            .ops
            .metrics
            .encode()
            .contains("lungstream_report_duplicates_total 1")
    })
    .await;
    let again = servers
        .read_expecting(topics::REPORTS, 1, Duration::from_secs(3))
        .await;
    assert_eq!(again.len(), 1);

    // The API serves the study, its page and its overlays.
    let detail = get(&running, "/api/v1/studies/1.2.100", Some(NORTH_TOKEN)).await;
    assert_eq!(detail.status, 200);
    let detail = detail.json();
    assert_eq!(detail["status"], "analysed");
    assert_eq!(detail["severity"], 12.5);
    assert_eq!(detail["report"]["series"]["series_uid"], "1.2.100.1");
    assert_eq!(detail["series"].as_array().unwrap().len(), 1);
    let page = get(
        &running,
        "/api/v1/studies/1.2.100/report.html",
        Some(NORTH_TOKEN),
    )
    .await;
    assert_eq!(page.status, 200);
    assert!(
        page.content_type.starts_with("text/html"),
        "{}",
        page.content_type
    );
    assert_eq!(page.body, html.as_bytes());
    for (name, bytes) in &overlays {
        let image = get(
            &running,
            &format!("/api/v1/studies/1.2.100/overlays/{name}"),
            Some(NORTH_TOKEN),
        )
        .await;
        assert_eq!(image.status, 200, "{name}");
        assert_eq!(image.content_type, "image/png");
        assert_eq!(&image.body, bytes, "{name}");
    }
    let unlisted = get(
        &running,
        "/api/v1/studies/1.2.100/overlays/slice-0099.png",
        Some(NORTH_TOKEN),
    )
    .await;
    assert_eq!(unlisted.status, 404);

    shutdown.cancel();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn study_choice_follows_rule() {
    let servers = Servers::new("report-choice");
    let store = servers.store();
    let (running, shutdown) = servers.start().await;
    let producer = servers.producer();
    let study = "1.2.200";

    // A rejected series alone: the study is rejected, with no report file.
    servers
        .send(
            &producer,
            &rejected("north", study, "1.2.200.1", 1, ReasonCode::NoLungs),
        )
        .await;
    let reports = servers.report_events(1).await;
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].status, "rejected");
    assert_eq!(reports[0].reason, Some(ReasonCode::NoLungs));
    assert_eq!(reports[0].decision, None);
    assert_eq!(reports[0].report_key, None);

    // An analysed series takes over from the rejected one.
    let fewer = Findings {
        slices_with_lungs: 50,
        ..Findings::default()
    };
    let (second, _) = analysed(&store, "north", study, "1.2.200.2", 1, &fewer).await;
    servers.send(&producer, &second).await;
    let reports = servers.report_events(2).await;
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[1].status, "analysed");
    assert_eq!(reports[1].series_uid, "1.2.200.2");
    assert_eq!(reports[1].other_series, vec!["1.2.200.1".to_string()]);

    // A series with fewer slices with lungs does not take over; the report is published
    // again with it listed among the other series.
    let smaller = Findings {
        slices_with_lungs: 30,
        decision: Decision::OtherDisease,
        ..Findings::default()
    };
    let (third, _) = analysed(&store, "north", study, "1.2.200.3", 1, &smaller).await;
    servers.send(&producer, &third).await;
    wait_for("the third series to be recorded", || async {
        let row = running
            .database
            .study("north", study)
            .await
            .unwrap()
            .unwrap();
        row.other_series.len() == 2
    })
    .await;
    let row = running
        .database
        .study("north", study)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.series_uid, "1.2.200.2");
    assert_eq!(
        row.other_series,
        vec!["1.2.200.1".to_string(), "1.2.200.3".to_string()]
    );
    let reports = servers.report_events(3).await;
    assert_eq!(reports.len(), 3);
    assert_eq!(reports[2].series_uid, "1.2.200.2");
    assert_eq!(
        reports[2].other_series,
        vec!["1.2.200.1".to_string(), "1.2.200.3".to_string()]
    );

    // A later revision of that series with more lung slices takes over.
    let larger = Findings {
        slices_with_lungs: 80,
        decision: Decision::OtherDisease,
        ..Findings::default()
    };
    let (fourth, _) = analysed(&store, "north", study, "1.2.200.3", 2, &larger).await;
    servers.send(&producer, &fourth).await;
    let reports = servers.report_events(4).await;
    assert_eq!(reports.len(), 4);
    assert_eq!(reports[3].series_uid, "1.2.200.3");
    assert_eq!(reports[3].decision, Some(Decision::OtherDisease));
    assert_eq!(
        reports[3].other_series,
        vec!["1.2.200.1".to_string(), "1.2.200.2".to_string()]
    );
    let row = running
        .database
        .study("north", study)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.series_revision, 2);
    assert_eq!(row.decision.as_deref(), Some("other_disease"));
    let results = running.database.results("north", study).await.unwrap();
    assert_eq!(results.len(), 4);

    shutdown.cancel();
    running.wait().await.unwrap();
}

/// Sends one study per entry to `north` and waits for all their report events.
async fn send_studies(servers: &Servers, studies: &[(&str, Option<Findings>)]) {
    let store = servers.store();
    let producer = servers.producer();
    for (study, findings) in studies {
        let series = format!("{study}.1");
        let event = match findings {
            Some(findings) => {
                analysed(&store, "north", study, &series, 1, findings)
                    .await
                    .0
            }
            None => rejected("north", study, &series, 1, ReasonCode::NoLungs),
        };
        servers.send(&producer, &event).await;
    }
    let reports = servers.report_events(studies.len()).await;
    assert_eq!(reports.len(), studies.len());
}

fn study_uids(reply: &common::Reply) -> Vec<String> {
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    reply
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["study_uid"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worklist_sorts_and_filters() {
    let servers = Servers::new("report-worklist");
    let (running, shutdown) = servers.start().await;
    let finding = |decision, p_diseased, infected_percent| {
        Some(Findings {
            decision,
            p_diseased,
            infected_percent,
            ..Findings::default()
        })
    };
    send_studies(
        &servers,
        &[
            ("1.3.1", finding(Decision::Covid19, 0.9, 30.0)),
            ("1.3.2", finding(Decision::Healthy, 0.1, 2.0)),
            ("1.3.3", None),
            ("1.3.4", finding(Decision::OtherDisease, 0.95, 55.0)),
            ("1.3.5", finding(Decision::Covid19, 0.7, 30.0)),
        ],
    )
    .await;
    // Report times one minute apart, 1.3.1 oldest, so the time order is known.
    for (minutes, study) in ["1.3.1", "1.3.2", "1.3.3", "1.3.4", "1.3.5"]
        .iter()
        .enumerate()
    {
        sqlx::query("UPDATE studies SET reported_at = now() - make_interval(mins => $1) WHERE study_uid = $2")
            .bind(10 - minutes as i32)
            .bind(study)
            .execute(running.database.pool())
            .await
            .unwrap();
    }

    let severity = get(
        &running,
        "/api/v1/worklist?sort=severity",
        Some(NORTH_TOKEN),
    )
    .await;
    assert_eq!(
        study_uids(&severity),
        ["1.3.4", "1.3.1", "1.3.5", "1.3.2", "1.3.3"]
    );
    let default = get(&running, "/api/v1/worklist", Some(NORTH_TOKEN)).await;
    assert_eq!(study_uids(&default), study_uids(&severity));
    let time = get(&running, "/api/v1/worklist?sort=time", Some(NORTH_TOKEN)).await;
    assert_eq!(
        study_uids(&time),
        ["1.3.5", "1.3.4", "1.3.3", "1.3.2", "1.3.1"]
    );
    let covid = get(
        &running,
        "/api/v1/worklist?decision=covid19",
        Some(NORTH_TOKEN),
    )
    .await;
    assert_eq!(study_uids(&covid), ["1.3.1", "1.3.5"]);
    let rejected = get(
        &running,
        "/api/v1/worklist?status=rejected",
        Some(NORTH_TOKEN),
    )
    .await;
    assert_eq!(study_uids(&rejected), ["1.3.3"]);
    let page = get(
        &running,
        "/api/v1/worklist?sort=severity&limit=2&offset=1",
        Some(NORTH_TOKEN),
    )
    .await;
    assert_eq!(study_uids(&page), ["1.3.1", "1.3.5"]);
    let south = get(&running, "/api/v1/worklist", Some(SOUTH_TOKEN)).await;
    assert!(study_uids(&south).is_empty());

    // The entries carry findings and no patient attribute besides the key.
    let first = &severity.json()[0];
    assert_eq!(first["decision"], "other_disease");
    assert_eq!(first["probabilities"]["diseased"], 0.95);
    assert_eq!(first["infected_percent"]["total"], 55.0);
    assert_eq!(first["patient_key"], "patient-key-0123");
    let last = &severity.json()[4];
    assert_eq!(last["status"], "rejected");
    assert_eq!(last["reason"], "no_lungs");
    assert!(last["severity"].is_null());

    for bad in [
        "sort=size",
        "decision=covid",
        "status=done",
        "limit=0",
        "limit=501",
        "offset=-1",
        "limit=abc",
    ] {
        let reply = get(
            &running,
            &format!("/api/v1/worklist?{bad}"),
            Some(NORTH_TOKEN),
        )
        .await;
        assert_eq!(reply.status, 400, "{bad}");
        // Every error is JSON with the reason, including query strings that do not parse.
        assert_eq!(reply.content_type, "application/json", "{bad}");
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{bad}");
    }

    shutdown.cancel();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_count_days_and_bins() {
    let servers = Servers::new("report-aggregates");
    let (running, shutdown) = servers.start().await;
    let finding = |decision, infected_percent| {
        Some(Findings {
            decision,
            infected_percent,
            ..Findings::default()
        })
    };
    send_studies(
        &servers,
        &[
            ("1.4.1", finding(Decision::Covid19, 12.0)),
            ("1.4.2", finding(Decision::Covid19, 19.9)),
            ("1.4.3", finding(Decision::Healthy, 0.5)),
            ("1.4.4", None),
            ("1.4.5", finding(Decision::OtherDisease, 100.0)),
            ("1.4.6", finding(Decision::Covid19, 45.0)),
        ],
    )
    .await;
    // 1.4.5 and 1.4.6 arrived two days ago, 1.4.6 outside a two-day window.
    for (study, days) in [("1.4.5", 1), ("1.4.6", 2)] {
        sqlx::query("UPDATE studies SET first_seen_at = now() - make_interval(days => $1) WHERE study_uid = $2")
            .bind(days)
            .bind(study)
            .execute(running.database.pool())
            .await
            .unwrap();
    }

    let reply = get(&running, "/api/v1/aggregates?days=2", Some(NORTH_TOKEN)).await;
    assert_eq!(reply.status, 200);
    let aggregates = reply.json();
    assert_eq!(aggregates["hospital"], "north");
    assert_eq!(aggregates["days"], 2);
    let per_day = aggregates["per_day"].as_array().unwrap();
    assert_eq!(per_day.len(), 2);
    let counts = |day: &serde_json::Value| {
        ["healthy", "covid19", "other_disease", "rejected"]
            .map(|class| day[class].as_i64().unwrap())
    };
    assert_eq!(counts(&per_day[0]), [0, 0, 1, 0], "{per_day:?}");
    assert_eq!(counts(&per_day[1]), [1, 2, 0, 1], "{per_day:?}");
    let today = lungstream_runtime::telemetry::now_rfc3339()[..10].to_string();
    assert_eq!(per_day[1]["day"], today.as_str());

    let bins: Vec<i64> = aggregates["severity_histogram"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["studies"].as_i64().unwrap())
        .collect();
    assert_eq!(bins, [1, 2, 0, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(aggregates["severity_histogram"][9]["to"], 100.0);

    let wider = get(&running, "/api/v1/aggregates?days=3", Some(NORTH_TOKEN))
        .await
        .json();
    let bins: Vec<i64> = wider["severity_histogram"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["studies"].as_i64().unwrap())
        .collect();
    assert_eq!(bins, [1, 2, 0, 0, 1, 0, 0, 0, 0, 1]);
    assert_eq!(wider["per_day"].as_array().unwrap().len(), 3);
    assert_eq!(
        get(&running, "/api/v1/aggregates", Some(NORTH_TOKEN))
            .await
            .json()["days"],
        30
    );

    let south = get(&running, "/api/v1/aggregates?days=2", Some(SOUTH_TOKEN))
        .await
        .json();
    let south_bins: i64 = south["severity_histogram"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["studies"].as_i64().unwrap())
        .sum();
    assert_eq!(south_bins, 0);
    assert_eq!(
        get(&running, "/api/v1/aggregates?days=0", Some(NORTH_TOKEN))
            .await
            .status,
        400
    );
    assert_eq!(
        get(&running, "/api/v1/aggregates?days=367", Some(NORTH_TOKEN))
            .await
            .status,
        400
    );

    shutdown.cancel();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_checks_tokens_and_hospitals() {
    let servers = Servers::new("report-access");
    let store = servers.store();
    let (running, shutdown) = servers.start().await;
    let producer = servers.producer();
    let (south_event, overlays) =
        analysed(&store, "south", "1.5.1", "1.5.1.1", 1, &Findings::default()).await;
    servers.send(&producer, &south_event).await;
    servers
        .send(
            &producer,
            &rejected("north", "1.5.2", "1.5.2.1", 1, ReasonCode::NoLungs),
        )
        .await;
    assert_eq!(servers.report_events(2).await.len(), 2);

    let overlay = format!("/api/v1/studies/1.5.1/overlays/{}", overlays[0].0);
    let paths = [
        "/api/v1/worklist",
        "/api/v1/studies/1.5.1",
        "/api/v1/studies/1.5.1/report.html",
        overlay.as_str(),
        "/api/v1/aggregates",
    ];
    for path in paths {
        let missing = get(&running, path, None).await;
        assert_eq!(missing.status, 401, "{path}");
        assert_eq!(missing.json()["error"], "a valid bearer token is required");
        assert_eq!(
            get(&running, path, Some("unknown-token-0123456789"))
                .await
                .status,
            401,
            "{path}"
        );
    }
    for path in &paths[1..4] {
        assert_eq!(
            get(&running, path, Some(NORTH_TOKEN)).await.status,
            403,
            "{path}"
        );
        assert_eq!(
            get(&running, path, Some(SOUTH_TOKEN)).await.status,
            200,
            "{path}"
        );
    }
    for path in [
        "/api/v1/studies/9.9.9",
        "/api/v1/studies/9.9.9/report.html",
        "/api/v1/studies/9.9.9/overlays/slice-0010.png",
    ] {
        assert_eq!(
            get(&running, path, Some(NORTH_TOKEN)).await.status,
            404,
            "{path}"
        );
    }

    // A rejected study has a study view but no page.
    let rejected_view = get(&running, "/api/v1/studies/1.5.2", Some(NORTH_TOKEN)).await;
    assert_eq!(rejected_view.status, 200);
    let rejected_view = rejected_view.json();
    assert_eq!(rejected_view["status"], "rejected");
    assert_eq!(rejected_view["reason"], "no_lungs");
    assert!(rejected_view["report"].is_null());
    let page = get(
        &running,
        "/api/v1/studies/1.5.2/report.html",
        Some(NORTH_TOKEN),
    )
    .await;
    assert_eq!(page.status, 404);
    assert!(page.json()["error"].as_str().unwrap().contains("no_lungs"));

    shutdown.cancel();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_result_goes_to_dead_letter() {
    let servers = Servers::new("report-malformed");
    let (running, shutdown) = servers.start().await;
    let producer = servers.producer();
    let not_results =
        serde_json::json!({"schema_version": "1.0", "hospital": "north", "status": "finished"});
    producer
        .send_json(topics::RESULTS, "1.6.1.1", &not_results)
        .await
        .unwrap();
    let mut with_nul = rejected("north", "1.6.2", "1.6.2.1", 1, ReasonCode::NoLungs);
    with_nul.outcome = lungstream_schemas::events::SeriesOutcome::Rejected {
        reason: ReasonCode::NoLungs,
        detail: "bad\u{0}byte".into(),
    };
    servers.send(&producer, &with_nul).await;

    let messages = servers
        .read_until(topics::DEAD_LETTER, Duration::from_secs(30), |m| {
            m.len() >= 2
        })
        .await;
    let dead: Vec<DeadLetterEvent> = messages
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect();
    assert_eq!(dead.len(), 2);
    for event in &dead {
        assert_eq!(event.reason, ReasonCode::MalformedEvent);
        assert_eq!(event.service, "report");
    }
    assert!(dead.iter().any(|d| d.detail.contains("NUL")), "{dead:?}");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM series_results")
        .fetch_one(running.database.pool())
        .await
        .unwrap();
    assert_eq!(count, 0);

    shutdown.cancel();
    running.wait().await.unwrap();
}

/// `sslmode=require` in the database URL gives an encrypted connection (the local
/// PostgreSQL of Debian serves TLS with its default certificate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_connection_uses_tls_on_request() {
    let database = common::TestDatabase::new();
    let url = format!("{}?sslmode=require", database.url);
    let connected = lungstream_report::db::Database::connect(&url, 1).await.unwrap();
    let encrypted: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(connected.pool())
        .await
        .unwrap();
    assert!(encrypted, "the connection is not encrypted");
    connected.pool().close().await;
}
