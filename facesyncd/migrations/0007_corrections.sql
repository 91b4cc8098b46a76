-- facesyncd schema, version 7. Never edit a released migration: add 0008_*.sql instead.

-- The user's corrections are state (never lost by a re-run) and constraints on every automatic step:
-- assignment, clustering of the pool, the merge of identities and a rebuilt index all respect them.

-- A locked identity takes no new faces automatically and takes part in no automatic merge.
ALTER TABLE identities ADD COLUMN locked_at TEXT;
-- The person asked not to be kept: faces, crops and export deleted, the number retired.
ALTER TABLE identities ADD COLUMN forgotten_at TEXT;
-- A face put in its identity by hand (`face move`): it stays there (must-link); an automatic merge
-- never moves it to another number.
ALTER TABLE faces ADD COLUMN placed_at TEXT;

-- "Not this person" (cannot-link): the face never joins that identity again.
CREATE TABLE rejections (
    face_id     INTEGER NOT NULL REFERENCES faces(id) ON DELETE CASCADE,
    identity    INTEGER NOT NULL REFERENCES identities(number),
    correction  INTEGER NOT NULL,
    PRIMARY KEY (face_id, identity)
);

-- Two identities the user keeps apart (a split): never merged automatically. low < high.
CREATE TABLE kept_apart (
    low         INTEGER NOT NULL REFERENCES identities(number),
    high        INTEGER NOT NULL REFERENCES identities(number),
    correction  INTEGER NOT NULL,
    PRIMARY KEY (low, high)
);

-- The block list of forgotten people, free of embeddings: a face detected again in one of these files
-- within the box (or anywhere, when the box is NULL: an imported crop) is never stored.
CREATE TABLE forgotten (
    sha256      TEXT NOT NULL,
    x1 REAL, y1 REAL, x2 REAL, y2 REAL,
    number      INTEGER NOT NULL,
    correction  INTEGER NOT NULL
);
CREATE INDEX forgotten_by_sha256 ON forgotten(sha256);

-- Every correction, newest last: what it did (for `history`) and what undoing it takes.
CREATE TABLE corrections (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          TEXT NOT NULL,
    kind        TEXT NOT NULL,
    summary     TEXT NOT NULL,
    undo        TEXT NOT NULL,            -- JSON
    undone_at   TEXT
);
