-- The lab digest (issue 12): the windows sent and, per window and channel, a delivery claim.
-- A window is [window_start, window_end); each scope's windows follow one another with no gap and
-- no overlap: a new window starts where the scope's latest one ended.
CREATE TABLE pipeline.digest_window (
    id            bigserial PRIMARY KEY,
    scope         text NOT NULL,                -- a pipeline code, or '*' for all pipelines
    window_start  timestamptz NOT NULL,
    window_end    timestamptz NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (window_start < window_end),
    -- Two windows of one scope never share an end (nor, following on, a start).
    CONSTRAINT digest_window_one_per_end UNIQUE (scope, window_end)
);
CREATE INDEX digest_window_latest ON pipeline.digest_window (scope, window_end DESC);

-- One claim per (window, channel): a second run for the same window finds it and sends nothing.
-- 'sending' older than the stale limit is a crashed sender and may be taken over.
CREATE TABLE pipeline.digest_delivery (
    digest_window_id  bigint NOT NULL REFERENCES pipeline.digest_window(id),
    channel           text NOT NULL CHECK (channel IN ('email', 'sns', 'slack')),
    status            text NOT NULL CHECK (status IN ('sending', 'sent', 'failed')),
    attempts          integer NOT NULL DEFAULT 1,
    attempted_at      timestamptz NOT NULL,
    sent_at           timestamptz,
    error_code        text,                     -- the channel's error code or HTTP status; no PHI
    error_text        text,                     -- our own one-line description; never a payload
    PRIMARY KEY (digest_window_id, channel)
);
