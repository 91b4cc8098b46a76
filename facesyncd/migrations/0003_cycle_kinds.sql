-- facesyncd schema, version 3. Never edit a released migration: add 0004_*.sql instead.

-- What a cycle record is of: a sync (poll, reconcile), a clustering, an import ('sync' before this).
ALTER TABLE cycles ADD COLUMN kind TEXT NOT NULL DEFAULT 'sync';
