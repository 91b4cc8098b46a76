-- facesyncd schema, version 19. Never edit a released migration: add 0020_*.sql instead.

-- Indexes for what every cycle that finds something new asks, so that it reads what it asks for and
-- not the whole table (issue 24: at 500,000 faces and assets, looking for faces the user set aside
-- read every face, 0.23-0.45 CPU-s with none set aside; the new faces were found among the 200,000 of
-- the pool, and the assets to process among every asset of the source).

-- The faces the user set aside (held_faces), asked for in each cycle with new faces.
CREATE INDEX faces_held ON faces(id) WHERE held IS NOT NULL;

-- The faces not yet compared with the identities (unmatched_new_faces).
CREATE INDEX faces_new ON faces(id) WHERE identity IS NULL AND matched_at IS NULL AND held IS NULL;

-- A source's assets by state: those to process (pending, failed ones due again), and the count of
-- those Immich still lists (read from the index alone).
CREATE INDEX assets_by_source_state ON assets(source, state, reason);
