-- facesyncd schema, version 9. Never edit a released migration: add 0010_*.sql instead.

-- Whose photo an asset is (Immich's ownerId): a partner's photo, listed with include_partners, says so
-- in the store and in the faceset manifests.
ALTER TABLE assets ADD COLUMN owner_id TEXT;

-- Bytes embedded before are found by Immich's checksum (SHA-1 of the file) before any download: a
-- photo listed by two sources (a partner's, and the partner's own) is downloaded once.
CREATE INDEX assets_by_checksum ON assets(checksum);
