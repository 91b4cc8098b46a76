-- facesyncd schema, version 12. Never edit a released migration: add 0013_*.sql instead.

-- Names from Immich: the named people Immich shows in each listed photo (its `people`, read with
-- withPeople; nothing is ever written to Immich). A faceset with no name takes the name most of its
-- faces' photos show (identities.name_origin = 'immich'); a name given in facesyncd ('user': a
-- command, the page, NAME.txt, even a name removed) is never overwritten.
CREATE TABLE asset_people (
    source    TEXT NOT NULL,
    asset_id  TEXT NOT NULL,
    name      TEXT NOT NULL,
    PRIMARY KEY (source, asset_id, name)
);
ALTER TABLE identities ADD COLUMN name_origin TEXT;
