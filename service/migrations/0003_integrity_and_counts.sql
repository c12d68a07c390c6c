-- The integrity record (issue 10): size and SHA-256 of the source version the worker read and of
-- the object it wrote to quarantine, plus S3's own checksum of that object where S3 gives one
-- ("<base64>" for a single PUT, "<base64>-<parts>" for a multipart upload's composite checksum).
ALTER TABLE pipeline.edc_pipeline_file
    ADD COLUMN source_bytes            bigint,
    ADD COLUMN source_sha256           text CHECK (source_sha256 ~ '^[0-9a-f]{64}$'),
    ADD COLUMN quarantine_bytes        bigint,
    ADD COLUMN quarantine_sha256       text CHECK (quarantine_sha256 ~ '^[0-9a-f]{64}$'),
    ADD COLUMN quarantine_s3_checksum  text,
    -- What the upload held: members (1 for a single file), instances stamped, and system files
    -- (__MACOSX, .DS_Store, DICOMDIR...) carried over as expected parts of an upload.
    ADD COLUMN members                 integer,
    ADD COLUMN instances_stamped       integer,
    ADD COLUMN system_files            integer;
