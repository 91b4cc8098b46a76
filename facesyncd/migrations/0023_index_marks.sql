-- facesyncd schema, version 23. Never edit a released migration: add 0024_*.sql instead.

-- The index's marks (issue 24): the faces whose place in the face index (index.py: a face in an
-- identity, its identity and its embedding) may have changed. A new process read every face in an
-- identity (Store.identity_map: 0.13-0.21 CPU-s at 310,000 faces) and compared it with the index's
-- file, in every `sync` that had anything to assign. It now reads the faces marked since the file
-- was written (index.py: FaceIndex.load). Kept by triggers, as the export's, the pool's and the
-- names step's marks (0020-0022), so that no write path can forget one; `seq` grows with every mark,
-- so that a file records the marks it holds and only those are cleared. The marks start now: a file
-- written before them is brought in step through the whole map once, then written with its mark.
CREATE TABLE index_marks (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    face_id  INTEGER NOT NULL UNIQUE
);

-- A mark is deleted and made again (not INSERT OR REPLACE: see 0020).
CREATE TRIGGER faces_insert_index AFTER INSERT ON faces WHEN NEW.identity IS NOT NULL
BEGIN
    DELETE FROM index_marks WHERE face_id = NEW.id;
    INSERT INTO index_marks (face_id) VALUES (NEW.id);
END;
CREATE TRIGGER faces_delete_index AFTER DELETE ON faces WHEN OLD.identity IS NOT NULL
BEGIN
    DELETE FROM index_marks WHERE face_id = OLD.id;
    INSERT INTO index_marks (face_id) VALUES (OLD.id);
END;
CREATE TRIGGER faces_update_index AFTER UPDATE OF id, identity, embedding ON faces
WHEN OLD.identity IS NOT NULL OR NEW.identity IS NOT NULL
BEGIN
    DELETE FROM index_marks WHERE face_id IN (OLD.id, NEW.id);
    INSERT INTO index_marks (face_id) VALUES (NEW.id);
    INSERT INTO index_marks (face_id) SELECT OLD.id WHERE OLD.id IS NOT NEW.id;
END;
