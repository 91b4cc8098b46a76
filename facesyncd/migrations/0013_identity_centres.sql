-- facesyncd schema, version 13. Never edit a released migration: add 0014_*.sql instead.

-- Each identity's centre (the normalised mean of its faces' embeddings) as the last cycle left it:
-- "same person?" suggestions compare them without reading every embedding (a cache of the faces
-- table, written when its faces changed; index_version says which state it is of, in meta).
CREATE TABLE identity_centres (
    number  INTEGER PRIMARY KEY REFERENCES identities(number),
    centre  BLOB NOT NULL,
    faces   INTEGER NOT NULL
);
