-- facesyncd schema, version 17. Never edit a released migration: add 0018_*.sql instead.

-- The facesets whose folders may no longer be what the store says: a cycle exports only these, where
-- it read every face and compared every folder's manifest (issue 24: 1,000 new faces cost 37 CPU-s
-- of export at 500,000 faces, most of it in facesets none of them joined). Marked by triggers, so that
-- no write path can forget one; `seq` grows with every mark, so an export clears only the marks that
-- were there when it began (a faceset marked again while it ran stays marked). A cache of the faces
-- table, like the folders themselves: an export of everything clears it.
CREATE TABLE export_stale (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    number  INTEGER NOT NULL UNIQUE
);

-- A mark is deleted and made again (not INSERT OR REPLACE: an upsert that fires a trigger imposes its
-- own conflict rule on it), so that its seq is newer than any export that began before it.

-- What a folder shows of a face is most of its row (box, score, quality, sub-set, crop, photo):
-- any change of a face marks the faceset it left and the one it is in.
CREATE TRIGGER faces_insert_export AFTER INSERT ON faces WHEN NEW.identity IS NOT NULL
BEGIN
    DELETE FROM export_stale WHERE number = NEW.identity;
    INSERT INTO export_stale (number) VALUES (NEW.identity);
END;
CREATE TRIGGER faces_delete_export AFTER DELETE ON faces WHEN OLD.identity IS NOT NULL
BEGIN
    DELETE FROM export_stale WHERE number = OLD.identity;
    INSERT INTO export_stale (number) VALUES (OLD.identity);
END;
CREATE TRIGGER faces_update_export AFTER UPDATE ON faces
WHEN OLD.identity IS NOT NULL OR NEW.identity IS NOT NULL
BEGIN
    DELETE FROM export_stale WHERE number IN (OLD.identity, NEW.identity);
    INSERT INTO export_stale (number) SELECT OLD.identity WHERE OLD.identity IS NOT NULL;
    INSERT INTO export_stale (number) SELECT NEW.identity WHERE NEW.identity IS NOT NULL
      AND NEW.identity IS NOT OLD.identity;
END;

-- A faceset's name, whether it is hidden, merged away or forgotten.
CREATE TRIGGER identities_update_export AFTER UPDATE ON identities
BEGIN
    DELETE FROM export_stale WHERE number IN (OLD.number, NEW.number);
    INSERT INTO export_stale (number) VALUES (OLD.number);
    INSERT INTO export_stale (number) SELECT NEW.number WHERE NEW.number IS NOT OLD.number;
END;
CREATE TRIGGER identities_delete_export AFTER DELETE ON identities
BEGIN
    DELETE FROM export_stale WHERE number = OLD.number;
    INSERT INTO export_stale (number) VALUES (OLD.number);
END;

-- Whether a face is live, and the photo a folder names for it (owner, file name, date, link), depend
-- on its photo's assets and imports: a change there marks the facesets of that photo's faces.
CREATE TRIGGER assets_insert_export AFTER INSERT ON assets
BEGIN
    DELETE FROM export_stale WHERE number IN (SELECT identity FROM faces WHERE sha256 = NEW.sha256);
    INSERT INTO export_stale (number)
      SELECT DISTINCT identity FROM faces WHERE sha256 = NEW.sha256 AND identity IS NOT NULL;
END;
CREATE TRIGGER assets_delete_export AFTER DELETE ON assets
BEGIN
    DELETE FROM export_stale WHERE number IN (SELECT identity FROM faces WHERE sha256 = OLD.sha256);
    INSERT INTO export_stale (number)
      SELECT DISTINCT identity FROM faces WHERE sha256 = OLD.sha256 AND identity IS NOT NULL;
END;
-- A listing records assets again as they are (the watermark is inclusive): only what the export shows.
CREATE TRIGGER assets_update_export AFTER UPDATE ON assets
WHEN OLD.state IS NOT NEW.state OR OLD.sha256 IS NOT NEW.sha256 OR OLD.owner_id IS NOT NEW.owner_id
  OR OLD.original_file_name IS NOT NEW.original_file_name OR OLD.file_created_at IS NOT NEW.file_created_at
  OR OLD.source IS NOT NEW.source OR OLD.asset_id IS NOT NEW.asset_id
BEGIN
    DELETE FROM export_stale WHERE number IN (SELECT identity FROM faces WHERE sha256 IN (OLD.sha256, NEW.sha256));
    INSERT INTO export_stale (number)
      SELECT DISTINCT identity FROM faces WHERE sha256 IN (OLD.sha256, NEW.sha256) AND identity IS NOT NULL;
END;
CREATE TRIGGER imports_insert_export AFTER INSERT ON imports
BEGIN
    DELETE FROM export_stale WHERE number IN (SELECT identity FROM faces WHERE sha256 = NEW.sha256);
    INSERT INTO export_stale (number)
      SELECT DISTINCT identity FROM faces WHERE sha256 = NEW.sha256 AND identity IS NOT NULL;
END;
CREATE TRIGGER imports_delete_export AFTER DELETE ON imports
BEGIN
    DELETE FROM export_stale WHERE number IN (SELECT identity FROM faces WHERE sha256 = OLD.sha256);
    INSERT INTO export_stale (number)
      SELECT DISTINCT identity FROM faces WHERE sha256 = OLD.sha256 AND identity IS NOT NULL;
END;
CREATE TRIGGER imports_update_export AFTER UPDATE ON imports
BEGIN
    DELETE FROM export_stale WHERE number IN (SELECT identity FROM faces WHERE sha256 IN (OLD.sha256, NEW.sha256));
    INSERT INTO export_stale (number)
      SELECT DISTINCT identity FROM faces WHERE sha256 IN (OLD.sha256, NEW.sha256) AND identity IS NOT NULL;
END;

-- Faces whose quality an export measures before writing (embedded before qualities were): found over
-- this index, not by reading every face at each export.
CREATE INDEX faces_unmeasured ON faces(id) WHERE quality IS NULL AND identity IS NOT NULL;
