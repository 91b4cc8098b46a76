-- facesyncd schema, version 4. Never edit a released migration: add 0005_*.sql instead.

-- How good each face is for a face-swap set (facesyncd/quality.py): the composite score, and its five
-- parts as JSON {"det_score", "size", "blur", "frontality", "symmetry"}. NULL: not measured yet (faces
-- embedded before version 4 are measured from their crops at the next export).
ALTER TABLE faces ADD COLUMN quality REAL;
ALTER TABLE faces ADD COLUMN quality_parts TEXT;

-- The name a faceset was given (NAME.txt in the swap layout, or an imported tree's).
ALTER TABLE identities ADD COLUMN name TEXT;
