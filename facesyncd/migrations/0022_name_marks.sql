-- facesyncd schema, version 22. Never edit a released migration: add 0023_*.sql instead.

-- The names step's marks (issue 24): the facesets whose votes for an Immich name (Store.name_votes:
-- their live faces, and how many of their faces' photos show each person Immich names) may have
-- changed. The step counted every photo Immich names people in, in every cycle that changed the
-- store: 0.7-1.2 CPU-s at 500,000 faces with 150,000 such photos. It now counts the marked facesets
-- alone. Kept by triggers, as the export's and the pool's marks (0020, 0021); `seq` grows with every
-- mark, so that a count clears only the marks it has seen.
CREATE TABLE name_marks (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    number  INTEGER NOT NULL UNIQUE
);

-- The next count is whole (the marks start now).
DELETE FROM meta WHERE key = 'unchanged:names';

-- A mark is deleted and made again (not INSERT OR REPLACE: see 0020).

-- A face joins, leaves or changes photo.
CREATE TRIGGER faces_insert_names AFTER INSERT ON faces WHEN NEW.identity IS NOT NULL
BEGIN
    DELETE FROM name_marks WHERE number = NEW.identity;
    INSERT INTO name_marks (number) VALUES (NEW.identity);
END;
CREATE TRIGGER faces_delete_names AFTER DELETE ON faces WHEN OLD.identity IS NOT NULL
BEGIN
    DELETE FROM name_marks WHERE number = OLD.identity;
    INSERT INTO name_marks (number) VALUES (OLD.identity);
END;
CREATE TRIGGER faces_update_names AFTER UPDATE OF identity, sha256 ON faces
WHEN OLD.identity IS NOT NEW.identity OR OLD.sha256 IS NOT NEW.sha256
BEGIN
    DELETE FROM name_marks WHERE number IN (OLD.identity, NEW.identity);
    INSERT INTO name_marks (number) SELECT OLD.identity WHERE OLD.identity IS NOT NULL;
    INSERT INTO name_marks (number) SELECT NEW.identity WHERE NEW.identity IS NOT NULL
      AND NEW.identity IS NOT OLD.identity;
END;

-- Whether a face is live, and which of its photo's assets count (done ones), depend on the photo's
-- assets and imports; the people Immich names, on asset_people.
CREATE TRIGGER assets_insert_names AFTER INSERT ON assets
BEGIN
    DELETE FROM name_marks WHERE number IN
      (SELECT identity FROM faces WHERE sha256 = NEW.sha256 AND identity IS NOT NULL);
    INSERT INTO name_marks (number)
      SELECT DISTINCT identity FROM faces WHERE sha256 = NEW.sha256 AND identity IS NOT NULL;
END;
CREATE TRIGGER assets_delete_names AFTER DELETE ON assets
BEGIN
    DELETE FROM name_marks WHERE number IN
      (SELECT identity FROM faces WHERE sha256 = OLD.sha256 AND identity IS NOT NULL);
    INSERT INTO name_marks (number)
      SELECT DISTINCT identity FROM faces WHERE sha256 = OLD.sha256 AND identity IS NOT NULL;
END;
CREATE TRIGGER assets_update_names AFTER UPDATE OF state, sha256, source, asset_id ON assets
WHEN OLD.state IS NOT NEW.state OR OLD.sha256 IS NOT NEW.sha256 OR OLD.source IS NOT NEW.source
  OR OLD.asset_id IS NOT NEW.asset_id
BEGIN
    DELETE FROM name_marks WHERE number IN
      (SELECT identity FROM faces WHERE sha256 IN (OLD.sha256, NEW.sha256) AND identity IS NOT NULL);
    INSERT INTO name_marks (number)
      SELECT DISTINCT identity FROM faces WHERE sha256 IN (OLD.sha256, NEW.sha256) AND identity IS NOT NULL;
