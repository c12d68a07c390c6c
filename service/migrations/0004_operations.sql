-- Operations (issue 11): pipeline kinds, reprocess executions, and the source version as the
-- event named it (version id and ETag apart, so a reprocess reads exactly the same version).
ALTER TABLE pipeline.edc_pipeline
    -- dicom: stamp the ATRIUID into every instance; copy: place the file unchanged (audio, PDF...).
    ADD COLUMN kind text NOT NULL DEFAULT 'dicom' CHECK (kind IN ('dicom', 'copy'));

ALTER TABLE pipeline.edc_pipeline_file
    ADD COLUMN source_version_id  text,     -- the S3 version id the event carried, if any
    ADD COLUMN source_etag        text,     -- the ETag the event carried, if any
    -- An operator's reprocess is a new execution of the same file (CONTRACT section 4): it points
    -- at the job it reprocesses. A job is reprocessed at most once, so repeating the request makes
    -- no second execution; to run a file again after that, reprocess the newest execution.
    ADD COLUMN reprocess_of       bigint REFERENCES pipeline.edc_pipeline_file(id);

-- One object version is one job, however often it is delivered; reprocesses are further
-- executions of that version and sit outside the rule.
ALTER TABLE pipeline.edc_pipeline_file DROP CONSTRAINT edc_pipeline_file_one_job_per_version;
CREATE UNIQUE INDEX edc_pipeline_file_one_job_per_version
    ON pipeline.edc_pipeline_file (source_bucket, source_key, source_version) WHERE reprocess_of IS NULL;
CREATE UNIQUE INDEX edc_pipeline_file_one_reprocess_per_job
    ON pipeline.edc_pipeline_file (reprocess_of) WHERE reprocess_of IS NOT NULL;
-- jobs list --stuck and the digest look for unsettled jobs.
CREATE INDEX edc_pipeline_file_unsettled ON pipeline.edc_pipeline_file (lease_until)
    WHERE status IN ('Started', 'In Progress');
