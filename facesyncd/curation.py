"""Review and correct: the user's corrections, each one undoable, each one a constraint.

A correction is state in the store, never an edit that a re-run could undo: assignment, the
clustering of the pool, the automatic merge of identities and a rebuilt index all read the
constraints it leaves (store/corrections.py): a rejected face never rejoins the identity it was
rejected from (cannot-link), a moved face stays where it was put (must-link), a split pair is never
merged again automatically, a locked faceset changes only by hand, a forgotten person's faces are
never stored again. Each function here makes one correction in one transaction and records in the
history what undoing it takes; `undo` reverts one. The folders are brought in line by the caller
(actions.correct), or by a running daemon at its next cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import FacesyncError
from .models import Dropped, FaceDetail, FacesetSummary
from .store import Store


class CorrectionRefused(FacesyncError):
    """The correction names something that is not there, or cannot be made as asked."""


@dataclass
class Outcome:
    """What a correction did: a line for the user, and what to tidy outside the store."""

    message: str
    correction: int | None = None
    dropped: Dropped = field(default_factory=Dropped)
    removed_folders: list[int] = field(default_factory=list)  # facesets whose folders must go entirely


def _faceset(store: Store, number: int, *, live: bool = True) -> FacesetSummary:
    found = store.facesets(number)
    if not found:
        raise CorrectionRefused(f"there is no faceset {number:03d} (see `facesyncd faceset list`)")
    summary = found[0]
    if live and summary.forgotten:
        raise CorrectionRefused(f"faceset {number:03d} was forgotten; its number is retired")
    if live and summary.merged_into is not None:
        raise CorrectionRefused(
            f"faceset {number:03d} was merged into {summary.merged_into:03d}; its number is retired"
        )
    return summary


def _face(store: Store, face_id: int) -> FaceDetail:
    face = store.face_detail(face_id)
    if face is None:
        raise CorrectionRefused(f"there is no face {face_id} (see `facesyncd faceset show N`)")
    if face.held is not None:
        raise CorrectionRefused(f"face {face_id} was set aside by an imported tree ({face.held}/)")
    return face


def name(store: Store, number: int, new_name: str | None) -> Outcome:
    summary = _faceset(store, number)
    new_name = (new_name or "").strip() or None
    if new_name is not None and ("\n" in new_name or len(new_name) > 200):
        raise CorrectionRefused("a name is one line of at most 200 characters")
    with store.transaction():
        store.set_name(number, new_name)
        said = f"named faceset {number:03d} {new_name!r}" if new_name else f"removed the name of faceset {number:03d}"
        entry = store.record_correction("name", said, {"number": number, "before": summary.name})
    return Outcome(said, entry)


def merge(store: Store, kept: int, others: Sequence[int]) -> Outcome:
    """The faces of each of `others` join `kept`; their numbers are retired, recorded as merged into
    it. A face rejected from `kept` does not come along: it goes to the pool."""
    _faceset(store, kept)
    others = sorted(set(others) - {kept})
    if not others:
        raise CorrectionRefused("name at least one other faceset to merge into it")
    for number in others:
        _faceset(store, number)
    with store.transaction():
        moved: dict[str, list[int]] = {}
        pooled: dict[str, list[int]] = {}
        for number in others:
            faces = store.face_ids_of(number)
            refused = store.rejections_of(faces)
            pooled[str(number)] = [face for face in faces if kept in refused.get(face, set())]
            moved[str(number)] = [face for face in faces if face not in pooled[str(number)]]
            store.place_faces(moved[str(number)], kept, placed=None)
            store.place_faces(pooled[str(number)], None, placed=None)
            store.retire(number, kept)
        listing = ", ".join(f"{number:03d}" for number in others)
        said = f"merged {listing} into {kept:03d}"
        entry = store.record_correction("merge", said, {"kept": kept, "moved": moved, "pooled": pooled})
    left = sum(len(faces) for faces in pooled.values())
    return Outcome(said + (f" ({left} faces rejected from {kept:03d} went to the pool)" if left else ""), entry)


def split(store: Store, number: int, face_ids: Sequence[int]) -> Outcome:
    """These faces leave `number` and open a new faceset; the two are never merged automatically."""
    _faceset(store, number)
    face_ids = sorted(set(face_ids))
    members = set(store.faces_in(face_ids, number))
    strangers = [face for face in face_ids if face not in members]
    if strangers:
        raise CorrectionRefused(f"faces {', '.join(map(str, strangers))} are not in faceset {number:03d}")
    if len(face_ids) == len(store.face_ids_of(number)):
        raise CorrectionRefused(f"that is every face of faceset {number:03d}: nothing would be left to split from")
    with store.transaction():
        new = store.new_identity("split")
        store.place_faces(face_ids, new, placed=None)
        said = f"split {len(face_ids)} faces from {number:03d} into the new faceset {new:03d}"
        entry = store.record_correction("split", said, {"from": number, "to": new, "faces": face_ids})
        store.keep_apart(number, new, entry)
    return Outcome(said, entry)


def move(store: Store, face_id: int, number: int) -> Outcome:
    """The face joins `number` by hand and stays there (must-link); a rejection from `number` is lifted."""
    face = _face(store, face_id)
    before, placed_before = face.identity, face.placed
    _faceset(store, number)
    if before == number:
        raise CorrectionRefused(f"face {face_id} is in faceset {number:03d} already")
    with store.transaction():
        lifted = store.unreject(face_id, number)
        store.place_faces([face_id], number, placed=True)
        said = f"moved face {face_id} " + (f"from {before:03d} " if before else "from the pool ") + f"to {number:03d}"
        entry = store.record_correction(
            "move",
            said,
            {"face": face_id, "to": number, "before": before, "placed_before": placed_before, "lifted": lifted},
        )
    return Outcome(said, entry)


def reject(store: Store, face_id: int) -> Outcome:
    """Not this person: the face leaves its faceset and never joins it again (it may join another)."""
    face = _face(store, face_id)
    before, placed_before = face.identity, face.placed
    if before is None:
        raise CorrectionRefused(f"face {face_id} is in no faceset")
    with store.transaction():
        store.place_faces([face_id], None, placed=False)
        said = f"rejected face {face_id} from {before:03d}"
        entry = store.record_correction(
            "reject", said, {"face": face_id, "from": before, "placed_before": placed_before}
        )
        store.reject(face_id, before, entry)
    return Outcome(said, entry)


def lock(store: Store, number: int, locked: bool = True) -> Outcome:
    summary = _faceset(store, number)
    if summary.locked == locked:
        raise CorrectionRefused(f"faceset {number:03d} is {'locked' if locked else 'not locked'} already")
    with store.transaction():
        store.set_locked(number, locked)
        said = f"{'locked' if locked else 'unlocked'} faceset {number:03d}"
        entry = store.record_correction("lock" if locked else "unlock", said, {"number": number, "locked": locked})
    return Outcome(said, entry)


def forget(store: Store, number: int, file_hashes: Callable[[Sequence[str]], list[str]]) -> Outcome:
    """The person asked not to be kept: faces, embeddings, crops and folder deleted, the number
    retired, and a block list with no embedding in it: each face's photo and box, and the hashes of
    the files facesyncd made of them (`file_hashes` of their crops: what an exported folder holds, so
    that importing it again brings nothing back)."""
    summary = _faceset(store, number)
    made = file_hashes([face.crop for face in store.faces_of_identity(number)])
    with store.transaction():
        said = f"forgot faceset {number:03d} ({summary.faces} faces)"
        entry = store.record_correction("forget", said, {"number": number})
        dropped = store.forget_identity(number, entry, made)
    return Outcome(said, entry, dropped, removed_folders=[number])


def names_restored(store: Store, correction_id: int) -> dict[int, str | None] | None:
    """The name undoing this correction gives back (a `name` correction's), for NAME.txt: it is
    written before the store changes (see actions.correct)."""
    entry = store.correction(correction_id)
    if entry is None or entry.kind != "name":
        return None
    return {entry.undo["number"]: entry.undo["before"]}


def undo(store: Store, correction_id: int) -> Outcome:
    """Revert one correction. Faces that have moved on since (by a later correction) stay where they
    are now; a later correction is never overwritten."""
    entry = store.correction(correction_id)
    if entry is None:
        raise CorrectionRefused(f"there is no correction {correction_id} (see `facesyncd history`)")
    if entry.undone_at is not None:
        raise CorrectionRefused(f"correction {correction_id} was undone already ({entry.undone_at})")
    data: dict[str, Any] = entry.undo
    note = ""
    with store.transaction():
        if entry.kind == "name":
            store.set_name(data["number"], data["before"])
        elif entry.kind in ("lock", "unlock"):
            store.set_locked(data["number"], not data["locked"])
        elif entry.kind == "merge":
            for number, faces in data["moved"].items():
                store.place_faces(store.faces_in(faces, data["kept"]), int(number), placed=None)
                store.retire(int(number), None)
            for number, faces in data["pooled"].items():
                store.place_faces(store.faces_in(faces, None), int(number), placed=None)
        elif entry.kind == "split":
            store.place_faces(store.faces_in(data["faces"], data["to"]), data["from"], placed=None)
            store.retire(data["to"], data["from"])
            store.stop_keeping_apart(data["from"], data["to"])
        elif entry.kind == "move":
            if store.faces_in([data["face"]], data["to"]):
                store.place_faces([data["face"]], data["before"], placed=data["placed_before"])
            if data["lifted"]:
                store.reject(data["face"], data["to"], correction_id)
        elif entry.kind == "reject":
            store.unreject(data["face"], data["from"])
            store.place_faces(store.faces_in([data["face"]], None), data["from"], placed=data["placed_before"])
        elif entry.kind == "forget":
            queued = store.unforget(correction_id)
            note = (
                f": its number stays retired and its faces were deleted; {queued} photos will be processed "
                f"again at the next sync (their faces come back as new ones), the rest at a re-import"
            )
        else:  # pragma: no cover - every kind recorded above has its undo
            raise CorrectionRefused(f"correction {correction_id} ({entry.kind}) cannot be undone")
        store.mark_undone(correction_id)
    return Outcome(f"undid {correction_id}: {entry.summary}{note}")
