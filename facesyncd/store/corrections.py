"""The user's corrections: names, merges, splits, moves, rejections, locks, forgotten people, and the
history that undoes them; and the constraints they put on every automatic step."""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..boxes import overlap
from ..errors import StoreError
from ..models import AssetState, Box, Correction, Dropped, FaceDetail, FacesetSummary
from .database import BUSY_TIMEOUT_MS, utc_now
from .faces import LIVE_FACE, LIVE_FACES, POOL, FaceQueries, _box

if TYPE_CHECKING:  # numpy stays out of `status`
    import numpy as np
    from numpy.typing import NDArray

log = logging.getLogger(__name__)

# The stale facesets' rows of faceset_stats, counted through each identity's own faces: its live
# faces, the best of them (faces_by_quality walked from the top), its latest move.
_COUNTED_AFRESH = f"""
    SELECT i.number,
           (SELECT COUNT(*) FROM faces f WHERE f.identity = i.number AND {LIVE_FACES}),
           (SELECT f.id FROM faces f WHERE f.identity = i.number AND {LIVE_FACES}
            ORDER BY COALESCE(f.quality, 0) DESC, f.id LIMIT 1),
           (SELECT MAX(COALESCE(f.placed_at, f.matched_at)) FROM faces f WHERE f.identity = i.number)
    FROM identities i WHERE i.number IN (SELECT number FROM faceset_stats_stale)"""

# A face detected again within a forgotten box (intersection over union) is the forgotten face.
FORGOTTEN_OVERLAP = 0.5

# Meta: "1" once save_centres wrote every centre since the centres' marks began (migrations/0024): from
# then on the rows are the store's but for the marked identities.
CENTRES_BY_MARKS = "centres_by_marks"


