-- facesyncd schema, version 18. Never edit a released migration: add 0019_*.sql instead.

-- A face's five quality parts (facesyncd/quality.py), each in a column of its own, in place of the JSON
-- text quality_parts (0004). Every read of faces parsed that text, once per face: over the 200,000
-- faces of a pool at 500,000 faces that was 1.4 of the 2.8 CPU-s the pool took to read, in every cycle
-- that new pool faces arrived in (issue 24), and whether a face may seed a faceset (its blur and its
-- frontality) could not be asked of SQLite. A part is a number, or NULL where not measured (frontality
-- and symmetry, by an engine without landmarks); det_score, size and blur are all NULL for a face
-- never measured.
ALTER TABLE faces ADD COLUMN q_det_score REAL CHECK (q_det_score IS NULL OR typeof(q_det_score) = 'real');
ALTER TABLE faces ADD COLUMN q_size REAL CHECK (q_size IS NULL OR typeof(q_size) = 'real');
ALTER TABLE faces ADD COLUMN q_blur REAL CHECK (q_blur IS NULL OR typeof(q_blur) = 'real');
ALTER TABLE faces ADD COLUMN q_frontality REAL CHECK (q_frontality IS NULL OR typeof(q_frontality) = 'real');
ALTER TABLE faces ADD COLUMN q_symmetry REAL CHECK (q_symmetry IS NULL OR typeof(q_symmetry) = 'real');

-- Parts that are not what facesyncd wrote (not JSON, a part missing or not a number) were read as no
-- quality at all: they are left NULL. (CASE, not AND: SQLite may evaluate the terms of an AND in any
-- order, and json_type fails on text that is not JSON.)
UPDATE faces SET
    q_det_score = json_extract(quality_parts, '$.det_score'),
    q_size = json_extract(quality_parts, '$.size'),
    q_blur = json_extract(quality_parts, '$.blur'),
    q_frontality = json_extract(quality_parts, '$.frontality'),
    q_symmetry = json_extract(quality_parts, '$.symmetry')
WHERE CASE WHEN quality_parts IS NOT NULL AND json_valid(quality_parts) THEN
    json_type(quality_parts, '$.det_score') IN ('real', 'integer')
    AND json_type(quality_parts, '$.size') IN ('real', 'integer')
    AND json_type(quality_parts, '$.blur') IN ('real', 'integer')
    AND json_type(quality_parts, '$.frontality') IN ('real', 'integer', 'null')
    AND json_type(quality_parts, '$.symmetry') IN ('real', 'integer', 'null')
ELSE 0 END;

ALTER TABLE faces DROP COLUMN quality_parts;
