-- facesyncd schema, version 5. Never edit a released migration: add 0006_*.sql instead.

-- Two identities found to be one person are merged into the lower number; the higher one is retired
-- (never given again, since its row stays) and records where its faces went.
ALTER TABLE identities ADD COLUMN merged_into INTEGER REFERENCES identities(number);
ALTER TABLE identities ADD COLUMN merged_at TEXT;
