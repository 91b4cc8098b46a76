-- facesyncd schema, version 20. Never edit a released migration: add 0021_*.sql instead.

-- The export's marks, face by face (issue 24): 0017 marked the facesets that changed, and an export
-- then read every face of each and compared its whole folder (600 touched facesets of 100 faces cost
-- about 40 us per face, 2.4 CPU-s per 1,000 new faces at 500,000). A mark now says which face of a
-- faceset changed, so that a folder as the last export left it is brought in line from those faces
-- alone. face_id 0 marks the faceset itself (its name, hidden, merged, forgotten): its folder is
-- compared whole. As in 0017: kept by triggers, so that no write path can forget one; `seq` grows with
-- every mark, so an export clears only the marks that were there when it began; a cache of the faces
-- table, like the folders themselves.
CREATE TABLE export_marks (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    number   INTEGER NOT NULL,
    face_id  INTEGER NOT NULL,
    UNIQUE (number, face_id)
);

-- What 0017 marked is marked whole: which of its faces changed is not known.
INSERT INTO export_marks (number, face_id) SELECT number, 0 FROM export_stale ORDER BY seq;

DROP TRIGGER faces_insert_export;
DROP TRIGGER faces_delete_export;
DROP TRIGGER faces_update_export;
DROP TRIGGER identities_update_export;
DROP TRIGGER identities_delete_export;
DROP TRIGGER assets_insert_export;
DROP TRIGGER assets_delete_export;
DROP TRIGGER assets_update_export;
DROP TRIGGER imports_insert_export;
DROP TRIGGER imports_delete_export;
DROP TRIGGER imports_update_export;
DROP TABLE export_stale;

-- A mark is deleted and made again (not INSERT OR REPLACE: an upsert that fires a trigger imposes its
-- own conflict rule on it), so that its seq is newer than any export that began before it.

-- What a folder shows of a face is most of its row (box, score, quality, sub-set, crop, photo): any
-- change of a face marks it in the faceset it left and in the one it is in. A face that left A for B
-- stays marked in A while only B is written.
CREATE TRIGGER faces_insert_export AFTER INSERT ON faces WHEN NEW.identity IS NOT NULL
BEGIN
    DELETE FROM export_marks WHERE number = NEW.identity AND face_id = NEW.id;
    INSERT INTO export_marks (number, face_id) VALUES (NEW.identity, NEW.id);
END;
CREATE TRIGGER faces_delete_export AFTER DELETE ON faces WHEN OLD.identity IS NOT NULL
BEGIN
    DELETE FROM export_marks WHERE number = OLD.identity AND face_id = OLD.id;
    INSERT INTO export_marks (number, face_id) VALUES (OLD.identity, OLD.id);
END;
CREATE TRIGGER faces_update_export AFTER UPDATE ON faces
WHEN OLD.identity IS NOT NULL OR NEW.identity IS NOT NULL
BEGIN
    DELETE FROM export_marks WHERE face_id = OLD.id AND number IN (OLD.identity, NEW.identity);
    INSERT INTO export_marks (number, face_id) SELECT OLD.identity, OLD.id WHERE OLD.identity IS NOT NULL;
    INSERT INTO export_marks (number, face_id) SELECT NEW.identity, NEW.id WHERE NEW.identity IS NOT NULL
      AND NEW.identity IS NOT OLD.identity;
END;

-- A faceset's name, whether it is hidden, merged away or forgotten: its folder is compared whole.
CREATE TRIGGER identities_update_export AFTER UPDATE ON identities
BEGIN
    DELETE FROM export_marks WHERE face_id = 0 AND number IN (OLD.number, NEW.number);
    INSERT INTO export_marks (number, face_id) VALUES (OLD.number, 0);
    INSERT INTO export_marks (number, face_id) SELECT NEW.number, 0 WHERE NEW.number IS NOT OLD.number;
END;
CREATE TRIGGER identities_delete_export AFTER DELETE ON identities
BEGIN
    DELETE FROM export_marks WHERE number = OLD.number AND face_id = 0;
    INSERT INTO export_marks (number, face_id) VALUES (OLD.number, 0);
END;

-- Whether a face is live, and the photo a folder names for it (owner, file name, date, link), depend
-- on its photo's assets and imports: a change there marks that photo's faces.
CREATE TRIGGER assets_insert_export AFTER INSERT ON assets
BEGIN
    DELETE FROM export_marks WHERE (number, face_id) IN
      (SELECT identity, id FROM faces WHERE sha256 = NEW.sha256 AND identity IS NOT NULL);
    INSERT INTO export_marks (number, face_id)
      SELECT identity, id FROM faces WHERE sha256 = NEW.sha256 AND identity IS NOT NULL;
END;
CREATE TRIGGER assets_delete_export AFTER DELETE ON assets
BEGIN
    DELETE FROM export_marks WHERE (number, face_id) IN
      (SELECT identity, id FROM faces WHERE sha256 = OLD.sha256 AND identity IS NOT NULL);
    INSERT INTO export_marks (number, face_id)
      SELECT identity, id FROM faces WHERE sha256 = OLD.sha256 AND identity IS NOT NULL;
END;
-- A listing records assets again as they are (the watermark is inclusive): only what the export shows.
CREATE TRIGGER assets_update_export AFTER UPDATE ON assets
WHEN OLD.state IS NOT NEW.state OR OLD.sha256 IS NOT NEW.sha256 OR OLD.owner_id IS NOT NEW.owner_id
  OR OLD.original_file_name IS NOT NEW.original_file_name OR OLD.file_created_at IS NOT NEW.file_created_at
  OR OLD.source IS NOT NEW.source OR OLD.asset_id IS NOT NEW.asset_id
BEGIN
    DELETE FROM export_marks WHERE (number, face_id) IN
      (SELECT identity, id FROM faces WHERE sha256 IN (OLD.sha256, NEW.sha256) AND identity IS NOT NULL);
    INSERT INTO export_marks (number, face_id)
      SELECT identity, id FROM faces WHERE sha256 IN (OLD.sha256, NEW.sha256) AND identity IS NOT NULL;
END;
CREATE TRIGGER imports_insert_export AFTER INSERT ON imports
BEGIN
    DELETE FROM export_marks WHERE (number, face_id) IN
      (SELECT identity, id FROM faces WHERE sha256 = NEW.sha256 AND identity IS NOT NULL);
    INSERT INTO export_marks (number, face_id)
      SELECT identity, id FROM faces WHERE sha256 = NEW.sha256 AND identity IS NOT NULL;
END;
CREATE TRIGGER imports_delete_export AFTER DELETE ON imports
BEGIN
    DELETE FROM export_marks WHERE (number, face_id) IN
      (SELECT identity, id FROM faces WHERE sha256 = OLD.sha256 AND identity IS NOT NULL);
    INSERT INTO export_marks (number, face_id)
      SELECT identity, id FROM faces WHERE sha256 = OLD.sha256 AND identity IS NOT NULL;
END;
CREATE TRIGGER imports_update_export AFTER UPDATE ON imports
BEGIN
    DELETE FROM export_marks WHERE (number, face_id) IN
      (SELECT identity, id FROM faces WHERE sha256 IN (OLD.sha256, NEW.sha256) AND identity IS NOT NULL);
    INSERT INTO export_marks (number, face_id)
      SELECT identity, id FROM faces WHERE sha256 IN (OLD.sha256, NEW.sha256) AND identity IS NOT NULL;
END;
