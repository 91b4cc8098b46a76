"""Blobs, faces, identities and imports: what the index and the faceset folders are derived from."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import StoreError
from ..models import (
    QUALITY_WEIGHTS,
    AssetState,
    Box,
    DecodeSource,
    DetectedFace,
    Dropped,
    ExportFace,
    ExportMarks,
    GroupSizes,
    ImportClaim,
    ImportProvenance,
    PoolArrays,
    Quality,
    StoredFace,
    UnmeasuredFace,
)
from .database import Database, utc_now

if TYPE_CHECKING:  # numpy stays out of `status`
    import numpy as np
    from numpy.typing import NDArray


# A face that facesets show: not one whose photo is only kept for a return (in Immich's trash, or a
# hidden partner's).
_KEPT = ", ".join(f"'{state}'" for state in AssetState.kept())

# Meta: a token replace_pool_groups writes anew with each change of the pool's groups.
POOL_GROUPS_TOKEN = "pool_groups_token"


def _not_kept_by_another(sha256: str) -> str:
    """SQL: no done asset and no live import keeps the photo `sha256` in the facesets."""
    return (
        f"NOT EXISTS (SELECT 1 FROM assets a WHERE a.sha256 = {sha256} AND a.state = '{AssetState.DONE}') "
        f"AND NOT EXISTS (SELECT 1 FROM imports i WHERE i.sha256 = {sha256} AND i.state = 'done' "
        "AND i.superseded_at IS NULL)"
    )


LIVE_FACE = (
    f"(NOT EXISTS (SELECT 1 FROM assets t WHERE t.sha256 = f.sha256 AND t.state IN ({_KEPT})) "
    f"OR NOT ({_not_kept_by_another('f.sha256')}))"
)
# The same test for a pass over many faces: the photos only kept for a return are found once per
# statement (from the few assets in those states), and each face is looked up in that set, where
# LIVE_FACE costs three look-ups per face (3x as long over 500,000 faces).
LIVE_FACES = (
    f"f.sha256 NOT IN (SELECT t.sha256 FROM assets t WHERE t.state IN ({_KEPT}) AND {_not_kept_by_another('t.sha256')})"
)

# A face's quality parts, a column each (migrations/0018), in the order of Quality's fields.
_PARTS = tuple(f"q_{part}" for part in QUALITY_WEIGHTS)
PART_COLUMNS = ", ".join(_PARTS)


def _parts_of(alias: str) -> str:
    return ", ".join(f"{alias}.{column}" for column in _PARTS)


def _numbers_sql(numbers: Collection[int]) -> str:
    """Identity numbers as an SQL list (integers: nothing to quote); NULL for none, which matches nothing."""
    return ", ".join(str(int(number)) for number in numbers) or "NULL"


# SQL: the face f (its photo b joined) is "cut": it touches its photo's edge (a bystander half out of
# the frame); an imported crop fills its image by design and is not.
_CUT = "b.decoded_from != 'import' AND (f.x1 <= 1 OR f.y1 <= 1 OR f.x2 >= b.width - 1 OR f.y2 >= b.height - 1) AS cut"


@dataclass(frozen=True)
class _FileMarks:
    """A table of face marks kept by triggers for a cache file (the pool's, the index's), and the
    meta keys of the newest mark cleared and of the token of the file that is the store's at its
    mark (a file with another token is not the store's)."""

    table: str
    cleared: str
    token: str


_POOL_MARKS = _FileMarks("pool_marks", "pool_marks_cleared", "pool_file_token")  # pool.PoolKeeper
_INDEX_MARKS = _FileMarks("index_marks", "index_marks_cleared", "index_file_token")  # index.FaceIndex.load_marked

# A face compared with every identity and in none, that clustering may open a faceset from.
POOL = f"f.identity IS NULL AND f.matched_at IS NOT NULL AND f.held IS NULL AND {LIVE_FACES}"


def _open_identity(number: str) -> str:
    """SQL: the identity numbered by the parameter `number` may be changed by automatic steps (it is
    not locked, merged away or forgotten)."""
    return (
        f"NOT EXISTS (SELECT 1 FROM identities WHERE number = {number} "
        "AND (locked_at IS NOT NULL OR merged_into IS NOT NULL OR forgotten_at IS NOT NULL))"
    )


class FaceQueries(Database):
    """Distinct file contents (blobs), their faces, the identities those join, and imported trees."""

    def check_model(self, model_name: str, dimension: int) -> None:
        """Embeddings of two engines or models are not compared: refuse a model other than the one the
        stored faces came from (the name says engine and model, see Embedder.name), or of another
        size. `dimension` 0: not known yet (a remote engine before its first face)."""
        stored_model, stored_dimension = self.get_meta("model"), self.get_meta("embedding_dim")
        if stored_model is None or (stored_dimension is None and dimension):
            with self.transaction():
                if stored_model is None:
                    self.set_meta("model", model_name)
                if stored_dimension is None and dimension:
                    self.set_meta("embedding_dim", str(dimension))
        if stored_model is not None and stored_model != model_name:
            raise StoreError(
                f"the database holds embeddings of {_engine(stored_model)}, but the configuration asks for "
                f"{_engine(model_name)}: embeddings of two models (or of one through two engines) are not "
                f"mixed. Configure [model] as before, or start from a new state_dir"
            )
        if stored_dimension is not None and dimension and int(stored_dimension) != dimension:
            raise StoreError(
                f"the database holds {stored_dimension}-d embeddings from model {stored_model!r}, but the "
                f"configured model gives {dimension}-d: use the same model pack, or start from a new state_dir"
            )

    def index_version(self) -> int:
        """Bumped by every transaction that changes which faces belong to identities."""
        return int(self.get_meta("index_version") or 0)

    def _bump_index_version(self) -> None:
        self.set_meta("index_version", str(self.index_version() + 1))

    def _drop_blob_if_orphaned(self, sha256: str) -> Dropped:
        users = self.scalar(
            f"SELECT (SELECT COUNT(*) FROM assets WHERE sha256 = ? AND state IN ('{AssetState.DONE}', {_KEPT})) + "
            "(SELECT COUNT(*) FROM imports WHERE sha256 = ? AND state = 'done' AND superseded_at IS NULL)",
            (sha256, sha256),
        )
        if users:
            return Dropped()
        dropped = Dropped()
        for face_id, crop, identity in self.tuples("SELECT id, crop, identity FROM faces WHERE sha256 = ?", (sha256,)):
            dropped.crops.append(crop)
            if identity is not None:
                dropped.indexed_faces.append(face_id)
        self.execute("DELETE FROM faces WHERE sha256 = ?", (sha256,))
        self.execute("UPDATE assets SET sha256 = NULL WHERE sha256 = ?", (sha256,))
        self.execute("DELETE FROM blobs WHERE sha256 = ?", (sha256,))
        if dropped.indexed_faces:
            self._bump_index_version()
        return dropped

    # -- blobs and faces ------------------------------------------------------------------------

    def blob_exists(self, sha256: str) -> bool:
        return self.scalar("SELECT 1 FROM blobs WHERE sha256 = ?", (sha256,)) is not None

    def save_blob_faces(
        self,
        sha256: str,
        *,
        size: int,
        width: int,
        height: int,
        decoded_from: DecodeSource,
        model: str,
        faces: Sequence[DetectedFace],
        crops: Sequence[str],
        qualities: Sequence[Quality | None] | None = None,
    ) -> None:
        """Insert a blob and its faces (no-op if the blob exists). Call inside a transaction."""
        if self.blob_exists(sha256):
            return
        if faces:
            self.check_model(model, len(faces[0].embedding))
        self.execute(
            "INSERT INTO blobs (sha256, size, width, height, decoded_from, model, embedded_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (sha256, size, width, height, decoded_from, model, utc_now()),
        )
        qualities = qualities if qualities is not None else [None] * len(faces)
        for face_index, (face, crop, quality) in enumerate(zip(faces, crops, qualities, strict=True)):
            self.execute(
                "INSERT INTO faces (sha256, face_index, x1, y1, x2, y2, det_score, landmarks, embedding, crop, "
                f"quality, {PART_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    sha256,
                    face_index,
                    *face.bbox,
                    face.det_score,
                    json.dumps([list(point) for point in face.landmarks]),
                    face.embedding.astype("<f4", copy=False).tobytes(),
                    crop,
                    *_quality_columns(quality),
                ),
            )

    def unmeasured_faces(self) -> list[UnmeasuredFace]:
        """Faces in identities whose quality was never measured (embedded before it was)."""
        rows = self.rows(
            "SELECT id, crop, x1, y1, x2, y2, det_score, landmarks FROM faces "
            "WHERE quality IS NULL AND identity IS NOT NULL ORDER BY id"
        )
        return [
            UnmeasuredFace(
                row["id"],
                row["crop"],
                _box((row["x1"], row["y1"], row["x2"], row["y2"])),
                row["det_score"],
                tuple((float(x), float(y)) for x, y in json.loads(row["landmarks"])),
            )
            for row in rows
        ]

    def set_qualities(self, qualities: dict[int, Quality]) -> None:
        with self.transaction():
            for face_id, quality in qualities.items():
                self.execute(
                    f"UPDATE faces SET quality = ?, {', '.join(f'{column} = ?' for column in _PARTS)} WHERE id = ?",
                    (*_quality_columns(quality), face_id),
                )

    def _faces(self, where: str, parameters: Sequence[Any] = (), *, index: str | None = None) -> list[StoredFace]:
        """The faces `where` picks, by id; `index`: the one to read them through (SQLite's planner
        takes faces_by_identity for "identity IS NULL" without it, and reads the whole pool)."""
        import numpy as np

        rows = self.tuples(
            f"""
            SELECT f.id, f.sha256, f.embedding, f.identity, {_parts_of("f")}, {_CUT}
            FROM faces f {f"INDEXED BY {index}" if index else ""} LEFT JOIN blobs b ON b.sha256 = f.sha256
            WHERE {where} ORDER BY f.id
            """,
            parameters,
        )
        return [
            StoredFace(face_id, sha256, np.frombuffer(blob, dtype=np.float32), identity, _quality(parts), bool(cut))
            for face_id, sha256, blob, identity, *parts, cut in rows
        ]

    def unmatched_new_faces(self) -> list[StoredFace]:
        return self._faces("identity IS NULL AND matched_at IS NULL AND held IS NULL", index="faces_new")

    def pool_faces(self) -> list[StoredFace]:
        """The faces clustering may open facesets from: in no identity, and not only in the trash."""
        return self._faces(POOL)

    def pool_arrays(self, ids: Sequence[int] | None = None) -> PoolArrays:
        """pool_faces as arrays (see PoolArrays), by id; with `ids`, those of them in the pool only.
        A face's blur and frontality are NaN where its quality was not measured (the parts are
        written all together: _quality_columns). The embeddings come rounded to 8 bits (a quarter
        of the memory, coarse.py); embeddings_of reads the few a cycle needs as they are."""
        import numpy as np

        from ..coarse import round_rows

        among = "" if ids is None else " AND f.id IN (SELECT value FROM json_each(:ids))"
        rows = self.tuples(
            f"SELECT f.id, f.embedding, f.q_blur, f.q_frontality, {_CUT}, COALESCE(m.grp, -1) "
            "FROM faces f LEFT JOIN blobs b ON b.sha256 = f.sha256 LEFT JOIN pool_members m ON m.face_id = f.id "
            f"WHERE {POOL}{among} ORDER BY f.id",
            {} if ids is None else {"ids": json.dumps(list(ids))},
        )
        if not rows:
            none = np.zeros(0, np.int64)
            empty = round_rows(np.zeros((0, 0), np.float32))
            return PoolArrays(none, empty, np.zeros(0), np.zeros(0), np.zeros(0, bool), none)
        ids, blobs, blur, frontality, cut, group = zip(*rows, strict=True)
        # One buffer for every embedding: no array per face (the rows are all one length: one model).
        embeddings = np.frombuffer(b"".join(blobs), np.float32).reshape(len(rows), -1)
        return PoolArrays(
            np.array(ids, np.int64),
            round_rows(embeddings),
            np.array(blur, np.float64),  # (None becomes NaN)
            np.array(frontality, np.float64),
            np.array(cut, bool),
            np.array(group, np.int64),
        )

    def pool_marks(self, since: int) -> tuple[int, list[int]] | None:
        """The faces whose rows of pool_arrays may have changed after mark `since` (marked by
        triggers, migrations/0021), and the newest mark; None when some of those marks were cleared
        (a reader that far behind reads the pool whole)."""
        return self._marks_since(_POOL_MARKS, since)

    def pool_file_token(self) -> str | None:
        """The token of the pool's file that is the store's pool at its mark (see kept_pool_file)."""
        return self.get_meta(_POOL_MARKS.token)

    def kept_pool_file(self, token: str, mark: int) -> None:
        """The pool's file with `token`, just written, holds the pool as it stood at `mark`: it is
        the store's from now on (any other is not), and the marks up to it are cleared (a reader of
        the file reads those after it)."""
        self._kept_file(_POOL_MARKS, token, mark)

    def newest_pool_mark(self) -> int:
        """The newest mark made: of those left, or the newest cleared (with none left, a reader that
        takes 0 for the newest is behind the marks cleared, and would read the pool whole again)."""
        return self._newest_mark(_POOL_MARKS)

    def clear_pool_marks(self, upto: int) -> None:
        """The pool as it stood at mark `upto` was read: those marks are cleared (a reader behind
        them reads the pool whole, see pool_marks)."""
        self._clear_marks(_POOL_MARKS, upto)

    def index_marks(self, since: int) -> tuple[int, list[int]] | None:
        """The faces whose place in the face index (in an identity or not, which one, the embedding)
        may have changed after mark `since` (marked by triggers, migrations/0023), and the newest
        mark; None when some of those marks were cleared (a file that far behind is not brought in
        step from them)."""
        return self._marks_since(_INDEX_MARKS, since)

    def newest_index_mark(self) -> int:
        """The newest index mark made: of those left, or the newest cleared."""
        return self._newest_mark(_INDEX_MARKS)

    def index_file_token(self) -> str | None:
        """The token of the index's file that is the store's at its mark (see kept_index_file)."""
        return self.get_meta(_INDEX_MARKS.token)

    def kept_index_file(self, token: str, mark: int) -> None:
        """The index's file with `token`, just written, holds the faces in identities as they stood at
        `mark`: it is the store's from now on (any other is not), and the marks up to it are cleared
        (a reader of the file reads those after it)."""
        self._kept_file(_INDEX_MARKS, token, mark)

    def _marks_since(self, marks: _FileMarks, since: int) -> tuple[int, list[int]] | None:
        if int(self.get_meta(marks.cleared) or 0) > since:
            return None
        rows = self.tuples(f"SELECT seq, face_id FROM {marks.table} WHERE seq > ? ORDER BY seq", (since,))
        return (rows[-1][0] if rows else since), [face for _, face in rows]

    def _newest_mark(self, marks: _FileMarks) -> int:
        left = self.scalar(f"SELECT MAX(seq) FROM {marks.table}")
        return int(left) if left is not None else int(self.get_meta(marks.cleared) or 0)

    def _clear_marks(self, marks: _FileMarks, upto: int) -> None:
        # (marks only grow: a mark left at or below `upto` means `upto` is past the newest cleared)
        with self.transaction():
            if self.execute(f"DELETE FROM {marks.table} WHERE seq <= ?", (upto,)).rowcount:
                self.set_meta(marks.cleared, str(upto))

    def _kept_file(self, marks: _FileMarks, token: str, mark: int) -> None:
        with self.transaction():
            self.set_meta(marks.token, token)
            self._clear_marks(marks, mark)

    def index_entries(self, face_ids: Sequence[int]) -> tuple[list[int], list[int], list[bytes]]:
        """Of these faces, those in an identity now: their ids (ascending), identities and embeddings."""
        rows: list[tuple[int, int, bytes]] = []
        for chunk, marks in self.id_chunks(sorted(face_ids)):  # (chunks of ascending ids: rows in order)
            rows += self.tuples(
                f"SELECT id, identity, embedding FROM faces WHERE id IN ({marks}) AND identity IS NOT NULL ORDER BY id",
                chunk,
            )
        return [row[0] for row in rows], [row[1] for row in rows], [row[2] for row in rows]

    def faces_by_ids(self, ids: Sequence[int]) -> list[StoredFace]:
        """These faces (those still there), by id."""
        found: list[StoredFace] = []
        for chunk, marks in self.id_chunks(sorted(ids)):
            found.extend(self._faces(f"f.id IN ({marks})", chunk))
        return found

    def pool_group_sizes(self) -> tuple[str | None, GroupSizes]:
        """How many faces each group of the pool had when the last clustering made it
        (migrations/0016; a face's group: PoolArrays.group), with the token the last
        replace_pool_groups left (None: none yet): the same token, the same groups. Read as one
        text of numbers (_pairs), not a row per group (200,000 groups at 500,000 faces)."""
        with self.transaction():
            token = self.get_meta(POOL_GROUPS_TOKEN)
            pairs = _pairs(self.tuples("SELECT group_concat(grp || ',' || faces) FROM pool_groups")[0][0])
        return token, GroupSizes(pairs[:, 0].copy(), pairs[:, 1].copy())

    def pool_groups_token(self) -> str | None:
        return self.get_meta(POOL_GROUPS_TOKEN)

    def replace_pool_groups(
        self, groups: dict[int, list[int]], replaced: Collection[int], *, everything: bool
    ) -> tuple[str | None, str]:
        """Groups (lowest face id -> its faces) made by a clustering, in place of the `replaced`
        ones (or of all of them). Returns the groups' token before and after (renew_token)."""
        with self.transaction():
            before = self.get_meta(POOL_GROUPS_TOKEN)
            if everything:
                self.execute("DELETE FROM pool_members")
                self.execute("DELETE FROM pool_groups")
            else:
                for chunk, marks in self.id_chunks(sorted(replaced)):
                    self.execute(f"DELETE FROM pool_members WHERE grp IN ({marks})", chunk)
                    self.execute(f"DELETE FROM pool_groups WHERE grp IN ({marks})", chunk)
            self.executemany(
                "INSERT INTO pool_groups (grp, faces) VALUES (?, ?)",
                [(group, len(faces)) for group, faces in groups.items()],
            )
            self.executemany(
                "INSERT OR REPLACE INTO pool_members (face_id, grp) VALUES (?, ?)",
                [(face, group) for group, faces in groups.items() for face in faces],
            )
            after = self.renew_token(POOL_GROUPS_TOKEN)
        return before, after

    def held_faces(self) -> list[tuple[int, str, NDArray[np.float32]]]:
        """(face id, decision, embedding) of every face the user set aside."""
        import numpy as np

        return [
            (face_id, held, np.frombuffer(blob, dtype=np.float32))
            for face_id, held, blob in self.tuples("SELECT id, held, embedding FROM faces WHERE held IS NOT NULL")
        ]

    def hold_faces(self, decisions: dict[int, str]) -> None:
        """These faces never form a faceset and never join one (the user's decision, by the value)."""
        with self.transaction():
            for face_id, held in decisions.items():
                self.execute(
                    "UPDATE faces SET held = ?, identity = NULL, matched_at = ? WHERE id = ?",
                    (held, utc_now(), face_id),
                )

    def iter_identity_faces(self, batch: int = 10_000) -> Iterator[tuple[list[int], NDArray[np.float32], list[int]]]:
        """Faces in identities as (ids, embeddings, identities) in chunks: rebuilding the index of a
        large library never holds every embedding twice."""
        import numpy as np

        for rows in self.chunks(
            "SELECT id, identity, embedding FROM faces WHERE identity IS NOT NULL ORDER BY id", size=batch
        ):
            embeddings = np.frombuffer(b"".join(row[2] for row in rows), dtype=np.float32).reshape(len(rows), -1)
            yield [row[0] for row in rows], embeddings, [row[1] for row in rows]

    def identity_map(self) -> dict[int, int]:
        """face id -> identity for every face in an identity (what the index holds). Read as one text
        of numbers (_pairs), not a row per face: 0.10-0.11 CPU-s against 0.14-0.26 at 310,000 faces, in
        every process that loads the index."""
        pairs = _pairs(
            self.tuples("SELECT group_concat(id || ',' || identity) FROM faces WHERE identity IS NOT NULL")[0][0]
        )
        return dict(zip(pairs[:, 0].tolist(), pairs[:, 1].tolist(), strict=True))

    def count_identity_faces(self) -> int:
        return int(self.scalar("SELECT COUNT(*) FROM faces WHERE identity IS NOT NULL"))

    def record_matches(self, assignments: dict[int, tuple[int, float]], examined: Sequence[int]) -> None:
        """Faces in `assignments` join identities; every face in `examined` is marked as compared."""
        now = utc_now()
        with self.transaction():
            for chunk, marks in self.id_chunks(sorted(examined)):
                self.execute(f"UPDATE faces SET matched_at = ? WHERE id IN ({marks})", (now, *chunk))
            # The user's corrections win over a match made while they were being saved.
            self.executemany(
                "UPDATE faces SET identity = ?, distance = ?, matched_at = ? WHERE id = ? AND identity IS NULL "
                "AND NOT EXISTS (SELECT 1 FROM rejections WHERE face_id = faces.id AND identity = ?) "
                f"AND {_open_identity('?')}",
                [
                    (identity, distance, now, face_id, identity, identity)
                    for face_id, (identity, distance) in assignments.items()
                ],
            )
            if assignments:
                self._bump_index_version()

    def identities_of_blob(self, sha256: str) -> set[int]:
        return {
            row[0]
            for row in self.tuples("SELECT identity FROM faces WHERE sha256 = ? AND identity IS NOT NULL", (sha256,))
        }

    def highest_identity(self) -> int:
        """The highest faceset number ever used: by an identity here, or by an earlier database whose
        facesets were adopted (`number_floor`), so that no number is ever given to another person."""
        highest = int(self.scalar("SELECT COALESCE(MAX(number), 0) FROM identities"))
        return max(highest, int(self.get_meta("number_floor") or 0))

    def raise_number_floor(self, number: int) -> None:
        """New facesets will number past `number`."""
        if number > int(self.get_meta("number_floor") or 0):
            with self.transaction():
                self.set_meta("number_floor", str(number))

    def is_empty(self) -> bool:
        """No asset and no identity yet: a new database (or one that was lost and made again)."""
        return self.scalar("SELECT 1 FROM assets LIMIT 1") is None and (
            self.scalar("SELECT 1 FROM identities LIMIT 1") is None
        )

    def create_identity(self, members: dict[int, float], *, origin: str = "cluster") -> int:
        """Open a new identity numbered past the highest ever used, with these faces (id -> distance)."""
        with self.transaction():
            number = self.highest_identity() + 1
            self.execute(
                "INSERT INTO identities (number, origin, created_at) VALUES (?, ?, ?)", (number, origin, utc_now())
            )
            now = utc_now()
            for face_id, distance in members.items():
                self.execute(
                    "UPDATE faces SET identity = ?, distance = ?, matched_at = ? "
                    "WHERE id = ? AND identity IS NULL AND held IS NULL",
                    (number, distance, now, face_id),
                )
            self._bump_index_version()
        return number

    def photos_shared(self, numbers: Collection[int] | None = None) -> set[frozenset[int]]:
        """Pairs of identities that have faces in one photo (two people, never one); with `numbers`,
        pairs of those identities only."""
        among = ""
        if numbers is not None:
            listed = _numbers_sql(numbers)
            among = f"AND a.identity IN ({listed}) AND b.identity IN ({listed})"
        rows = self.tuples(
            "SELECT DISTINCT a.identity, b.identity FROM faces a JOIN faces b ON a.sha256 = b.sha256 "
            f"WHERE a.identity IS NOT NULL AND b.identity IS NOT NULL AND a.identity < b.identity {among}"
        )
        return {frozenset(row) for row in rows}

    def merge_identities(self, retired: int, kept: int) -> bool:
        """Every face of `retired` joins `kept`; `retired` keeps its row (its number is never given
        again) and says where its faces went. Not when the user's corrections forbid it (one is
        locked or retired, they are kept apart, a face was rejected from the other, a face placed by
        hand would change number): returns whether it merged."""
        with self.transaction():
            if not self.scalar(
                f"SELECT {_open_identity(':kept')} AND {_open_identity(':retired')} "
                "AND NOT EXISTS (SELECT 1 FROM kept_apart WHERE low = MIN(:kept, :retired) "
                "  AND high = MAX(:kept, :retired)) "
                "AND NOT EXISTS (SELECT 1 FROM rejections r JOIN faces f ON f.id = r.face_id "
                "  WHERE (r.identity = :kept AND f.identity = :retired) "
                "  OR (r.identity = :retired AND f.identity = :kept)) "
                "AND NOT EXISTS (SELECT 1 FROM faces WHERE identity = :retired AND placed_at IS NOT NULL)",
                {"kept": kept, "retired": retired},
            ):
                return False
            self.execute("UPDATE faces SET identity = ? WHERE identity = ?", (kept, retired))
            self.execute(
                "UPDATE identities SET merged_into = ?, merged_at = ? WHERE number = ?", (kept, utc_now(), retired)
            )
            self._bump_index_version()
        return True

    def ensure_identity(self, number: int, origin: str) -> None:
        self.execute(
            "INSERT INTO identities (number, origin, created_at) VALUES (?, ?, ?) ON CONFLICT(number) DO NOTHING",
            (number, origin, utc_now()),
        )

    # -- imports --------------------------------------------------------------------------------

    def import_state(self, path: str) -> str | None:
        value = self.scalar("SELECT state FROM imports WHERE path = ?", (path,))
        return None if value is None else str(value)

    def record_import(
        self,
        path: str,
        sha256: str,
        identity: int | None,
        *,
        face_id: int | None,
        reason: str | None,
        provenance: ImportProvenance | None = None,
        subset: str | None = None,
        held: str | None = None,
    ) -> None:
        """Record an imported file; its face joins `identity` (in `subset`), or is held aside (`held`)."""
        if identity is not None:
            self.ensure_identity(identity, "import")
        self.execute(
            "INSERT INTO imports (path, sha256, identity, state, reason, imported_at, source, asset_id, bbox, "
            "face_id, subset, held, source_name) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(path) DO UPDATE SET sha256 = excluded.sha256, identity = excluded.identity, "
            "state = excluded.state, reason = excluded.reason, imported_at = excluded.imported_at, "
            "source = excluded.source, asset_id = excluded.asset_id, bbox = excluded.bbox, "
            "face_id = excluded.face_id, subset = excluded.subset, held = excluded.held, "
            "source_name = excluded.source_name, superseded_at = NULL",
            (
                path,
                sha256,
                identity,
                "done" if face_id is not None else "failed",
                reason,
                utc_now(),
                provenance.source if provenance else None,
                provenance.asset_id if provenance else None,
                json.dumps(list(provenance.bbox)) if provenance else None,
                face_id,
                subset,
                held,
                provenance.source_name if provenance else None,
            ),
        )
        if face_id is not None:
            self.execute(
                "UPDATE faces SET identity = ?, subset = ?, held = ?, distance = 0, matched_at = ? WHERE id = ?",
                (None if held else identity, subset, held, utc_now(), face_id),
            )
            self._bump_index_version()

    def import_identities_under(self, root: str) -> set[int]:
        """The identities that files imported from under the folder `root` joined."""
        prefix = root.rstrip("/\\") + "/"
        rows = self.tuples(
            "SELECT DISTINCT identity FROM imports WHERE identity IS NOT NULL AND substr(path, 1, ?) = ?",
            (len(prefix), prefix),
        )
        return {row[0] for row in rows}

    def import_claims(self, asset_id: str, file_name: str | None) -> list[ImportClaim]:
        """Imported faces cut from this photo (by its asset id, or by its file name where the tree gave
        a path) that its own faces have not replaced yet, and that still stand as imported."""
        rows = self.rows(
            "SELECT i.path, i.identity, i.subset, i.held, i.bbox, i.face_id, i.asset_id FROM imports i JOIN faces f "
            "ON f.id = i.face_id WHERE (i.asset_id = ? OR (i.asset_id IS NULL AND i.source_name = ?)) "
            "AND i.state = 'done' AND i.superseded_at IS NULL AND i.bbox IS NOT NULL "
            "AND ((i.held IS NULL AND f.identity = i.identity) OR (i.held IS NOT NULL AND f.held = i.held)) "
            "ORDER BY i.path",
            (asset_id, file_name or ""),
        )
        return [
            ImportClaim(
                row["path"],
                row["identity"],
                _box(json.loads(row["bbox"])),
                row["face_id"],
                row["subset"],
                row["held"],
                by_name=row["asset_id"] is None,
            )
            for row in rows
        ]

    def face_box(self, face_id: int) -> Box | None:
        row = self.tuples("SELECT x1, y1, x2, y2 FROM faces WHERE id = ?", (face_id,))
        return _box(row[0]) if row else None

    def blob_boxes(self, sha256: str) -> list[tuple[int, Box]]:
        """(face id, box) of a blob's faces not yet in an identity."""
        rows = self.tuples(
            "SELECT id, x1, y1, x2, y2 FROM faces WHERE sha256 = ? AND identity IS NULL ORDER BY id", (sha256,)
        )
        return [(row[0], _box(row[1:])) for row in rows]

    def supersede_imports(self, replacements: Sequence[tuple[ImportClaim, int]]) -> Dropped:
        """Each (claim, face id): the photo's own face takes the imported face's place in its identity;
        the imported face (and its crop) goes. Call inside a transaction."""
        dropped = Dropped()
        now = utc_now()
        for claim, face_id in replacements:
            self.execute(
                "UPDATE faces SET identity = ?, subset = ?, held = ?, "
                "distance = (SELECT distance FROM faces WHERE id = ?), matched_at = ? WHERE id = ?",
                (None if claim.held else claim.identity, claim.subset, claim.held, claim.face_id, now, face_id),
            )
            self.execute("UPDATE imports SET face_id = ?, superseded_at = ? WHERE path = ?", (face_id, now, claim.path))
            old = self.rows("SELECT sha256, crop FROM faces WHERE id = ?", (claim.face_id,))
            self.execute("DELETE FROM faces WHERE id = ?", (claim.face_id,))
            dropped.indexed_faces.append(claim.face_id)
            if old:
                dropped.crops.append(old[0]["crop"])
                dropped.extend(self._drop_blob_if_orphaned(old[0]["sha256"]))
        if replacements:
            self._bump_index_version()
        return dropped

    def faces_by_id(self, face_ids: Sequence[int]) -> list[StoredFace]:
        found: list[StoredFace] = []
        for chunk, marks in self.id_chunks(face_ids):
            found.extend(self._faces(f"id IN ({marks})", chunk))
        return found

    def faces_of_blob(self, sha256: str) -> list[tuple[int, float]]:
        """(face id, box area) of a blob's faces, largest first."""
        rows = self.tuples(
            "SELECT id, (x2 - x1) * (y2 - y1) AS area FROM faces WHERE sha256 = ? ORDER BY area DESC", (sha256,)
        )
        return [(row[0], row[1]) for row in rows]

    # -- export ---------------------------------------------------------------------------------

    def export_marks(self) -> ExportMarks:
        """What changed since the folders were last written (marked by triggers, migrations/0020),
        and the newest mark's sequence number: what an export that begins now may clear."""
        rows = self.tuples("SELECT seq, number, face_id FROM export_marks")
        faces: dict[int, set[int]] = {}
        whole = {number for _, number, face_id in rows if face_id == 0}
        for _, number, face_id in rows:
            if face_id:
                faces.setdefault(number, set()).add(face_id)
        # A faceset merged away says in its folder where its faces are now, the end of its chain of
        # merges: one merged into a marked faceset, directly or through others, goes with it, whole
        # (a trigger cannot follow the chain).
        marked = whole | faces.keys()
        merged = self.tuples("SELECT number, merged_into FROM identities WHERE merged_into IS NOT NULL")
        while grown := {number for number, into in merged if into in marked and number not in marked}:
            marked |= grown
            whole |= grown
        upto = max((seq for seq, _, _ in rows), default=0)
        return ExportMarks(upto, {number: frozenset(ids) for number, ids in faces.items()}, frozenset(whole))

    def clear_export_marks(self, upto: int, numbers: Collection[int] | None = None) -> None:
        """The folders are written as the store stood at mark `upto`: those marks are cleared (of
        `numbers` only, when given); a face or faceset marked again since stays marked."""
        with self.transaction():
            if numbers is None:
                self.execute("DELETE FROM export_marks WHERE seq <= ?", (upto,))
                return
            for chunk, marks in self.id_chunks(list(numbers)):
                self.execute(f"DELETE FROM export_marks WHERE seq <= ? AND number IN ({marks})", (upto, *chunk))

    def export_faces(
        self, numbers: Collection[int] | None = None, faces: Collection[int] | None = None
    ) -> dict[int, list[ExportFace]]:
        """Live faces per identity, with one representative asset each (lowest source/asset id); with
        `numbers`, of those identities only; with `faces`, those faces only (those live, in a faceset).
        A hidden identity has none to export."""
        among = "" if numbers is None else f"AND f.identity IN ({_numbers_sql(numbers)})"
        if faces is not None:  # the ids as one JSON parameter: thousands inline would pass SQL's length limit
            among += " AND f.id IN (SELECT value FROM json_each(:faces))"
        # One asset stands for each photo (the lowest source and asset id): found once per face, then
        # read whole (three correlated look-ups per face cost three times as much).
        # Read as tuples in the order written here: a dict per row cost a tenth of an export.
        rows = self.tuples(
            f"""
            SELECT f.face_id, f.sha256, f.identity, f.crop, f.x1, f.y1, f.x2, f.y2, f.det_score, f.distance,
                   {_parts_of("f")}, f.subset,
                   a.source, a.asset_id, a.owner_id, a.file_created_at, a.original_file_name
            FROM (
                SELECT f.id AS face_id, f.sha256, f.identity, f.crop, f.x1, f.y1, f.x2, f.y2, f.det_score,
                       f.distance, {_parts_of("f")}, f.subset,
                       (SELECT a.rowid FROM assets a WHERE a.sha256 = f.sha256 AND a.state = :done
                        ORDER BY a.source, a.asset_id LIMIT 1) AS representative
                FROM faces f WHERE f.identity IS NOT NULL {among} AND {LIVE_FACES}
                  AND NOT EXISTS (SELECT 1 FROM identities h WHERE h.number = f.identity AND h.hidden_at IS NOT NULL)
            ) f LEFT JOIN assets a ON a.rowid = f.representative
            ORDER BY f.identity, f.face_id
            """,
            {"done": AssetState.DONE, "faces": json.dumps(sorted(faces or ()))},
        )
        result: dict[int, list[ExportFace]] = {}
        for row in rows:
            face_id, sha256, identity, crop, x1, y1, x2, y2, det_score, distance, *rest = row
            parts, (subset, source, asset_id, owner, taken, file_name) = rest[: len(_PARTS)], rest[len(_PARTS) :]
            result.setdefault(identity, []).append(
                ExportFace(
                    face_id=face_id,
                    sha256=sha256,
                    source=source or "import",
                    asset_id=asset_id,
                    owner=owner,
                    crop=crop,
                    bbox=(x1, y1, x2, y2),
                    det_score=det_score,
                    distance=distance,
                    quality=_quality(parts),
                    subset=subset,
                    taken=taken or None,
                    file_name=file_name or None,
                )
            )
        return result

    def retired_numbers(self) -> dict[int, int]:
        """Faceset numbers merged away -> the number their faces are in now (a chain of merges
        followed to its end; a forgotten end leaves the number out)."""
        merged = dict(self.tuples("SELECT number, merged_into FROM identities WHERE merged_into IS NOT NULL"))
        forgotten = {row[0] for row in self.tuples("SELECT number FROM identities WHERE forgotten_at IS NOT NULL")}
        ends: dict[int, int] = {}
        for number in merged:
            end, seen = merged[number], {number}
            while end in merged and end not in seen:
                seen.add(end)
                end = merged[end]
            if end not in forgotten:
                ends[number] = end
        return ends

    def identity_names(self) -> dict[int, str]:
        return dict(self.tuples("SELECT number, name FROM identities WHERE name IS NOT NULL"))

    def set_identity_names(self, names: dict[int, str | None]) -> None:
        with self.transaction():
            for number, name in names.items():
                self.execute("UPDATE identities SET name = ?, name_origin = 'user' WHERE number = ?", (name, number))

    def embeddings_of(self, face_ids: Sequence[int]) -> dict[int, NDArray[np.float32]]:
        import numpy as np

        found: dict[int, NDArray[np.float32]] = {}
        for chunk, marks in self.id_chunks(face_ids):  # the embeddings alone: no quality, no photo
            rows = self.tuples(f"SELECT id, embedding FROM faces WHERE id IN ({marks})", chunk)
            found.update((face_id, np.frombuffer(blob, dtype=np.float32)) for face_id, blob in rows)
        return found

    def identity_numbers(self) -> list[int]:
        return [row[0] for row in self.tuples("SELECT number FROM identities ORDER BY number")]

    def all_crops(self) -> set[str]:
        return {row[0] for row in self.tuples("SELECT crop FROM faces")}


