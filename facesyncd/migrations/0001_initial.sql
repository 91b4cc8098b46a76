-- facesyncd schema, version 1. Never edit a released migration: add 0002_*.sql instead.
-- Timestamps are UTC ISO-8601 strings (*_at). SQLite is the only source of truth; the HNSW index
-- and the faceset folders are rebuilt from these tables.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- One row per configured Immich user (a key only sees its own user's assets).
CREATE TABLE sources (
    name             TEXT PRIMARY KEY,
    url              TEXT NOT NULL,
    watermark        TEXT,            -- updatedAfter for the next sweep; advances after a complete sweep
    last_sweep_at    TEXT,
    last_reconcile_at TEXT,           -- last full listing, which catches assets deleted in Immich
    last_error       TEXT,
    last_error_at    TEXT
);

-- Distinct file contents: identical bytes under several assets or users are embedded once.
CREATE TABLE blobs (
    sha256        TEXT PRIMARY KEY,
    size          INTEGER NOT NULL,
    width         INTEGER,
    height        INTEGER,
    decoded_from  TEXT NOT NULL,      -- 'original' or 'preview' (original could not be decoded)
    model         TEXT NOT NULL,
    embedded_at   TEXT NOT NULL
);

CREATE TABLE assets (
    source              TEXT NOT NULL REFERENCES sources(name),
    asset_id            TEXT NOT NULL,
    type                TEXT,
    original_file_name  TEXT,
    checksum            TEXT,           -- Immich's base64 SHA-1: a change means new bytes
    updated_at          TEXT,
    file_created_at     TEXT,
    width               INTEGER,
    height              INTEGER,
    -- pending: work to do; done: embedded (sha256 set); skipped: nothing to do (reason says why);
    -- failed: will be retried (attempts, next_attempt_at); parked: failed too often;
    -- trashed / deleted: gone from Immich, faces removed.
    state               TEXT NOT NULL CHECK (state IN
                          ('pending', 'done', 'skipped', 'failed', 'parked', 'trashed', 'deleted')),
    reason              TEXT,
    sha256              TEXT REFERENCES blobs(sha256) ON DELETE SET NULL,
    attempts            INTEGER NOT NULL DEFAULT 0,
    next_attempt_at     TEXT,
    first_seen_at       TEXT NOT NULL,
    changed_at          TEXT NOT NULL,
    PRIMARY KEY (source, asset_id)
);
CREATE INDEX assets_by_state ON assets(state);
CREATE INDEX assets_by_sha256 ON assets(sha256);

-- Identity numbers are faceset numbers. Rows are never deleted, so numbers are never reused.
CREATE TABLE identities (
    number      INTEGER PRIMARY KEY,
    origin      TEXT NOT NULL,          -- 'cluster' or 'import'
    created_at  TEXT NOT NULL
);

CREATE TABLE faces (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,   -- AUTOINCREMENT: ids (index labels) never reused
    sha256      TEXT NOT NULL REFERENCES blobs(sha256) ON DELETE CASCADE,
    face_index  INTEGER NOT NULL,
    x1 REAL NOT NULL, y1 REAL NOT NULL, x2 REAL NOT NULL, y2 REAL NOT NULL,
    det_score   REAL NOT NULL,
    landmarks   TEXT NOT NULL,                       -- JSON [[x, y] * 5]
    embedding   BLOB NOT NULL,                       -- float32, L2-normalised
    crop        TEXT NOT NULL,                       -- path under state_dir/crops
    identity    INTEGER REFERENCES identities(number),
    distance    REAL,                                -- to the identity when it joined
    matched_at  TEXT,                                -- NULL: not yet compared with the identities
    UNIQUE (sha256, face_index)
);
CREATE INDEX faces_by_identity ON faces(identity);

CREATE TABLE imports (
    path        TEXT PRIMARY KEY,                    -- file of an imported faceset tree
    sha256      TEXT NOT NULL,
    identity    INTEGER NOT NULL REFERENCES identities(number),
    state       TEXT NOT NULL CHECK (state IN ('done', 'failed')),
    reason      TEXT,
    imported_at TEXT NOT NULL
);

CREATE TABLE cycles (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at   TEXT NOT NULL,
    finished_at  TEXT,
    ok           INTEGER,
    error        TEXT,
    report       TEXT                                -- JSON summary of the cycle
);
