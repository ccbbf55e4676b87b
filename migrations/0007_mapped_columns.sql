-- The typed columns the daemon added to tables for a mapping (LP_MAPPING_FILE, src/mapping/):
-- what tells a column the mapping no longer names (refused at start-up, never dropped by the
-- daemon) from a column an operator added by hand (left alone).
CREATE TABLE mapped_columns (
    table_name  text        NOT NULL,
    column_name text        NOT NULL,
    column_type text        NOT NULL,
    path        text        NOT NULL,
    -- False until the rows stored before the column existed were filled from `fields`.
    filled      boolean     NOT NULL DEFAULT false,
    added_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (table_name, column_name)
);
