-- facesyncd schema, version 15. Never edit a released migration: add 0016_*.sql instead.

-- Per faceset, what the review page, `status` and `faceset list` show of its faces: how many are live,
-- the best one, when one last moved. Counting them over every face for each page took 2.7 s of CPU at
-- 500,000 faces (benchmarks/bench_queries.py). The store keeps these rows and recomputes, when it next
-- reads them, only the facesets the triggers below marked stale: a page costs what changed since the
-- last one (a faceset without a row has no faces yet). A cache of the faces table: dropping both tables' rows and marking every faceset stale
-- rebuilds it.
CREATE TABLE faceset_stats (
    number     INTEGER PRIMARY KEY,
    faces      INTEGER NOT NULL,       -- live faces (LIVE_FACE)
    best_face  INTEGER,                -- highest quality, then lowest id, among them
    moved_at   TEXT                    -- latest placed_at / matched_at of any of its faces
);
CREATE TABLE faceset_stats_stale (number INTEGER PRIMARY KEY);
INSERT INTO faceset_stats_stale (number) SELECT number FROM identities;

-- The best face of a faceset is found by walking this index from its top, not by sorting its faces.
CREATE INDEX faces_by_quality ON faces(identity, COALESCE(quality, 0) DESC, id);

CREATE TRIGGER identities_delete_stats AFTER DELETE ON identities
BEGIN DELETE FROM faceset_stats WHERE number = OLD.number; END;

CREATE TRIGGER faces_insert_stats AFTER INSERT ON faces WHEN NEW.identity IS NOT NULL
BEGIN INSERT INTO faceset_stats_stale (number) SELECT NEW.identity WHERE NOT EXISTS
      (SELECT 1 FROM faceset_stats_stale WHERE number = NEW.identity); END;
CREATE TRIGGER faces_delete_stats AFTER DELETE ON faces WHEN OLD.identity IS NOT NULL
BEGIN INSERT INTO faceset_stats_stale (number) SELECT OLD.identity WHERE NOT EXISTS
      (SELECT 1 FROM faceset_stats_stale WHERE number = OLD.identity); END;
CREATE TRIGGER faces_update_stats AFTER UPDATE OF identity, quality, placed_at, matched_at, sha256 ON faces
BEGIN
    INSERT INTO faceset_stats_stale (number) SELECT OLD.identity WHERE OLD.identity IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM faceset_stats_stale WHERE number = OLD.identity);
    INSERT INTO faceset_stats_stale (number) SELECT NEW.identity WHERE NEW.identity IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM faceset_stats_stale WHERE number = NEW.identity);
END;

-- Not INSERT OR IGNORE: an upsert that fires a trigger imposes its own conflict rule on it (ABORT).

-- Whether a face is live depends on its photo's assets and imports (LIVE_FACE): a change there marks
-- the facesets of that photo's faces.
CREATE TRIGGER assets_insert_stats AFTER INSERT ON assets
BEGIN INSERT INTO faceset_stats_stale (number)
      SELECT DISTINCT identity FROM faces WHERE sha256 = NEW.sha256 AND identity IS NOT NULL
      AND identity NOT IN (SELECT number FROM faceset_stats_stale); END;
CREATE TRIGGER assets_delete_stats AFTER DELETE ON assets
BEGIN INSERT INTO faceset_stats_stale (number)
      SELECT DISTINCT identity FROM faces WHERE sha256 = OLD.sha256 AND identity IS NOT NULL
      AND identity NOT IN (SELECT number FROM faceset_stats_stale); END;
CREATE TRIGGER assets_update_stats AFTER UPDATE OF state, sha256 ON assets
WHEN OLD.state IS NOT NEW.state OR OLD.sha256 IS NOT NEW.sha256
BEGIN
    INSERT INTO faceset_stats_stale (number)
      SELECT DISTINCT identity FROM faces WHERE sha256 IN (OLD.sha256, NEW.sha256) AND identity IS NOT NULL
      AND identity NOT IN (SELECT number FROM faceset_stats_stale);
END;
CREATE TRIGGER imports_insert_stats AFTER INSERT ON imports
BEGIN INSERT INTO faceset_stats_stale (number)
      SELECT DISTINCT identity FROM faces WHERE sha256 = NEW.sha256 AND identity IS NOT NULL
      AND identity NOT IN (SELECT number FROM faceset_stats_stale); END;
CREATE TRIGGER imports_delete_stats AFTER DELETE ON imports
BEGIN INSERT INTO faceset_stats_stale (number)
      SELECT DISTINCT identity FROM faces WHERE sha256 = OLD.sha256 AND identity IS NOT NULL
      AND identity NOT IN (SELECT number FROM faceset_stats_stale); END;
CREATE TRIGGER imports_update_stats AFTER UPDATE OF state, superseded_at, sha256 ON imports
BEGIN
    INSERT INTO faceset_stats_stale (number)
      SELECT DISTINCT identity FROM faces WHERE sha256 IN (OLD.sha256, NEW.sha256) AND identity IS NOT NULL
      AND identity NOT IN (SELECT number FROM faceset_stats_stale);
END;

-- The pool's faces (POOL), counted over this index alone rather than by reading each face's row.
CREATE INDEX faces_in_pool ON faces(sha256) WHERE identity IS NULL AND matched_at IS NOT NULL AND held IS NULL;

-- Whether a photo's faces are live asks whether an import keeps it (LIVE_FACE): without this index
-- each such question read every import.
CREATE INDEX imports_by_sha256 ON imports(sha256);
