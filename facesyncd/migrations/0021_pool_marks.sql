-- facesyncd schema, version 21. Never edit a released migration: add 0022_*.sql instead.

-- The pool's marks (issue 24): which faces' rows of the pool (Store.pool_arrays: in it or not, the
-- embedding, blur, frontality, whether the photo's edge cuts it, its group) may have changed. A
-- running process holds the pool's arrays between cycles (facesyncd/pool.py) and reads again only the
-- faces marked since it last read them: reading the whole pool of 200,000 faces at 500,000 cost
-- 1.1 CPU-s in every cycle that new pool faces arrived in. Kept by triggers, as the export's marks
-- (0020), so that no write path can forget one; `seq` grows with every mark, so that a reader clears
-- only the marks it has read. Only faces in no identity are marked: a face in one, before and after,
-- is in no pool.
CREATE TABLE pool_marks (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    face_id  INTEGER NOT NULL UNIQUE
);

-- A mark is deleted and made again (not INSERT OR REPLACE: see 0020), so that its seq is newer than
-- the last read.
CREATE TRIGGER faces_insert_pool AFTER INSERT ON faces WHEN NEW.identity IS NULL
BEGIN
    DELETE FROM pool_marks WHERE face_id = NEW.id;
    INSERT INTO pool_marks (face_id) VALUES (NEW.id);
END;
CREATE TRIGGER faces_delete_pool AFTER DELETE ON faces WHEN OLD.identity IS NULL
BEGIN
    DELETE FROM pool_marks WHERE face_id = OLD.id;
    INSERT INTO pool_marks (face_id) VALUES (OLD.id);
END;
CREATE TRIGGER faces_update_pool
AFTER UPDATE OF identity, matched_at, held, embedding, sha256, q_blur, q_frontality, x1, y1, x2, y2 ON faces
WHEN OLD.identity IS NULL OR NEW.identity IS NULL
BEGIN
    DELETE FROM pool_marks WHERE face_id = NEW.id;
    INSERT INTO pool_marks (face_id) VALUES (NEW.id);
END;

-- The group a clustering put a face in.
CREATE TRIGGER pool_members_insert_pool AFTER INSERT ON pool_members
BEGIN
    DELETE FROM pool_marks WHERE face_id = NEW.face_id;
    INSERT INTO pool_marks (face_id) VALUES (NEW.face_id);
END;
CREATE TRIGGER pool_members_update_pool AFTER UPDATE ON pool_members
BEGIN
    DELETE FROM pool_marks WHERE face_id IN (OLD.face_id, NEW.face_id);
    INSERT INTO pool_marks (face_id) VALUES (NEW.face_id);
    INSERT INTO pool_marks (face_id) SELECT OLD.face_id WHERE OLD.face_id IS NOT NEW.face_id;
END;
CREATE TRIGGER pool_members_delete_pool AFTER DELETE ON pool_members
BEGIN
    DELETE FROM pool_marks WHERE face_id = OLD.face_id;
    INSERT INTO pool_marks (face_id) VALUES (OLD.face_id);
END;

-- Whether a face is live (its photo only in Immich's trash, or only a hidden partner's, or kept by an
-- import) depends on its photo's assets and imports; whether the photo's edge cuts it, on its blob
-- (a blob comes before its faces, and takes them with it: no mark for its insert or delete).
CREATE TRIGGER assets_insert_pool AFTER INSERT ON assets
BEGIN
    DELETE FROM pool_marks WHERE face_id IN (SELECT id FROM faces WHERE sha256 = NEW.sha256 AND identity IS NULL);
    INSERT INTO pool_marks (face_id) SELECT id FROM faces WHERE sha256 = NEW.sha256 AND identity IS NULL;
END;
CREATE TRIGGER assets_delete_pool AFTER DELETE ON assets
BEGIN
    DELETE FROM pool_marks WHERE face_id IN (SELECT id FROM faces WHERE sha256 = OLD.sha256 AND identity IS NULL);
    INSERT INTO pool_marks (face_id) SELECT id FROM faces WHERE sha256 = OLD.sha256 AND identity IS NULL;
END;
CREATE TRIGGER assets_update_pool AFTER UPDATE OF state, sha256 ON assets
WHEN OLD.state IS NOT NEW.state OR OLD.sha256 IS NOT NEW.sha256
BEGIN
    DELETE FROM pool_marks WHERE face_id IN
      (SELECT id FROM faces WHERE sha256 IN (OLD.sha256, NEW.sha256) AND identity IS NULL);
    INSERT INTO pool_marks (face_id)
      SELECT id FROM faces WHERE sha256 IN (OLD.sha256, NEW.sha256) AND identity IS NULL;
END;
CREATE TRIGGER imports_insert_pool AFTER INSERT ON imports
BEGIN
    DELETE FROM pool_marks WHERE face_id IN (SELECT id FROM faces WHERE sha256 = NEW.sha256 AND identity IS NULL);
    INSERT INTO pool_marks (face_id) SELECT id FROM faces WHERE sha256 = NEW.sha256 AND identity IS NULL;
END;
CREATE TRIGGER imports_delete_pool AFTER DELETE ON imports
BEGIN
    DELETE FROM pool_marks WHERE face_id IN (SELECT id FROM faces WHERE sha256 = OLD.sha256 AND identity IS NULL);
    INSERT INTO pool_marks (face_id) SELECT id FROM faces WHERE sha256 = OLD.sha256 AND identity IS NULL;
END;
CREATE TRIGGER imports_update_pool AFTER UPDATE OF state, sha256, superseded_at ON imports
BEGIN
    DELETE FROM pool_marks WHERE face_id IN
      (SELECT id FROM faces WHERE sha256 IN (OLD.sha256, NEW.sha256) AND identity IS NULL);
    INSERT INTO pool_marks (face_id)
      SELECT id FROM faces WHERE sha256 IN (OLD.sha256, NEW.sha256) AND identity IS NULL;
END;
CREATE TRIGGER blobs_update_pool AFTER UPDATE OF sha256, width, height, decoded_from ON blobs
BEGIN
    DELETE FROM pool_marks WHERE face_id IN
      (SELECT id FROM faces WHERE sha256 IN (OLD.sha256, NEW.sha256) AND identity IS NULL);
    INSERT INTO pool_marks (face_id)
      SELECT id FROM faces WHERE sha256 IN (OLD.sha256, NEW.sha256) AND identity IS NULL;
END;
