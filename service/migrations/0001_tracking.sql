-- Tracking tables of CONTRACT section 4. Forward-only: later changes go in new numbered files.
CREATE SCHEMA IF NOT EXISTS pipeline;

CREATE TABLE pipeline.edc_pipeline (
    id          bigserial PRIMARY KEY,
    code        text NOT NULL UNIQUE CHECK (code ~ '^[A-Za-z0-9_-]{1,64}$'),
    label       text NOT NULL,
    enabled     boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Which EDC ddfile names a pipeline handles; a ddfile belongs to at most one pipeline.
CREATE TABLE pipeline.edc_pipeline_ddfile (
    ddfile_name      text PRIMARY KEY,
    edc_pipeline_id  bigint NOT NULL REFERENCES pipeline.edc_pipeline(id) ON DELETE CASCADE
);

CREATE TABLE pipeline.edc_pipeline_file (
    id                         bigserial PRIMARY KEY,
    edc_pipeline_id            bigint NOT NULL REFERENCES pipeline.edc_pipeline(id),
    subject_event_crf_file_id  bigint,
    source_bucket              text NOT NULL,
    source_key                 text NOT NULL,
    source_version             text NOT NULL,   -- S3 version id, else the ETag
    source_size                bigint,
    event_time                 timestamptz NOT NULL,
    file_name                  text NOT NULL,
    ddcrf_name                 text,
    ddfile_name                text,
    participant_code           text,
    event_code                 text,
    subjecteventcrf_id         bigint,
    revision_number            integer,
    destination_bucket         text,
    destination_key            text,
    status                     text NOT NULL DEFAULT 'Started'
                               CHECK (status IN ('Started', 'In Progress', 'Completed', 'Failed')),
    has_error                  boolean NOT NULL DEFAULT false,
    error_code                 text,
    attempts                   integer NOT NULL DEFAULT 0,
    lease_owner                text,            -- SQS message id of the delivery processing it
    lease_until                timestamptz,
    created_at                 timestamptz NOT NULL,
    updated_at                 timestamptz NOT NULL,
    completed_at               timestamptz,
    -- One object version is one job, however often it is delivered.
    CONSTRAINT edc_pipeline_file_one_job_per_version UNIQUE (source_bucket, source_key, source_version)
);
CREATE INDEX edc_pipeline_file_created_at ON pipeline.edc_pipeline_file (created_at);
CREATE INDEX edc_pipeline_file_status ON pipeline.edc_pipeline_file (status);

CREATE TABLE pipeline.edc_pipeline_file_dicom (
    id                    bigserial PRIMARY KEY,
    edc_pipeline_file_id  bigint NOT NULL REFERENCES pipeline.edc_pipeline_file(id),
    atri_uid              text NOT NULL UNIQUE,  -- {edc_pipeline_file.id}.{id}
    study_uid             text NOT NULL,
    series_uid            text NOT NULL,
    series_number         integer,
    number_of_instances   integer NOT NULL,
    created_at            timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT edc_pipeline_file_dicom_one_row_per_series
        UNIQUE (edc_pipeline_file_id, study_uid, series_uid)
);

-- One row per error. A key that fits no layout has no job: its row carries only the source key.
CREATE TABLE pipeline.edc_pipeline_error (
    id                    bigserial PRIMARY KEY,
    edc_pipeline_file_id  bigint REFERENCES pipeline.edc_pipeline_file(id),
    source_key            text,
    error_code            text NOT NULL,
    message               text NOT NULL,
    stage                 text NOT NULL,
    member                text,                 -- zip member the error is about, if any
    created_at            timestamptz NOT NULL
);
CREATE INDEX edc_pipeline_error_file ON pipeline.edc_pipeline_error (edc_pipeline_file_id);
CREATE INDEX edc_pipeline_error_created_at ON pipeline.edc_pipeline_error (created_at);
