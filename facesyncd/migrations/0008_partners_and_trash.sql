-- facesyncd schema, version 8. Never edit a released migration: add 0009_*.sql instead.

-- A key lists its partners' assets too when they are shown in its user's timeline. They are passed
-- over unless the source says include_partners; the last full listing's count is kept for `status`.
ALTER TABLE sources ADD COLUMN partner_assets INTEGER;

-- From this version a trashed asset keeps its bytes (assets.sha256) and so its faces: they leave the
-- facesets, and a restore from Immich's trash brings the same faces back without a download.