END;
CREATE TRIGGER imports_insert_names AFTER INSERT ON imports
BEGIN
    DELETE FROM name_marks WHERE number IN
      (SELECT identity FROM faces WHERE sha256 = NEW.sha256 AND identity IS NOT NULL);
    INSERT INTO name_marks (number)
      SELECT DISTINCT identity FROM faces WHERE sha256 = NEW.sha256 AND identity IS NOT NULL;
END;
CREATE TRIGGER imports_delete_names AFTER DELETE ON imports
BEGIN
    DELETE FROM name_marks WHERE number IN
      (SELECT identity FROM faces WHERE sha256 = OLD.sha256 AND identity IS NOT NULL);
    INSERT INTO name_marks (number)
      SELECT DISTINCT identity FROM faces WHERE sha256 = OLD.sha256 AND identity IS NOT NULL;
END;
CREATE TRIGGER imports_update_names AFTER UPDATE OF state, sha256, superseded_at ON imports
BEGIN
    DELETE FROM name_marks WHERE number IN
      (SELECT identity FROM faces WHERE sha256 IN (OLD.sha256, NEW.sha256) AND identity IS NOT NULL);
    INSERT INTO name_marks (number)
      SELECT DISTINCT identity FROM faces WHERE sha256 IN (OLD.sha256, NEW.sha256) AND identity IS NOT NULL;
END;
CREATE TRIGGER asset_people_insert_names AFTER INSERT ON asset_people
BEGIN
    DELETE FROM name_marks WHERE number IN (SELECT f.identity FROM assets a JOIN faces f ON f.sha256 = a.sha256
      WHERE a.source = NEW.source AND a.asset_id = NEW.asset_id AND f.identity IS NOT NULL);
    INSERT INTO name_marks (number) SELECT DISTINCT f.identity FROM assets a JOIN faces f ON f.sha256 = a.sha256
      WHERE a.source = NEW.source AND a.asset_id = NEW.asset_id AND f.identity IS NOT NULL;
END;
CREATE TRIGGER asset_people_delete_names AFTER DELETE ON asset_people
BEGIN
    DELETE FROM name_marks WHERE number IN (SELECT f.identity FROM assets a JOIN faces f ON f.sha256 = a.sha256
      WHERE a.source = OLD.source AND a.asset_id = OLD.asset_id AND f.identity IS NOT NULL);
    INSERT INTO name_marks (number) SELECT DISTINCT f.identity FROM assets a JOIN faces f ON f.sha256 = a.sha256
      WHERE a.source = OLD.source AND a.asset_id = OLD.asset_id AND f.identity IS NOT NULL;
END;
CREATE TRIGGER asset_people_update_names AFTER UPDATE ON asset_people
BEGIN
    DELETE FROM name_marks WHERE number IN (SELECT f.identity FROM assets a JOIN faces f ON f.sha256 = a.sha256
      WHERE ((a.source = OLD.source AND a.asset_id = OLD.asset_id) OR (a.source = NEW.source AND a.asset_id = NEW.asset_id))
      AND f.identity IS NOT NULL);
    INSERT INTO name_marks (number) SELECT DISTINCT f.identity FROM assets a JOIN faces f ON f.sha256 = a.sha256
      WHERE ((a.source = OLD.source AND a.asset_id = OLD.asset_id) OR (a.source = NEW.source AND a.asset_id = NEW.asset_id))
      AND f.identity IS NOT NULL;
END;

-- A faceset named (by the user: no longer open to Immich's names), merged away, forgotten. (One opened
-- has no faces yet: those that join it mark it.)
CREATE TRIGGER identities_update_names AFTER UPDATE OF name, name_origin, merged_into, forgotten_at ON identities
BEGIN
    DELETE FROM name_marks WHERE number IN (OLD.number, NEW.number);
    INSERT INTO name_marks (number) VALUES (NEW.number);
    INSERT INTO name_marks (number) SELECT OLD.number WHERE OLD.number IS NOT NEW.number;
END;
