-- facesyncd schema, version 24. Never edit a released migration: add 0025_*.sql instead.

-- The centres' marks (issue 24): the identities whose centre (identity_centres, 0013: the mean of
-- their faces' embeddings) may have moved since its row was written: a face joined or left, or was
-- embedded anew. A new process wrote every identity's centre after a cycle that placed a face
-- (3,000 rows, 6 MB at 512-d, in every `sync` at 500,000 faces); it now writes the marked ones.
-- Kept by triggers, as the other marks (0020-0023), so that no write path can forget one. The marks
-- are read and cleared in the one transaction that writes the centres (publish._save_centres), so
-- nothing marks between the two: a mark needs no `seq`.
CREATE TABLE centre_marks (
    number  INTEGER PRIMARY KEY
);

-- The rows as they stand were written by a cycle that wrote them all, before the marks: the next
-- write is whole (Store.centre_marks: None until one has been).
DELETE FROM meta WHERE key IN ('centres_version', 'centres_token');

CREATE TRIGGER faces_insert_centre AFTER INSERT ON faces WHEN NEW.identity IS NOT NULL
BEGIN
    INSERT OR IGNORE INTO centre_marks (number) VALUES (NEW.identity);
END;
CREATE TRIGGER faces_delete_centre AFTER DELETE ON faces WHEN OLD.identity IS NOT NULL
BEGIN
    INSERT OR IGNORE INTO centre_marks (number) VALUES (OLD.identity);
END;
CREATE TRIGGER faces_update_centre AFTER UPDATE OF identity, embedding ON faces
WHEN OLD.identity IS NOT NEW.identity OR (NEW.identity IS NOT NULL AND OLD.embedding IS NOT NEW.embedding)
BEGIN
    INSERT OR IGNORE INTO centre_marks (number) SELECT OLD.identity WHERE OLD.identity IS NOT NULL;
    INSERT OR IGNORE INTO centre_marks (number) SELECT NEW.identity WHERE NEW.identity IS NOT NULL;
END;
