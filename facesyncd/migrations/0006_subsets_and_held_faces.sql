-- facesyncd schema, version 6. Never edit a released migration: add 0007_*.sql instead.

-- An identity's labelled sub-set (the older pipeline's era splits, faceset_NNN_<label>): its faces
-- belong to identity NNN and are exported under faceset_NNN_<label>/.
ALTER TABLE faces ADD COLUMN subset TEXT;
-- A face the user set aside (the older pipeline's _thin/, _masked/, _merged/, _candidates/): it never
-- forms a faceset and never joins one; the value says which decision.
ALTER TABLE faces ADD COLUMN held TEXT;

-- Imports: an imported file set aside belongs to no identity, so `identity` may now be NULL (SQLite
-- changes a column's constraint only by copying the table). New: the sub-set or the decision a file
-- came with, and the name of the photo a crop was cut from when the tree gives a path rather than an
-- Immich asset id (matched against the asset's original file name).
CREATE TABLE imports_v6 (
    path          TEXT PRIMARY KEY,
    sha256        TEXT NOT NULL,
    identity      INTEGER REFERENCES identities(number),
    state         TEXT NOT NULL CHECK (state IN ('done', 'failed')),
    reason        TEXT,
    imported_at   TEXT NOT NULL,
    source        TEXT,
    asset_id      TEXT,
    bbox          TEXT,
    face_id       INTEGER,
    superseded_at TEXT,
    subset        TEXT,
    held          TEXT,
    source_name   TEXT
);
INSERT INTO imports_v6 (path, sha256, identity, state, reason, imported_at, source, asset_id, bbox, face_id, superseded_at)
    SELECT path, sha256, identity, state, reason, imported_at, source, asset_id, bbox, face_id, superseded_at FROM imports;
DROP TABLE imports;
ALTER TABLE imports_v6 RENAME TO imports;
CREATE INDEX imports_by_asset ON imports(asset_id);
CREATE INDEX imports_by_source_name ON imports(source_name);
