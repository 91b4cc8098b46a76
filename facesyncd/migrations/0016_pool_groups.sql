-- facesyncd schema, version 16. Never edit a released migration: add 0017_*.sql instead.

-- The pool's faces as the last clustering split them: connected groups of faces within
-- cluster_distance of one another (a group clustering never crosses), and how many faces each
-- had. A cycle re-clusters only the groups that new pool faces reach or that lost a face since;
-- the others would give what they gave (issue 24: re-clustering an unchanged pool of 40,000 faces
-- cost 17 CPU-s per cycle). A cache: with no rows, the whole pool is clustered, and the rows
-- written again. No triggers: writing it changes nothing clustering reads.
CREATE TABLE pool_groups (
    grp    INTEGER PRIMARY KEY,        -- the lowest face id in the group when it was made
    faces  INTEGER NOT NULL
);
CREATE TABLE pool_members (
    face_id  INTEGER PRIMARY KEY,
    grp      INTEGER NOT NULL
);
CREATE INDEX pool_members_by_group ON pool_members(grp);
