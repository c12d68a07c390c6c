-- docker-compose: a second database standing in for the EDC read replica, with the reference
-- schema (mounted from service/sql) so the worker's lookup query has tables to read.
CREATE DATABASE edc;
\c edc
\i /sql/edc_reference_schema.sql
