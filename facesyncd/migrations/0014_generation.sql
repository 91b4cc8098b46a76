-- facesyncd schema, version 14. Never edit a released migration: add 0015_*.sql instead.

-- meta 'generation' counts every change that clustering, merging or the export could see: a cycle in
-- which it did not move since the last clustering (merge check, publish) skips that step (a sync with
-- nothing new loaded the model, re-clustered an unchanged pool of 40,000 faces and compared every
-- faceset folder: 89 s of CPU at 100,000 faces). Triggers, so that no write path can forget it.
INSERT OR IGNORE INTO meta (key, value) VALUES ('generation', '1');

CREATE TRIGGER faces_insert_generation AFTER INSERT ON faces
BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'; END;
CREATE TRIGGER faces_update_generation AFTER UPDATE ON faces
BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'; END;
CREATE TRIGGER faces_delete_generation AFTER DELETE ON faces
BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'; END;
CREATE TRIGGER identities_insert_generation AFTER INSERT ON identities
BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'; END;
CREATE TRIGGER identities_update_generation AFTER UPDATE ON identities
BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'; END;
CREATE TRIGGER identities_delete_generation AFTER DELETE ON identities
BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'; END;
CREATE TRIGGER imports_insert_generation AFTER INSERT ON imports
BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'; END;
CREATE TRIGGER imports_update_generation AFTER UPDATE ON imports
BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'; END;
CREATE TRIGGER imports_delete_generation AFTER DELETE ON imports
BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'; END;
CREATE TRIGGER asset_people_insert_generation AFTER INSERT ON asset_people
BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'; END;
CREATE TRIGGER asset_people_update_generation AFTER UPDATE ON asset_people
BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'; END;
CREATE TRIGGER asset_people_delete_generation AFTER DELETE ON asset_people
BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'; END;
CREATE TRIGGER rejections_insert_generation AFTER INSERT ON rejections
BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'; END;
CREATE TRIGGER rejections_update_generation AFTER UPDATE ON rejections
BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'; END;
CREATE TRIGGER rejections_delete_generation AFTER DELETE ON rejections
BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'; END;
CREATE TRIGGER kept_apart_insert_generation AFTER INSERT ON kept_apart
BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'; END;
CREATE TRIGGER kept_apart_update_generation AFTER UPDATE ON kept_apart
BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'; END;
CREATE TRIGGER kept_apart_delete_generation AFTER DELETE ON kept_apart
BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'; END;
CREATE TRIGGER forgotten_insert_generation AFTER INSERT ON forgotten
BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'; END;
CREATE TRIGGER forgotten_update_generation AFTER UPDATE ON forgotten
BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'; END;
CREATE TRIGGER forgotten_delete_generation AFTER DELETE ON forgotten
BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'; END;
CREATE TRIGGER assets_insert_generation AFTER INSERT ON assets
BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'; END;
CREATE TRIGGER assets_delete_generation AFTER DELETE ON assets
BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'; END;
-- A listing records assets again as they are (the watermark is inclusive): only what the export shows.
CREATE TRIGGER assets_update_generation AFTER UPDATE ON assets
WHEN OLD.state IS NOT NEW.state OR OLD.sha256 IS NOT NEW.sha256 OR OLD.owner_id IS NOT NEW.owner_id
  OR OLD.original_file_name IS NOT NEW.original_file_name OR OLD.file_created_at IS NOT NEW.file_created_at
BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'; END;
