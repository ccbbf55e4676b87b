-- How `payload` holds the record's bytes: 'raw', 'redacted-json', 'aes-256-gcm' or 'withheld'
-- (see src/dead_letter.rs). Rows written before this column existed hold raw bytes.
ALTER TABLE dead_letters ADD COLUMN payload_encoding text NOT NULL DEFAULT 'raw';
