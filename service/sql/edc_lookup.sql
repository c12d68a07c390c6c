-- EDC lookup for one uploaded file (CONTRACT section 3), against the reference `edc` schema.
-- Replace with EDC_LOOKUP_SQL for a real EDC: keep the named parameters and the column names.
-- Parameters: subject_id, subjecteventcrf_id, ddfile_name, version_code.
SELECT
    ddcrf.name                        AS ddcrf_name,
    ddfile.name                       AS ddfile_name,
    subject.participant_code          AS participant_code,
    event.code                        AS event_code,
    subjecteventcrf.id                AS subjecteventcrf_id,
    subjecteventcrffile.revisionnumber AS revision_number,
    subjecteventcrffile.id            AS subjecteventcrffile_id
FROM edc.subjecteventcrffile
JOIN edc.subjecteventcrf ON subjecteventcrf.id = subjecteventcrffile.subjecteventcrf_id
JOIN edc.subject         ON subject.id = subjecteventcrf.subject_id
JOIN edc.event           ON event.id = subjecteventcrf.event_id
JOIN edc.ddfile          ON ddfile.id = subjecteventcrffile.ddfile_id
JOIN edc.ddcrf           ON ddcrf.id = ddfile.ddcrf_id
WHERE subjecteventcrf.id = %(subjecteventcrf_id)s
  AND subjecteventcrf.subject_id = %(subject_id)s
  AND ddfile.name = %(ddfile_name)s
  AND subjecteventcrffile.version_code = %(version_code)s
