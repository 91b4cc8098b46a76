-- facesyncd schema, version 11. Never edit a released migration: add 0012_*.sql instead.

-- A hidden faceset (`faceset hide`): the identity keeps its faces and keeps taking its person's new
-- faces, but it is never exported and leaves the review page's grid. Unlike a forget, nothing is
-- deleted, and `faceset unhide` brings the folder back as it would be.
ALTER TABLE identities ADD COLUMN hidden_at TEXT;
