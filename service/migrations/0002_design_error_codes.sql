-- The error codes follow the design's dictionary (CONTRACT section 7) from this release on.
-- Rows written before keep their meaning under the new numbers. Codes that split in two map to
-- the more common reading: old ERRL2002 (corrupt) -> ERRS1002, old ERRS1004 (replica) -> ERRL1002.
-- One statement per table, so no row is renumbered twice (several old codes are new codes too).
CREATE TEMPORARY TABLE error_code_renumbering (old_code text PRIMARY KEY, new_code text NOT NULL)
    ON COMMIT DROP;
INSERT INTO error_code_renumbering (old_code, new_code) VALUES
    ('ERRL1002', 'ERRL2002'),
    ('ERRL1004', 'ERRL1005'),
    ('ERRL2001', 'ERRS1012'),
    ('ERRL2002', 'ERRS1002'),
    ('ERRL2003', 'ERRS1014'),
    ('ERRL2004', 'ERRS1008'),
    ('ERRL3001', 'ERRS1015'),
    ('ERRL3002', 'ERRS1010'),
    ('ERRL3003', 'ERRS1016'),
    ('ERRL3004', 'ERRS1017'),
    ('ERRL3005', 'ERRS1013'),
    ('ERRL3006', 'ERRS1011'),
    ('ERRL3007', 'ERRS1018'),
    ('ERRL4001', 'ERRL4004'),
    ('ERRL5001', 'ERRL2003'),
    ('ERRL8001', 'ERRL8005'),
    ('ERRS1002', 'ERRL2001'),
    ('ERRS1003', 'ERRL4002'),
    ('ERRS1004', 'ERRL1002'),
    ('ERRS1005', 'ERRS1004'),
    ('ERRS1006', 'ERRL4006'),
    ('ERRS1007', 'ERRL2005'),
    ('ERRS1008', 'ERRL8004'),
    ('ERRS1009', 'ERRL8002'),
    ('ERRS1010', 'ERRL8003'),
    ('ERRS1011', 'ERRL4007');

UPDATE pipeline.edc_pipeline_file f SET error_code = r.new_code
    FROM error_code_renumbering r WHERE f.error_code = r.old_code;
UPDATE pipeline.edc_pipeline_error e SET error_code = r.new_code
    FROM error_code_renumbering r WHERE e.error_code = r.old_code;
