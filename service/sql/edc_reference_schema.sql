-- The reference EDC schema (CONTRACT section 3) that the embedded stack and the tests create.
CREATE SCHEMA IF NOT EXISTS edc;
CREATE TABLE IF NOT EXISTS edc.subject (id bigint PRIMARY KEY, participant_code text NOT NULL);
CREATE TABLE IF NOT EXISTS edc.event (id bigint PRIMARY KEY, code text NOT NULL);
CREATE TABLE IF NOT EXISTS edc.ddcrf (id bigint PRIMARY KEY, name text NOT NULL);
CREATE TABLE IF NOT EXISTS edc.ddfile (
    id bigint PRIMARY KEY, ddcrf_id bigint NOT NULL REFERENCES edc.ddcrf(id), name text NOT NULL);
CREATE TABLE IF NOT EXISTS edc.subjecteventcrf (
    id bigint PRIMARY KEY,
    subject_id bigint NOT NULL REFERENCES edc.subject(id),
    event_id bigint NOT NULL REFERENCES edc.event(id),
    ddcrf_id bigint NOT NULL REFERENCES edc.ddcrf(id));
CREATE TABLE IF NOT EXISTS edc.subjecteventcrffile (
    id bigint PRIMARY KEY,
    subjecteventcrf_id bigint NOT NULL REFERENCES edc.subjecteventcrf(id),
    ddfile_id bigint NOT NULL REFERENCES edc.ddfile(id),
    version_code text NOT NULL,
    revisionnumber integer NOT NULL);
