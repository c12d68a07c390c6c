-- Error rows written before the member-label fixes can name the patient, and `jobs show` prints
-- their member and message columns. Until 1372606 a zip member was shown by its name (member
-- 'DOE^JOHN/IM1', message "member 'DOE^JOHN/IM1' is encrypted"); until eb54e0e by any short
-- suffix (member '#3.19650312', message "member (extension '.19650312') is encrypted"). Both are
-- rewritten to today's label: the 1-based position, plus the extension only when it is a known one
-- (service/processors/directory.py KNOWN_EXTENSIONS, as of this release).

-- '#N.suffix' keeps the suffix only when it is a known extension (old labels were lower-cased).
UPDATE pipeline.edc_pipeline_error
   SET member = substring(member FROM '^#[0-9]+')
 WHERE member ~ '^#[0-9]+\.[^./]{1,9}$'
   AND substring(member FROM '^#[0-9]+\.([^./]{1,9})$') NOT IN (
       'dcm', 'dicom', 'dic', 'dc3', 'ima', 'img', 'hdr', 'nii', 'mha', 'mhd', 'nrrd', 'raw', 'bin',
       'dat', 'gz', 'zip', 'tar', '7z', 'rar', 'txt', 'xml', 'json', 'csv', 'pdf', 'rtf', 'doc',
       'docx', 'xls', 'xlsx', 'htm', 'html', 'jpg', 'jpeg', 'png', 'bmp', 'gif', 'tif', 'tiff',
       'ini', 'db', 'log');

-- Anything else is a raw member name: its position was never recorded, so none is invented.
UPDATE pipeline.edc_pipeline_error
   SET member = '#?'
 WHERE member IS NOT NULL AND member !~ '^#[0-9]+(\.[^./]{1,9})?$';

-- Messages: "member (extension '...')", "member (no extension)" and "member '<name>'" (a Python
-- repr, so single- or double-quoted with backslash escapes) become "member #N" when the row names
-- a position, else plain "member".
UPDATE pipeline.edc_pipeline_error
   SET message = regexp_replace(
       message,
       $re$member (\(extension ('([^'\\]|\\.)*'|"([^"\\]|\\.)*")\)|\(no extension\)|'([^'\\]|\\.)*'|"([^"\\]|\\.)*")$re$,
       CASE WHEN member ~ '^#[0-9]+' THEN 'member ' || member ELSE 'member' END,
       'g')
 WHERE message ~ $re$member (\(extension ('([^'\\]|\\.)*'|"([^"\\]|\\.)*")\)|\(no extension\)|'([^'\\]|\\.)*'|"([^"\\]|\\.)*")$re$;
