-- Tables of the report service: every series result received, and one row per study
-- with the series chosen for its report.

-- One row per results event, written once. A replayed event hits the unique key and
-- changes nothing.
CREATE TABLE series_results (
    id                bigserial PRIMARY KEY,
    hospital          text NOT NULL,
    study_uid         text NOT NULL,
    series_uid        text NOT NULL,
    series_revision   bigint NOT NULL,
    -- Version (weights hash) of the model; empty for a rejected series.
    model_version     text NOT NULL,
    status            text NOT NULL CHECK (status IN ('analysed', 'rejected')),
    -- Reason code and detail of a rejected series.
    reason            text,
    detail            text,
    -- healthy, covid19 or other_disease; NULL for a rejected series.
    decision          text,
    p_diseased        double precision,
    p_covid           double precision,
    -- Infected share (percent) and volume (mL) of both lungs.
    infected_percent  double precision,
    infected_ml       double precision,
    slices_with_lungs integer,
    patient_key       text,
    -- The whole results event, series report and object keys included.
    result            jsonb NOT NULL,
    received_at       timestamptz NOT NULL DEFAULT now(),
    -- The study is part of the key: a series UID seen under two studies (a PACS merge, an
    -- anonymiser that rewrites study UIDs) is two results, one per study.
    UNIQUE (hospital, study_uid, series_uid, series_revision, model_version)
);

CREATE INDEX series_results_study ON series_results (hospital, study_uid);

-- One row per study: the series its report is about, and that series' findings.
CREATE TABLE studies (
    hospital                text NOT NULL,
    study_uid               text NOT NULL,
    patient_key             text,
    series_uid              text NOT NULL,
    series_revision         bigint NOT NULL,
    model_version           text NOT NULL,
    model_id                text,
    research_only           boolean,
    status                  text NOT NULL CHECK (status IN ('analysed', 'rejected')),
    reason                  text,
    detail                  text,
    decision                text,
    p_diseased              double precision,
    p_covid                 double precision,
    infected_percent        double precision,
    infected_percent_right  double precision,
    infected_percent_left   double precision,
    infected_ml             double precision,
    infected_ml_right       double precision,
    infected_ml_left        double precision,
    -- Sort key of the worklist: the infected share of both lungs, percent, for an
    -- analysed study; NULL for a rejected one.
    severity                double precision,
    -- The study's other series, in series UID order.
    other_series            text[] NOT NULL DEFAULT '{}',
    -- Key of report.json in the object store; NULL for a rejected study.
    report_key              text,
    -- True once the report event of the current choice is on ct.reports.v1.
    published               boolean NOT NULL DEFAULT false,
    -- When the study's first result arrived.
    first_seen_at           timestamptz NOT NULL,
    -- When the current choice was made.
    reported_at             timestamptz NOT NULL,
    PRIMARY KEY (hospital, study_uid)
);

CREATE INDEX studies_by_severity ON studies (hospital, severity DESC NULLS LAST);
CREATE INDEX studies_by_time ON studies (hospital, reported_at DESC);
CREATE INDEX studies_by_first_seen ON studies (hospital, first_seen_at);
CREATE INDEX studies_by_uid ON studies (study_uid);