def _engine(model_name: str) -> str:
    """How a recorded model name reads: "immich-ml:buffalo_l" or the local pack "buffalo_l"."""
    engine, _, model = model_name.rpartition(":")
    return f"model {model} through {engine}" if engine else f"model pack {model_name} (run here)"


def _box(values: Sequence[Any]) -> Box:
    x1, y1, x2, y2 = (float(value) for value in values)
    return x1, y1, x2, y2


def _quality_columns(quality: Quality | None) -> tuple[float | None, ...]:
    """The composite and the parts (PART_COLUMNS) as stored."""
    if quality is None:
        return (None,) * (1 + len(_PARTS))
    return round(quality.composite, 6), *quality.parts().values()


def _quality(parts: Sequence[float | None]) -> Quality | None:
    """A face's quality from its stored parts (PART_COLUMNS); None where it was never measured."""
    det_score, size, blur, frontality, symmetry = parts
    if det_score is None or size is None or blur is None:
        return None
    return Quality(det_score, size, blur, frontality, symmetry)


def _pairs(text: str | None) -> NDArray[np.int64]:
    """The rows of pairs of integers that SQLite's group_concat(a || ',' || b) gave (None: no row).
    Each pair is one element of the list, so its two numbers stay together; fetching a row per pair
    cost twice the CPU, most of it in making a Python tuple and two ints of each."""
    import numpy as np

    try:
        numbers = np.fromstring(text or "", np.int64, sep=",")
    except ValueError as problem:  # (a value that is no integer where ids are: never written so)
        raise StoreError(f"the database holds a value that is no integer where ids are: {problem}") from problem
    if text and (len(numbers) != text.count(",") + 1 or len(numbers) % 2):
        raise StoreError("the database holds a value that is no integer where ids are")
    return numbers.reshape(-1, 2)
