-- The redaction a dead letter was written under (see src/redact.rs, `Redactor::policy`), so a
-- replay can refuse to store its record with less: `{"drop":[...],"hash":[...],"keyed":bool}`,
-- NULL without redaction. Rows written before this column existed have NULL here.
ALTER TABLE dead_letters ADD COLUMN redaction text;
