-- facesyncd schema, version 10. Never edit a released migration: add 0011_*.sql instead.

-- A partner's photo this key stopped seeing while the partner is still a partner (hidden from the
-- timeline) is 'withheld': like a trashed one it keeps its bytes and faces, out of the facesets, so
-- showing the partner again brings them back without a download. SQLite changes a CHECK constraint
-- only by copying the table.
CREATE TABLE assets_v10 (
    source              TEXT NOT NULL REFERENCES sources(name),
    asset_id            TEXT NOT NULL,
    type                TEXT,
    original_file_name  TEXT,
    checksum            TEXT,           -- Immich's base64 SHA-1: a change means new bytes
    checksum_kind       TEXT,
    updated_at          TEXT,
    file_created_at     TEXT,
    width               INTEGER,
    height              INTEGER,
    -- pending: work to do; done: embedded (sha256 set); skipped: nothing to do (reason says why);
    -- failed: will be retried (attempts, next_attempt_at); parked: failed too often;
    -- trashed (in Immich's trash) / withheld (a hidden partner's): bytes and faces kept, out of the
    -- facesets; deleted: gone from Immich, faces removed.
    state               TEXT NOT NULL CHECK (state IN
                          ('pending', 'done', 'skipped', 'failed', 'parked', 'trashed', 'withheld', 'deleted')),
    reason              TEXT,
    sha256              TEXT REFERENCES blobs(sha256) ON DELETE SET NULL,
    attempts            INTEGER NOT NULL DEFAULT 0,
    next_attempt_at     TEXT,
    first_seen_at       TEXT NOT NULL,
    changed_at          TEXT NOT NULL,
    owner_id            TEXT,           -- Immich's ownerId: a partner's photo says whose it is
    PRIMARY KEY (source, asset_id)
);
INSERT INTO assets_v10 (source, asset_id, type, original_file_name, checksum, checksum_kind, updated_at,
        file_created_at, width, height, state, reason, sha256, attempts, next_attempt_at, first_seen_at,
        changed_at, owner_id)
    SELECT source, asset_id, type, original_file_name, checksum, checksum_kind, updated_at, file_created_at,
        width, height, state, reason, sha256, attempts, next_attempt_at, first_seen_at, changed_at, owner_id
    FROM assets;
DROP TABLE assets;
ALTER TABLE assets_v10 RENAME TO assets;
CREATE INDEX assets_by_state ON assets(state);
CREATE INDEX assets_by_sha256 ON assets(sha256);
CREATE INDEX assets_by_checksum ON assets(checksum);

-- The census: changes the incremental listing never shows (a force delete that skipped the trash, a
-- move into the locked folder, a partner shown or hidden) change how many assets Immich counts. Each
-- full listing keeps how far Immich's count stood from the store's (census_offset); every
-- [schedule] sweep_minutes one count request (at census_at) compares again, and a difference lists
-- the whole library at once.
ALTER TABLE sources ADD COLUMN census_offset INTEGER;
ALTER TABLE sources ADD COLUMN census_at TEXT;