class CorrectionQueries(FaceQueries):
    # -- reading -----------------------------------------------------------------------------------

    def facesets(self, number: int | None = None) -> list[FacesetSummary]:
        """Every identity (or one), retired ones included, by number. Their faces are counted in
        faceset_stats, brought up to date first (see _refresh_stats): a page of 5,000 facesets reads
        5,000 rows, not 500,000 faces."""
        self._refresh_stats()
        rows = self.rows(
            f"""
            WITH stats AS (
                SELECT number, faces, best_face, moved_at FROM faceset_stats
                WHERE number NOT IN (SELECT number FROM faceset_stats_stale)
                UNION ALL {_COUNTED_AFRESH})
            SELECT i.number, i.name, i.locked_at, i.merged_into, i.forgotten_at, i.hidden_at,
                   COALESCE(s.faces, 0) AS faces,
                   MAX(i.created_at, COALESCE(i.merged_at, ''), COALESCE(i.locked_at, ''),
                       COALESCE(i.forgotten_at, ''), COALESCE(i.hidden_at, ''), COALESCE(s.moved_at, ''))
                       AS last_change,
                   s.best_face
            FROM identities i LEFT JOIN stats s ON s.number = i.number
            {"WHERE i.number = :number" if number is not None else ""} ORDER BY i.number
            """,
            {"number": number} if number is not None else {},
        )
        corrected = self._last_corrected()
        return [
            FacesetSummary(
                number=row["number"],
                name=row["name"],
                faces=row["faces"],
                locked=row["locked_at"] is not None,
                merged_into=row["merged_into"],
                forgotten=row["forgotten_at"] is not None,
                last_change=max(row["last_change"] or "", corrected.get(row["number"], "")) or None,
                best_face=row["best_face"],
                hidden=row["hidden_at"] is not None,
            )
            for row in rows
        ]

    def _last_corrected(self) -> dict[int, str]:
        """Per identity, when a correction last named it (as its number, or as one side of a move,
        a merge or a split). Read apart from the identities: joined to them, SQLite scanned every
        correction's numbers once per identity (25 million rows for 5,000 facesets)."""
        keys = ("number", "from", "to", "kept", "before")
        touched = " UNION ALL ".join(
            f"SELECT json_extract(undo, '$.{key}') AS number, at FROM corrections" for key in keys
        )
        return dict(
            self.tuples(f"SELECT number, MAX(at) FROM ({touched}) WHERE typeof(number) = 'integer' GROUP BY number")
        )

    def _refresh_stats(self) -> None:
        """Recount the facesets the triggers marked stale (migrations/0015), and keep the counts. Not
        while another process writes (a page does not wait for a cycle to commit), nor in a read-only
        open: facesets() then counts the stale ones afresh, and the next writer keeps them."""
        if self.readonly or not self.scalar("SELECT EXISTS (SELECT 1 FROM faceset_stats_stale)"):
            return
        own = not self.conn.in_transaction  # else within the caller's write, which holds the lock
        if own:
            self.conn.execute("PRAGMA busy_timeout = 0")
        try:
            with self.transaction():
                self.execute("DELETE FROM faceset_stats WHERE number IN (SELECT number FROM faceset_stats_stale)")
                self.execute(f"INSERT INTO faceset_stats (number, faces, best_face, moved_at) {_COUNTED_AFRESH}")
                self.execute("DELETE FROM faceset_stats_stale")
        except StoreError as error:  # busy: another process holds the write lock
            log.debug("faceset counts left for the next writer: %s", error)
        finally:
            if own:
                self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    def _face_details(
        self, where: str, parameters: Sequence[Any], limit: int = -1, order: str = "f.id"
    ) -> list[FaceDetail]:
        rows = self.rows(
            f"""
            SELECT f.id, f.identity, f.sha256, f.crop, f.x1, f.y1, f.x2, f.y2, f.det_score, f.distance,
                   f.quality, f.placed_at, f.held,
                   (SELECT a.asset_id FROM assets a WHERE a.sha256 = f.sha256 AND a.state = :done
                    ORDER BY a.source, a.asset_id LIMIT 1) AS asset_id,
                   (SELECT a.source FROM assets a WHERE a.sha256 = f.sha256 AND a.state = :done
                    ORDER BY a.source, a.asset_id LIMIT 1) AS source,
                   (SELECT a.file_created_at FROM assets a WHERE a.sha256 = f.sha256 AND a.state = :done
                    ORDER BY a.source, a.asset_id LIMIT 1) AS taken,
                   (SELECT a.original_file_name FROM assets a WHERE a.sha256 = f.sha256 AND a.state = :done
                    ORDER BY a.source, a.asset_id LIMIT 1) AS file_name,
                   (SELECT b.width FROM blobs b WHERE b.sha256 = f.sha256) AS photo_width,
                   (SELECT b.height FROM blobs b WHERE b.sha256 = f.sha256) AS photo_height
            FROM faces f WHERE {where} ORDER BY {order} LIMIT :limit
            """,
            {"done": AssetState.DONE, "limit": limit, **{f"p{n}": value for n, value in enumerate(parameters)}},
        )
        return [
            FaceDetail(
                face_id=row["id"],
                identity=row["identity"],
                sha256=row["sha256"],
                asset_id=row["asset_id"],
                source=row["source"],
                crop=row["crop"],
                bbox=_box((row["x1"], row["y1"], row["x2"], row["y2"])),
                det_score=row["det_score"],
                distance=row["distance"],
                quality=row["quality"],
                placed=row["placed_at"] is not None,
                held=row["held"],
                taken=row["taken"] or None,
                file_name=row["file_name"] or None,
                photo_size=(row["photo_width"], row["photo_height"])
                if row["photo_width"] and row["photo_height"]
                else None,
            )
            for row in rows
        ]

    def faces_of_identity(self, number: int) -> list[FaceDetail]:
        return self._face_details(f"f.identity = :p0 AND {LIVE_FACE}", [number])

    def best_faces(self, number: int, limit: int) -> list[FaceDetail]:
        """A faceset's best faces (highest quality first): its preview."""
        return self._face_details(
            f"f.identity = :p0 AND {LIVE_FACE}", [number], limit, "COALESCE(f.quality, 0) DESC, f.id"
        )

    def pool(self, limit: int = 500) -> list[FaceDetail]:
        """Faces compared with every identity and in none (the pool clustering draws from), newest
        first."""
        return self._face_details(POOL, [], limit, "f.id DESC")

    def pool_size(self) -> int:
        # Over the pool's own index alone (migrations/0015): the planner otherwise reads each row of
        # every face in no identity, 2-3x as long.
        return int(self.scalar(f"SELECT COUNT(*) FROM faces f INDEXED BY faces_in_pool WHERE {POOL}"))

    def face_detail(self, face_id: int) -> FaceDetail | None:
        found = self._face_details("f.id = :p0", [face_id])
        return found[0] if found else None

    # -- constraints on the automatic steps ---------------------------------------------------------

    def locked_identities(self) -> set[int]:
        return {row[0] for row in self.tuples("SELECT number FROM identities WHERE locked_at IS NOT NULL")}

    def rejections_of(self, face_ids: Sequence[int]) -> dict[int, set[int]]:
        """face id -> the identities it was rejected from."""
        found: dict[int, set[int]] = {}
        for chunk, marks in self.id_chunks(face_ids):
            for face_id, identity in self.tuples(
                f"SELECT face_id, identity FROM rejections WHERE face_id IN ({marks})", chunk
            ):
                found.setdefault(face_id, set()).add(identity)
        return found

    def kept_apart(self) -> set[frozenset[int]]:
        """Pairs of identities never merged automatically: split by the user, or one holding a face
        rejected from the other."""
        pairs = {frozenset(row) for row in self.tuples("SELECT low, high FROM kept_apart")}
        pairs.update(
            frozenset(row)
            for row in self.tuples(
                "SELECT r.identity, f.identity FROM rejections r JOIN faces f ON f.id = r.face_id "
                "WHERE f.identity IS NOT NULL AND f.identity != r.identity"
            )
        )
        return pairs

    def identities_with_placed_faces(self) -> set[int]:
        return {
            row[0]
            for row in self.tuples("SELECT DISTINCT identity FROM faces WHERE placed_at IS NOT NULL AND identity > 0")
        }

    def forgotten_in(self, sha256: str, boxes: Sequence[Box]) -> set[int]:
        """Which of these boxes, detected in the file `sha256`, are faces of a forgotten person."""
        entries = self.tuples("SELECT x1, y1, x2, y2 FROM forgotten WHERE sha256 = ?", (sha256,))
        if not entries:
            return set()
        if any(entry[0] is None for entry in entries):
            return set(range(len(boxes)))
        return {
            row
            for row, box in enumerate(boxes)
            if any(overlap(box, _box(entry)) >= FORGOTTEN_OVERLAP for entry in entries)
        }

    def is_forgotten_file(self, sha256: str) -> bool:
        return self.scalar("SELECT 1 FROM forgotten WHERE sha256 = ? AND x1 IS NULL", (sha256,)) is not None

    def forgotten_numbers(self) -> list[int]:
        return [row[0] for row in self.tuples("SELECT number FROM identities WHERE forgotten_at IS NOT NULL")]

    def corrections_version(self) -> int:
        """Grows with every correction: a running daemon reloads what it keeps in memory."""
        return int(self.get_meta("corrections_version") or 0)

    # -- corrections ------------------------------------------------------------------------------

    def record_correction(self, kind: str, summary: str, undo: dict[str, Any]) -> int:
        """Call inside the transaction that makes the correction."""
        cursor = self.execute(
            "INSERT INTO corrections (at, kind, summary, undo) VALUES (?, ?, ?, ?)",
            (utc_now(), kind, summary, json.dumps(undo)),
        )
        self._corrected()
        return int(cursor.lastrowid or 0)

    def _corrected(self) -> None:
        self.set_meta("corrections_version", str(self.corrections_version() + 1))
        self._bump_index_version()

    def _corrections(self, where: str = "1", parameters: Sequence[Any] = ()) -> list[Correction]:
        return [
            Correction(row["id"], row["at"], row["kind"], row["summary"], json.loads(row["undo"]), row["undone_at"])
            for row in self.rows(f"SELECT * FROM corrections WHERE {where} ORDER BY id", parameters)
        ]

    def history(self) -> list[Correction]:
        return self._corrections()

    def correction(self, correction_id: int) -> Correction | None:
        found = self._corrections("id = ?", (correction_id,))
        return found[0] if found else None

    def mark_undone(self, correction_id: int) -> None:
        self.execute("UPDATE corrections SET undone_at = ? WHERE id = ?", (utc_now(), correction_id))
        self._corrected()

    def set_name(self, number: int, name: str | None, origin: str = "user") -> None:
        """origin: who gave it: 'user' (a command, the page, an undo: never overwritten by Immich's
        names, even a name removed), or 'immich' (see cycle/names.py)."""
        self.execute("UPDATE identities SET name = ?, name_origin = ? WHERE number = ?", (name, origin, number))

    def name_votes(self, numbers: Collection[int] | None = None) -> dict[int, tuple[int, dict[str, int]]]:
        """For each live identity that may take a name from Immich (none given in facesyncd) and whose
        faces' photos show a person Immich names: its live faces, and per name, how many of its faces'
        photos show that person. With `numbers`: those identities' at least, read from their faces
        rather than from every photo Immich names people in, where they have fewer faces than there
        are such photos (a face costs about what a named photo does; with no person named in any
        photo, going through the faces of 600 facesets cost 0.5 CPU-s at 500,000 faces for nothing)."""
        if numbers is not None and self._faces_of(numbers) >= int(self.scalar("SELECT COUNT(*) FROM asset_people")):
            numbers = None
        open_to_names = (
            "i.merged_into IS NULL AND i.forgotten_at IS NULL "
            "AND (i.name_origin = 'immich' OR (i.name IS NULL AND i.name_origin IS NULL))"
        )
        done = AssetState.DONE
        if numbers is None:
            # From the photos Immich names people in (CROSS JOIN keeps that order): SQLite's planner went
            # from every done asset instead, 0.57 CPU-s at 500,000 with no person named in any.
            sql = f"""
                SELECT f.identity, p.name, COUNT(DISTINCT f.id) FROM asset_people p
                CROSS JOIN assets a ON a.source = p.source AND a.asset_id = p.asset_id AND a.state = '{done}'
                JOIN faces f ON f.sha256 = a.sha256
                JOIN identities i ON i.number = f.identity
                WHERE {open_to_names} GROUP BY f.identity, p.name
                """
            parameters: dict[str, str] = {}
        else:
            sql = f"""
                SELECT f.identity, p.name, COUNT(DISTINCT f.id) FROM identities i
                CROSS JOIN faces f ON f.identity = i.number
                JOIN assets a ON a.sha256 = f.sha256 AND a.state = '{done}'
                JOIN asset_people p ON p.source = a.source AND p.asset_id = a.asset_id
                WHERE i.number IN (SELECT value FROM json_each(:numbers)) AND {open_to_names}
                GROUP BY f.identity, p.name
                """
            parameters = {"numbers": json.dumps(sorted(numbers))}
        named: dict[int, dict[str, int]] = {}
        for number, name, count in self.tuples(sql, parameters):
            named.setdefault(number, {})[name] = count
        votes: dict[int, tuple[int, dict[str, int]]] = {}
        for chunk, marks in self.id_chunks(sorted(named)):  # the faces of those identities only
            for number, faces in self.tuples(
                f"SELECT f.identity, COUNT(*) FROM faces f WHERE f.identity IN ({marks}) AND {LIVE_FACES} "
                "GROUP BY f.identity",
                chunk,
            ):
                votes[number] = (faces, named[number])
        return votes

    def _faces_of(self, numbers: Collection[int]) -> int:
        """How many faces these identities have (counted in the index by identity: faceset_stats may be
        waiting for a reader to bring it up to date)."""
        return int(
            self.scalar(
                "SELECT COUNT(*) FROM faces WHERE identity IN (SELECT value FROM json_each(?))",
                (json.dumps(sorted(numbers)),),
            )
        )

    def name_marks(self) -> tuple[int, frozenset[int]]:
        """The newest names mark and the identities marked (by triggers, migrations/0022): those whose
        name_votes may have changed since the marks were last cleared."""
        rows = self.tuples("SELECT seq, number FROM name_marks")
        return max((seq for seq, _ in rows), default=0), frozenset(number for _, number in rows)

    def clear_name_marks(self, upto: int) -> None:
        """The votes were counted as the store stood at mark `upto`."""
        with self.transaction():
            self.execute("DELETE FROM name_marks WHERE seq <= ?", (upto,))

    def centre_marks(self) -> frozenset[int] | None:
        """The identities whose centres may have moved since their rows were written (marked by
        triggers, migrations/0024); None while the rows are not kept by the marks (none written
        since they began): every centre is to be written. Read them in the transaction that writes
        the centres (save_centres), which clears them."""
        if self.get_meta(CENTRES_BY_MARKS) != "1":
            return None
        return frozenset(number for (number,) in self.tuples("SELECT number FROM centre_marks"))

    def save_centres(
        self,
        centres: Mapping[int, NDArray[np.float32]],
        counts: Mapping[int, int],
        only: Collection[int] | None = None,
    ) -> None:
        """The identities' centres, as an index in step with the store has them: all of them, or
        those of the identities `only` (the others' rows as they are; an identity not in `centres`
        loses its row). Clears the centres' marks: call it in the transaction that read them
        (centre_marks), with `only` the marks it read."""
        with self.transaction():
            if only is None:
                self.execute("DELETE FROM identity_centres")
            else:
                self.executemany("DELETE FROM identity_centres WHERE number = ?", [(number,) for number in only])
            self.executemany(
                "INSERT INTO identity_centres (number, centre, faces) VALUES (?, ?, ?)",
                [
                    (number, centre.astype("float32").tobytes(), counts.get(number, 0))
                    for number, centre in centres.items()
                    if only is None or number in only
                ],
            )
            self.execute("DELETE FROM centre_marks")
            self.set_meta(CENTRES_BY_MARKS, "1")

    def centres_current(self) -> bool:
        """Whether the centres' rows are the store's: written since the marks began, none marked."""
        return self.get_meta(CENTRES_BY_MARKS) == "1" and self.scalar("SELECT 1 FROM centre_marks LIMIT 1") is None

    def centres(self) -> dict[int, NDArray[np.float32]]:
        """The live, shown identities' centres as the last cycle left them."""
        import numpy as np

        rows = self.tuples(
            "SELECT c.number, c.centre FROM identity_centres c JOIN identities i ON i.number = c.number "
            "WHERE i.merged_into IS NULL AND i.forgotten_at IS NULL AND i.hidden_at IS NULL"
        )
        return {number: np.frombuffer(blob, np.float32) for number, blob in rows}

    def name_origin(self, number: int) -> str | None:
        value = self.scalar("SELECT name_origin FROM identities WHERE number = ?", (number,))
        return None if value is None else str(value)

    def set_locked(self, number: int, locked: bool) -> None:
        self.execute("UPDATE identities SET locked_at = ? WHERE number = ?", (utc_now() if locked else None, number))

    def set_hidden(self, number: int, hidden: bool) -> None:
        self.execute("UPDATE identities SET hidden_at = ? WHERE number = ?", (utc_now() if hidden else None, number))

    def place_faces(self, face_ids: Sequence[int], identity: int | None, *, placed: bool | None) -> None:
        """Put faces in `identity` (None: the pool) by hand. placed: True marks them must-link, False
        clears the mark, None leaves it as it was."""
        now = utc_now()
        for face_id in face_ids:
            self.execute(
                "UPDATE faces SET identity = ?, distance = NULL, matched_at = COALESCE(matched_at, ?), "
                "placed_at = CASE WHEN ? IS NULL THEN placed_at WHEN ? THEN ? ELSE NULL END WHERE id = ?",
                (identity, now, placed, placed, now, face_id),
            )

    def set_held(self, face_ids: Sequence[int], held: str | None) -> None:
        """Set faces aside (`held`: the decision; they never form a faceset and never join one), or
        back (None: into the pool, to be compared again)."""
        for face_id in face_ids:
            if held is None:
                self.execute("UPDATE faces SET held = NULL, matched_at = NULL WHERE id = ?", (face_id,))
            else:
                self.execute("UPDATE faces SET held = ?, identity = NULL WHERE id = ?", (held, face_id))

    def faces_in(self, face_ids: Sequence[int], identity: int | None) -> list[int]:
        """Those of these faces that are in `identity` now (None: in no identity), in their order."""
        there: set[int] = set()
        for chunk, marks in self.id_chunks(face_ids):
            there.update(
                row[0]
                for row in self.tuples(
                    f"SELECT id FROM faces WHERE id IN ({marks}) AND identity IS ?", [*chunk, identity]
                )
            )
        return [face_id for face_id in face_ids if face_id in there]

    def face_ids_of(self, number: int) -> list[int]:
        return [row[0] for row in self.tuples("SELECT id FROM faces WHERE identity = ? ORDER BY id", (number,))]

    def reject(self, face_id: int, identity: int, correction: int) -> None:
        self.execute(
            "INSERT INTO rejections (face_id, identity, correction) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (face_id, identity, correction),
        )

    def unreject(self, face_id: int, identity: int) -> bool:
        return (
            self.execute("DELETE FROM rejections WHERE face_id = ? AND identity = ?", (face_id, identity)).rowcount > 0
        )

    def keep_apart(self, a: int, b: int, correction: int) -> None:
        self.execute(
            "INSERT INTO kept_apart (low, high, correction) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (min(a, b), max(a, b), correction),
        )

    def stop_keeping_apart(self, a: int, b: int) -> None:
        self.execute("DELETE FROM kept_apart WHERE low = ? AND high = ?", (min(a, b), max(a, b)))

    def retire(self, number: int, merged_into: int | None) -> None:
        """`number` is given no more (merged_into: where its faces went; None: back in use)."""
        self.execute(
            "UPDATE identities SET merged_into = ?, merged_at = ? WHERE number = ?",
            (merged_into, utc_now() if merged_into is not None else None, number),
        )

    def new_identity(self, origin: str) -> int:
        number = self.highest_identity() + 1
        self.execute(
            "INSERT INTO identities (number, origin, created_at) VALUES (?, ?, ?)", (number, origin, utc_now())
        )
        return number

    def forget_identity(self, number: int, correction: int, files: Sequence[str]) -> Dropped:
        """Delete the identity's faces (embeddings and crops with them) and block them: each face's file
        and box go on the block list (an imported crop's whole file), and the whole `files` (sha256:
        the crops facesyncd exported). Returns what to tidy outside the store."""
        rows = self.tuples(
            "SELECT f.id, f.sha256, f.x1, f.y1, f.x2, f.y2, f.crop, b.decoded_from FROM faces f "
            "JOIN blobs b ON b.sha256 = f.sha256 WHERE f.identity = ?",
            (number,),
        )
        dropped = Dropped()
        for sha256 in sorted(set(files)):
            self.execute(
                "INSERT INTO forgotten (sha256, number, correction) VALUES (?, ?, ?)", (sha256, number, correction)
            )
        for face_id, sha256, x1, y1, x2, y2, crop, decoded_from in rows:
            whole = decoded_from == "import"
            self.execute(
                "INSERT INTO forgotten (sha256, x1, y1, x2, y2, number, correction) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (sha256, *((None,) * 4 if whole else (x1, y1, x2, y2)), number, correction),
            )
            dropped.crops.append(crop)
            dropped.indexed_faces.append(face_id)
        self.execute("DELETE FROM faces WHERE identity = ?", (number,))
        self.execute(
            "UPDATE identities SET forgotten_at = ?, name = NULL, locked_at = NULL WHERE number = ?",
            (utc_now(), number),
        )
        self._bump_index_version()
        return dropped

    def unforget(self, correction: int) -> int:
        """Lift a forget's block list; the files it blocked that hold no face now are processed again:
        their blobs are dropped and their assets queued. Returns how many assets were queued."""
        files = [
            row[0] for row in self.tuples("SELECT DISTINCT sha256 FROM forgotten WHERE correction = ?", (correction,))
        ]
        self.execute("DELETE FROM forgotten WHERE correction = ?", (correction,))
        queued = 0
        for sha256 in files:
            if self.scalar("SELECT 1 FROM faces WHERE sha256 = ?", (sha256,)) is not None:
                continue
            queued += self.execute(
                "UPDATE assets SET state = ?, sha256 = NULL, attempts = 0, next_attempt_at = NULL, reason = NULL, "
                "changed_at = ? WHERE sha256 = ?",
                (AssetState.PENDING, utc_now(), sha256),
            ).rowcount
            self.execute(
                "UPDATE imports SET state = 'failed', reason = 'forgotten, then undone' WHERE sha256 = ?", (sha256,)
            )
            self.execute("DELETE FROM blobs WHERE sha256 = ?", (sha256,))
        return queued
