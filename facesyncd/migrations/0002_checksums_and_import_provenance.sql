-- facesyncd schema, version 2. Never edit a released migration: add 0003_*.sql instead.

-- What an asset's `checksum` is: 'sha1' the SHA-1 of the file (uploads; a download that disagrees is
-- refused), 'path' the SHA-1 of "path:" and the file's path (external libraries), NULL: unknown.
ALTER TABLE assets ADD COLUMN checksum_kind TEXT;

-- Where an imported face came from, when the imported tree says so (facesyncd's own faceset.json):
-- when that photo arrives from Immich, its own face takes the imported face's place in the identity
-- instead of joining it as a second copy.
ALTER TABLE imports ADD COLUMN source TEXT;
ALTER TABLE imports ADD COLUMN asset_id TEXT;
ALTER TABLE imports ADD COLUMN bbox TEXT;            -- JSON [x1, y1, x2, y2] in the photo's pixels
ALTER TABLE imports ADD COLUMN face_id INTEGER;      -- the face it made, then the photo's face that replaced it
ALTER TABLE imports ADD COLUMN superseded_at TEXT;   -- when the photo's own face replaced the imported one
CREATE INDEX imports_by_asset ON imports(asset_id);
