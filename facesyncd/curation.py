"""Review and correct: the user's corrections, each one undoable, each one a constraint.

A correction is state in the store, never an edit that a re-run could undo: assignment, the
clustering of the pool, the automatic merge of identities and a rebuilt index all read the
constraints it leaves (store/corrections.py): a rejected face never rejoins the identity it was
rejected from (cannot-link), a moved face stays where it was put (must-link), a split pair is never
merged again automatically, a locked faceset changes only by hand, a forgotten person's faces are
never stored again.

Every kind of correction is one class here, in KINDS: its parameters (typed), its help (the CLI's
--help, the page's wording), how a form of the review page fills it, what applying it does in one
transaction, and the record it leaves in the history: a typed Record that knows how to revert it.
The CLI, the review page and `undo` read KINDS; nothing else names a kind. The folders are brought
in line by the caller (actions.correct), or by a running daemon at its next cycle.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from .errors import FacesyncError
from .models import Dropped, FaceDetail, FacesetSummary
from .store import Store

# crop names -> hashes of the files facesyncd made of them (what `forget` blocks from re-import)
FileHashes = Callable[[Sequence[str]], list[str]]


class CorrectionRefused(FacesyncError):
    """The correction names something that is not there, or cannot be made as asked."""


@dataclass
class Outcome:
    """What a correction did: a line for the user, and what to tidy outside the store."""

    message: str
    correction: int | None = None
    dropped: Dropped = field(default_factory=Dropped)
    removed_folders: list[int] = field(default_factory=list)  # facesets whose folders must go entirely
    touched: frozenset[int] = frozenset()  # the facesets whose folders it changes (only these are written)


@dataclass(frozen=True)
class Form:
    """A review page form's fields: one value per name, and the names sent several times (ticked
    faces). A missing field is KeyError, a number that is not one ValueError: the page says so."""

    values: Mapping[str, str]
    lists: Mapping[str, list[str]]

    def number(self, name: str) -> int:
        return int(self.values[name])

    def text(self, name: str) -> str:
        return self.values.get(name, "")

    def numbers(self, name: str) -> list[int]:
        """Numbers ticked (a list) or typed into one field ("12 30", "12, 30")."""
        given = self.lists.get(name) or [self.values.get(name, "")]
        return [int(part) for value in given for part in value.replace(",", " ").split()]


class Record(ABC):
    """What a correction left in the history: enough to revert it. Stored as JSON (its own keys:
    databases written by earlier versions hold them)."""

    @classmethod
    @abstractmethod
    def read(cls, data: dict[str, Any]) -> Self: ...

    @abstractmethod
    def written(self) -> dict[str, Any]: ...

    @abstractmethod
    def revert(self, store: Store, correction_id: int) -> str:
        """Undo it (inside the undo's transaction); returns a note for the user, or ""."""

    @abstractmethod
    def numbers(self) -> frozenset[int]:
        """The facesets it (and its revert) changes: only their folders are written again."""

    def names_restored(self) -> dict[int, str | None] | None:
        """The names reverting it gives back (for NAME.txt, written before the store changes)."""
        return None


class Correction(ABC):
    """One correction the user asks for."""

    kind: ClassVar[str]
    help: ClassVar[str]  # the command's --help and example
    record: ClassVar[type[Record] | None]  # what it leaves in the history (None: nothing to undo)
    confirm: ClassVar[str | None] = None  # the page asks for this box to be ticked first
    leaves_faceset: ClassVar[bool] = False  # the faceset's page is gone afterwards: back to the grid

    @classmethod
    @abstractmethod
    def from_form(cls, form: Form) -> Self: ...

    @abstractmethod
    def apply(self, store: Store, file_hashes: FileHashes) -> Outcome:
        """Make it, in one transaction, with its record in the history."""

    def names(self, store: Store) -> dict[int, str | None] | None:
        """Names it gives facesets, written to NAME.txt before the store changes (the swap layout
        reads NAME.txt back as the user's word)."""
        return None


# -- lookups --------------------------------------------------------------------------------------


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
        where = "put away" if face.held == PUT_AWAY else f"set aside by an imported tree ({face.held}/)"
        raise CorrectionRefused(f"face {face_id} was {where}")
    return face


def _by_number(data: Mapping[str, list[int]]) -> dict[int, list[int]]:
    return {int(number): list(faces) for number, faces in data.items()}


def _by_text(data: Mapping[int, list[int]]) -> dict[str, list[int]]:
    return {str(number): faces for number, faces in data.items()}


# -- the kinds ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NameRecord(Record):
    number: int
    before: str | None

    @classmethod
    def read(cls, data: dict[str, Any]) -> Self:
        return cls(int(data["number"]), data["before"])

    def written(self) -> dict[str, Any]:
        return {"number": self.number, "before": self.before}

    def revert(self, store: Store, correction_id: int) -> str:
        store.set_name(self.number, self.before)
        return ""

    def names_restored(self) -> dict[int, str | None] | None:
        return {self.number: self.before}

    def numbers(self) -> frozenset[int]:
        return frozenset({self.number})


@dataclass(frozen=True)
class Name(Correction):
    """Name a faceset (also written to NAME.txt, manifest.json / faceset.json).

    Example: facesyncd faceset name 7 "Barack Obama"
    """

    kind = "name"
    help = __doc__
    record = NameRecord
    number: int
    name: str | None

    @classmethod
    def from_form(cls, form: Form) -> Self:
        return cls(form.number("number"), form.text("name"))

    def given(self) -> str | None:
        return (self.name or "").strip() or None

    def names(self, store: Store) -> dict[int, str | None] | None:
        return {self.number: self.given()}

    def apply(self, store: Store, file_hashes: FileHashes) -> Outcome:
        summary = _faceset(store, self.number)
        new_name = self.given()
        if new_name is not None and ("\n" in new_name or len(new_name) > 200):
            raise CorrectionRefused("a name is one line of at most 200 characters")
        number = self.number
        with store.transaction():
            store.set_name(number, new_name)
            said = (
                f"named faceset {number:03d} {new_name!r}" if new_name else f"removed the name of faceset {number:03d}"
            )
            record = NameRecord(number, summary.name)
            entry = store.record_correction(self.kind, said, record.written())
        return Outcome(said, entry, touched=record.numbers())


@dataclass(frozen=True)
class MergeRecord(Record):
    kept: int
    moved: dict[int, list[int]]  # faceset merged in -> its faces that joined `kept`
    pooled: dict[int, list[int]]  # faceset merged in -> its faces rejected from `kept` (to the pool)

    @classmethod
    def read(cls, data: dict[str, Any]) -> Self:
        return cls(int(data["kept"]), _by_number(data["moved"]), _by_number(data["pooled"]))

    def written(self) -> dict[str, Any]:
        return {"kept": self.kept, "moved": _by_text(self.moved), "pooled": _by_text(self.pooled)}

    def revert(self, store: Store, correction_id: int) -> str:
        for number, faces in self.moved.items():
            store.place_faces(store.faces_in(faces, self.kept), number, placed=None)
            store.retire(number, None)
        for number, faces in self.pooled.items():
            store.place_faces(store.faces_in(faces, None), number, placed=None)
        return ""

    def numbers(self) -> frozenset[int]:
        return frozenset({self.kept, *self.moved, *self.pooled})


@dataclass(frozen=True)
class Merge(Correction):
    """Merge facesets into one: the others' faces join NUMBER; their numbers are never given again.
    A face rejected from NUMBER does not come along: it goes to the pool.

    Example: facesyncd faceset merge 7 12 30
    """

    kind = "merge"
    help = __doc__
    record = MergeRecord
    number: int
    others: tuple[int, ...]

    @classmethod
    def from_form(cls, form: Form) -> Self:
        return cls(form.number("number"), tuple(form.numbers("others")))

    def apply(self, store: Store, file_hashes: FileHashes) -> Outcome:
        kept = self.number
        _faceset(store, kept)
        others = sorted(set(self.others) - {kept})
        if not others:
            raise CorrectionRefused("name at least one other faceset to merge into it")
        for number in others:
            _faceset(store, number)
        with store.transaction():
            moved: dict[int, list[int]] = {}
            pooled: dict[int, list[int]] = {}
            for number in others:
                faces = store.face_ids_of(number)
                refused = store.rejections_of(faces)
                pooled[number] = [face for face in faces if kept in refused.get(face, set())]
                moved[number] = [face for face in faces if face not in pooled[number]]
                store.place_faces(moved[number], kept, placed=None)
                store.place_faces(pooled[number], None, placed=None)
                store.retire(number, kept)
            listing = ", ".join(f"{number:03d}" for number in others)
            said = f"merged {listing} into {kept:03d}"
            record = MergeRecord(kept, moved, pooled)
            entry = store.record_correction(self.kind, said, record.written())
        left = sum(len(faces) for faces in pooled.values())
        said += f" ({left} faces rejected from {kept:03d} went to the pool)" if left else ""
        return Outcome(said, entry, touched=record.numbers())


@dataclass(frozen=True)
class SplitRecord(Record):
    source: int
    new: int
    faces: list[int]

    @classmethod
    def read(cls, data: dict[str, Any]) -> Self:
        return cls(int(data["from"]), int(data["to"]), list(data["faces"]))

    def written(self) -> dict[str, Any]:
        return {"from": self.source, "to": self.new, "faces": self.faces}

    def revert(self, store: Store, correction_id: int) -> str:
        store.place_faces(store.faces_in(self.faces, self.new), self.source, placed=None)
        store.retire(self.new, self.source)
        store.stop_keeping_apart(self.source, self.new)
        return ""

    def numbers(self) -> frozenset[int]:
        return frozenset({self.source, self.new})


@dataclass(frozen=True)
class Split(Correction):
    """Move these faces out of NUMBER into a new faceset; the two are never merged automatically.

    Example: facesyncd faceset split 7 417 418
    """

    kind = "split"
    help = __doc__
    record = SplitRecord
    number: int
    faces: tuple[int, ...]

    @classmethod
    def from_form(cls, form: Form) -> Self:
        return cls(form.number("number"), tuple(form.numbers("face")))

    def apply(self, store: Store, file_hashes: FileHashes) -> Outcome:
        number = self.number
        _faceset(store, number)
        face_ids = sorted(set(self.faces))
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
            record = SplitRecord(number, new, face_ids)
            entry = store.record_correction(self.kind, said, record.written())
            store.keep_apart(number, new, entry)
        return Outcome(said, entry, touched=record.numbers())


@dataclass(frozen=True)
class MoveRecord(Record):
    face: int
    to: int
    before: int | None
    placed_before: bool
    lifted: bool  # a rejection from `to` was lifted by the move

    @classmethod
    def read(cls, data: dict[str, Any]) -> Self:
        before = None if data["before"] is None else int(data["before"])
        return cls(int(data["face"]), int(data["to"]), before, bool(data["placed_before"]), bool(data["lifted"]))

    def written(self) -> dict[str, Any]:
        return {
            "face": self.face,
            "to": self.to,
            "before": self.before,
            "placed_before": self.placed_before,
            "lifted": self.lifted,
        }

    def revert(self, store: Store, correction_id: int) -> str:
        if store.faces_in([self.face], self.to):
            store.place_faces([self.face], self.before, placed=self.placed_before)
        if self.lifted:
            store.reject(self.face, self.to, correction_id)
        return ""

    def numbers(self) -> frozenset[int]:
        return frozenset({self.to} if self.before is None else {self.to, self.before})


@dataclass(frozen=True)
class Move(Correction):
    """Put a face in a faceset by hand; it stays there (a rejection from that faceset is lifted).

    Example: facesyncd face move 417 7
    """

    kind = "move"
    help = __doc__
    record = MoveRecord
    face: int
    number: int

    @classmethod
    def from_form(cls, form: Form) -> Self:
        return cls(form.number("face"), form.number("to"))

    def apply(self, store: Store, file_hashes: FileHashes) -> Outcome:
        face_id, number = self.face, self.number
        face = _face(store, face_id)
        before, placed_before = face.identity, face.placed
        _faceset(store, number)
        if before == number:
            raise CorrectionRefused(f"face {face_id} is in faceset {number:03d} already")
        with store.transaction():
            lifted = store.unreject(face_id, number)
            store.place_faces([face_id], number, placed=True)
            origin = f"from {before:03d}" if before else "from the pool"
            said = f"moved face {face_id} {origin} to {number:03d}"
            record = MoveRecord(face_id, number, before, placed_before, lifted)
            entry = store.record_correction(self.kind, said, record.written())
        return Outcome(said, entry, touched=record.numbers())


@dataclass(frozen=True)
class RejectRecord(Record):
    face: int
    source: int
    placed_before: bool

    @classmethod
    def read(cls, data: dict[str, Any]) -> Self:
        return cls(int(data["face"]), int(data["from"]), bool(data["placed_before"]))

    def written(self) -> dict[str, Any]:
        return {"face": self.face, "from": self.source, "placed_before": self.placed_before}

    def revert(self, store: Store, correction_id: int) -> str:
        store.unreject(self.face, self.source)
        store.place_faces(store.faces_in([self.face], None), self.source, placed=self.placed_before)
        return ""

    def numbers(self) -> frozenset[int]:
        return frozenset({self.source})


@dataclass(frozen=True)
class Reject(Correction):
    """Not this person: the face leaves its faceset and never joins it again (it may join another).

    Example: facesyncd face reject 417
    """

    kind = "reject"
    help = __doc__
    record = RejectRecord
    face: int

    @classmethod
    def from_form(cls, form: Form) -> Self:
        return cls(form.number("face"))

    def apply(self, store: Store, file_hashes: FileHashes) -> Outcome:
        face = _face(store, self.face)
        before, placed_before = face.identity, face.placed
        if before is None:
            raise CorrectionRefused(f"face {self.face} is in no faceset")
        with store.transaction():
            store.place_faces([self.face], None, placed=False)
            said = f"rejected face {self.face} from {before:03d}"
            record = RejectRecord(self.face, before, placed_before)
            entry = store.record_correction(self.kind, said, record.written())
            store.reject(self.face, before, entry)
        return Outcome(said, entry, touched=record.numbers())


@dataclass(frozen=True)
class SwitchRecord(Record):
    """A faceset's setting that a correction turned on or off (locked, hidden): the undo turns it
    back. Stored as {"number", KEY: what the correction set}."""

    number: int
    on: bool
    key: ClassVar[str]

    @classmethod
    def read(cls, data: dict[str, Any]) -> Self:
        return cls(int(data["number"]), bool(data[cls.key]))

    def written(self) -> dict[str, Any]:
        return {"number": self.number, self.key: self.on}

    def revert(self, store: Store, correction_id: int) -> str:
        self.switch(store, self.number, not self.on)
        return ""

    def numbers(self) -> frozenset[int]:
        return frozenset({self.number})

    @staticmethod
    @abstractmethod
    def switch(store: Store, number: int, on: bool) -> None: ...

    @staticmethod
    @abstractmethod
    def state(summary: FacesetSummary) -> bool: ...


@dataclass(frozen=True)
class LockRecord(SwitchRecord):
    key = "locked"

    @staticmethod
    def switch(store: Store, number: int, on: bool) -> None:
        store.set_locked(number, on)

    @staticmethod
    def state(summary: FacesetSummary) -> bool:
        return summary.locked


@dataclass(frozen=True)
class HideRecord(SwitchRecord):
    key = "hidden"

    @staticmethod
    def switch(store: Store, number: int, on: bool) -> None:
        store.set_hidden(number, on)

    @staticmethod
    def state(summary: FacesetSummary) -> bool:
        return summary.hidden


@dataclass(frozen=True)
class Switch(Correction):
    """Turn a faceset's setting on or off (see SwitchRecord); `words`: its state, and what turning it
    on and off is called."""

    switch_record: ClassVar[type[SwitchRecord]]
    on: ClassVar[bool]
    words: ClassVar[tuple[str, str, str]]
    number: int

    @classmethod
    def from_form(cls, form: Form) -> Self:
        return cls(form.number("number"))

    def apply(self, store: Store, file_hashes: FileHashes) -> Outcome:
        state, turned_on, turned_off = self.words
        summary = _faceset(store, self.number)
        if self.switch_record.state(summary) == self.on:
            raise CorrectionRefused(f"faceset {self.number:03d} is {'' if self.on else 'not '}{state} already")
        with store.transaction():
            self.switch_record.switch(store, self.number, self.on)
            said = f"{turned_on if self.on else turned_off} faceset {self.number:03d}"
            record = self.switch_record(self.number, self.on)
            entry = store.record_correction(self.kind, said, record.written())
        return Outcome(said, entry, touched=record.numbers())


@dataclass(frozen=True)
class Lock(Switch):
    """Lock a faceset: it takes no new faces automatically and is never merged automatically.

    Example: facesyncd faceset lock 7
    """

    kind = "lock"
    help = __doc__
    record = LockRecord
    switch_record = LockRecord
    on = True
    words = ("locked", "locked", "unlocked")


@dataclass(frozen=True)
class Unlock(Lock):
    """Let a locked faceset take new faces automatically again.

    Example: facesyncd faceset unlock 7
    """

    kind = "unlock"
    help = __doc__
    on = False


@dataclass(frozen=True)
class Hide(Switch):
    """Hide a faceset: it keeps its faces and keeps taking its person's new ones (so they form no new
    faceset), but it is never exported and leaves the review page's grid. Nothing is deleted: to
    erase a person, use `faceset forget`.

    Example: facesyncd faceset hide 7
    """

    kind = "hide"
    help = __doc__
    record = HideRecord
    switch_record = HideRecord
    on = True
    words = ("hidden", "hid", "showed")


@dataclass(frozen=True)
class Unhide(Hide):
    """Show a hidden faceset again: exported, and on the grid.

    Example: facesyncd faceset unhide 7
    """

    kind = "unhide"
    help = __doc__
    on = False


def _faces(store: Store, face_ids: Sequence[int]) -> list[FaceDetail]:
    faces = [_face(store, face_id) for face_id in sorted(set(face_ids))]
    if not faces:
        raise CorrectionRefused("tick at least one face")
    return faces


@dataclass(frozen=True)
class GatherRecord(Record):
    new: int
    before: dict[int, int | None]  # face -> the faceset it was in (None: the pool)

    @classmethod
    def read(cls, data: dict[str, Any]) -> Self:
        return cls(int(data["new"]), {int(face): number for face, number in data["before"].items()})

    def written(self) -> dict[str, Any]:
        return {"new": self.new, "before": {str(face): number for face, number in self.before.items()}}

    def revert(self, store: Store, correction_id: int) -> str:
        for face in store.faces_in(list(self.before), self.new):
            store.place_faces([face], self.before[face], placed=False)
        came_from = sorted({number for number in self.before.values() if number is not None})
        if came_from:  # retired (never given again), pointing where its faces went
            store.retire(self.new, came_from[0])
        return ""

    def numbers(self) -> frozenset[int]:
        return frozenset({self.new, *(number for number in self.before.values() if number is not None)})


@dataclass(frozen=True)
class Gather(Correction):
    """Make a new faceset of these faces (from the pool or from facesets): one person, put together by
    hand; they stay together (must-link).

    Example: facesyncd face gather 417 418 502
    """

    kind = "gather"
    help = __doc__
    record = GatherRecord
    faces: tuple[int, ...]

    @classmethod
    def from_form(cls, form: Form) -> Self:
        return cls(tuple(form.numbers("face")))

    def apply(self, store: Store, file_hashes: FileHashes) -> Outcome:
        faces = _faces(store, self.faces)
        with store.transaction():
            new = store.new_identity("gather")
            store.place_faces([face.face_id for face in faces], new, placed=True)
            said = f"made the new faceset {new:03d} of {len(faces)} faces"
            record = GatherRecord(new, {face.face_id: face.identity for face in faces})
            entry = store.record_correction(self.kind, said, record.written())
        return Outcome(said, entry, touched=record.numbers())


@dataclass(frozen=True)
class PutAwayRecord(Record):
    before: dict[int, int | None]  # face -> the faceset it was in (None: the pool)

    @classmethod
    def read(cls, data: dict[str, Any]) -> Self:
        return cls({int(face): number for face, number in data["before"].items()})

    def written(self) -> dict[str, Any]:
        return {"before": {str(face): number for face, number in self.before.items()}}

    def revert(self, store: Store, correction_id: int) -> str:
        store.set_held(list(self.before), None)
        for face, number in self.before.items():
            if number is not None:
                store.place_faces([face], number, placed=None)
        return ""

    def numbers(self) -> frozenset[int]:
        return frozenset(number for number in self.before.values() if number is not None)


PUT_AWAY = "put away"  # faces.held for faces the user put away: strangers, never a faceset


@dataclass(frozen=True)
class PutAway(Correction):
    """Put these faces away: strangers, background people. They leave their faceset or the pool and
    never form or join a faceset (undo brings them back).

    Example: facesyncd face put-away 417 418
    """

    kind = "put-away"
    help = __doc__
    record = PutAwayRecord
    faces: tuple[int, ...]

    @classmethod
    def from_form(cls, form: Form) -> Self:
        return cls(tuple(form.numbers("face")))

    def apply(self, store: Store, file_hashes: FileHashes) -> Outcome:
        faces = _faces(store, self.faces)
        with store.transaction():
            store.set_held([face.face_id for face in faces], PUT_AWAY)
            said = f"put away {len(faces)} faces"
            record = PutAwayRecord({face.face_id: face.identity for face in faces})
            entry = store.record_correction(self.kind, said, record.written())
        return Outcome(said, entry, touched=record.numbers())


@dataclass(frozen=True)
class ApartRecord(Record):
    low: int
    high: int

    @classmethod
    def read(cls, data: dict[str, Any]) -> Self:
        return cls(int(data["low"]), int(data["high"]))

    def written(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high}

    def revert(self, store: Store, correction_id: int) -> str:
        store.stop_keeping_apart(self.low, self.high)
        return ""

    def numbers(self) -> frozenset[int]:
        return frozenset({self.low, self.high})


@dataclass(frozen=True)
class Apart(Correction):
    """Not the same person: two facesets are never suggested as one again and never merged
    automatically (a "same person?" suggestion declined).

    Example: facesyncd faceset apart 7 12
    """

    kind = "apart"
    help = __doc__
    record = ApartRecord
    number: int
    other: int

    @classmethod
    def from_form(cls, form: Form) -> Self:
        return cls(form.number("number"), form.number("other"))

    def apply(self, store: Store, file_hashes: FileHashes) -> Outcome:
        low, high = sorted((self.number, self.other))
        if low == high:
            raise CorrectionRefused("name two different facesets")
        _faceset(store, low)
        _faceset(store, high)
        with store.transaction():
            said = f"kept {low:03d} and {high:03d} apart: not the same person"
            record = ApartRecord(low, high)
            entry = store.record_correction(self.kind, said, record.written())
            store.keep_apart(low, high, entry)
        return Outcome(said, entry, touched=frozenset())


@dataclass(frozen=True)
class ForgetRecord(Record):
    number: int

    @classmethod
    def read(cls, data: dict[str, Any]) -> Self:
        return cls(int(data["number"]))

    def written(self) -> dict[str, Any]:
        return {"number": self.number}

    def revert(self, store: Store, correction_id: int) -> str:
        queued = store.unforget(correction_id)
        return (
            f": its number stays retired and its faces were deleted; {queued} photos will be processed "
            f"again at the next sync (their faces come back as new ones), the rest at a re-import"
        )

    def numbers(self) -> frozenset[int]:
        return frozenset({self.number})


@dataclass(frozen=True)
class Forget(Correction):
    """Forget a person: the faceset's faces, crops and folder are deleted, its number retired, and the
    same faces are never stored again (a block list of file hashes and boxes, no embeddings).

    Example: facesyncd faceset forget 7 --yes
    """

    kind = "forget"
    help = __doc__
    record = ForgetRecord
    confirm = "tick the box to confirm: forgetting deletes"
    leaves_faceset = True
    number: int

    @classmethod
    def from_form(cls, form: Form) -> Self:
        return cls(form.number("number"))

    def apply(self, store: Store, file_hashes: FileHashes) -> Outcome:
        """The person asked not to be kept: faces, embeddings, crops and folder deleted, the number
        retired, and a block list with no embedding in it: each face's photo and box, and the hashes
        of the files facesyncd made of them (`file_hashes` of their crops: what an exported folder
        holds, so that importing it again brings nothing back)."""
        summary = _faceset(store, self.number)
        made = file_hashes([face.crop for face in store.faces_of_identity(self.number)])
        with store.transaction():
            said = f"forgot faceset {self.number:03d} ({summary.faces} faces)"
            record = ForgetRecord(self.number)
            entry = store.record_correction(self.kind, said, record.written())
            dropped = store.forget_identity(self.number, entry, made)
        return Outcome(said, entry, dropped, removed_folders=[self.number], touched=record.numbers())


@dataclass(frozen=True)
class Undo(Correction):
    """Undo one correction. Faces that have moved on since (by a later correction) stay where they
    are now; a later correction is never overwritten.

    Example: facesyncd undo 12
    """

    kind = "undo"
    help = __doc__
    record = None
    correction: int

    @classmethod
    def from_form(cls, form: Form) -> Self:
        return cls(form.number("correction"))

    def _record(self, store: Store) -> tuple[str, Record]:
        entry = store.correction(self.correction)
        if entry is None:
            raise CorrectionRefused(f"there is no correction {self.correction} (see `facesyncd history`)")
        if entry.undone_at is not None:
            raise CorrectionRefused(f"correction {self.correction} was undone already ({entry.undone_at})")
        kind = KINDS.get(entry.kind)
        if kind is None or kind.record is None:
            raise CorrectionRefused(f"correction {self.correction} ({entry.kind}) cannot be undone")
        return entry.summary, kind.record.read(entry.undo)

    def names(self, store: Store) -> dict[int, str | None] | None:
        try:
            return self._record(store)[1].names_restored()
        except CorrectionRefused:
            return None  # apply says why

    def apply(self, store: Store, file_hashes: FileHashes) -> Outcome:
        summary, record = self._record(store)
        with store.transaction():
            note = record.revert(store, self.correction)
            store.mark_undone(self.correction)
        return Outcome(f"undid {self.correction}: {summary}{note}", touched=record.numbers())


KINDS: dict[str, type[Correction]] = {
    kind.kind: kind
    for kind in (Name, Merge, Split, Move, Reject, Gather, PutAway, Lock, Unlock, Hide, Unhide, Apart, Forget, Undo)
}
