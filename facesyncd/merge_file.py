"""The last look for merges, kept between processes (MERGE_FILE in the state folder): the centres it
compared, with what else decided it. A process's first look compares every pair of identities (0.13
CPU-s over 3,000 facesets, growing with their square, in every `sync` of its own); with the file, only
the identities whose centres differ from those it holds, and those of the merges the store refused.

A pair of identities whose centres are those of the file, under the same merge distance, locks and
pairs kept apart, is as that look found it: too far apart, or kept apart (two that share a photo
still do: a face that joins or leaves moves a centre). So a file of any age is right to use; an older
one only names more identities to look at. It is a cache: missing, unreadable or of another key, it
is passed over and every pair compared."""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping
from pathlib import Path
from zipfile import BadZipFile

import numpy as np
from numpy.typing import NDArray

from .atomic import remove_leftovers, write_atomic

log = logging.getLogger(__name__)

MERGE_FILE = "merges.npz"
_FORMAT = 1
# A centre is the file's while every component is within this of it: one made again from the same
# faces in another order (a load sums an identity's rows at once, a running process face by face)
# differs in its last bits; a face joining or leaving an identity of 5,000 moves it by far more.
_SAME_CENTRE = 1e-6
# The file is written again once this many identities (and this share of them) moved since it was.
_WRITE_PAST = 64
_WRITE_SHARE = 0.05

Key = tuple[float, frozenset[int], frozenset[frozenset[int]]]  # merge distance, locked, kept apart


def _key_text(key: Key) -> str:
    distance, locked, apart = key
    return json.dumps([distance, sorted(locked), sorted(sorted(pair) for pair in apart)])


def _by_number(centres: Mapping[int, NDArray[np.float32]]) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """The identities' numbers (ascending) and their centres as rows, in that order."""
    numbers = np.asarray(sorted(centres), np.int64)
    if not len(numbers):
        return numbers, np.zeros((0, 0), np.float32)
    return numbers, np.stack([centres[int(number)] for number in numbers]).astype(np.float32, copy=False)


class MergeFile:
    """Read and write the last look's file; counts what moved since it was written (`unsaved`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.unsaved: set[int] | None = None  # identities looked at since the file was written; None: no file of ours
        self.again: set[int] = set()  # the file's identities to look at again

    def moved(self, key: Key, centres: Mapping[int, NDArray[np.float32]]) -> set[int] | None:
        """The identities of `centres` to look at again: those the file lacks or holds elsewhere, and
        its `again`; None (every pair) without a file of this key."""
        try:
            with np.load(self.path) as data:
                about = json.loads(str(data["about"]))
                if about.get("format") != _FORMAT or about.get("key") != _key_text(key):
                    return None
                numbers, saved = data["numbers"], data["centres"]
                again = {int(number) for number in about["again"]}
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, EOFError, BadZipFile) as problem:
            log.warning("the last look for merges in %s is unreadable (%s): every pair is compared", self.path, problem)
            return None
        if not centres:
            return set()
        current, matrix = _by_number(centres)
        if saved.ndim != 2 or saved.shape[1] != matrix.shape[1] or len(saved) != len(numbers) or not len(numbers):
            return None  # another model's centres, or none
        at = np.searchsorted(numbers, current)
        known = (at < len(numbers)) & (numbers[np.minimum(at, len(numbers) - 1)] == current)
        same = np.zeros(len(current), bool)
        same[known] = (np.abs(saved[at[known]] - matrix[known]) <= _SAME_CENTRE).all(axis=1)
        self.unsaved, self.again = set(), again
        return {int(number) for number in current[~same]} | (again & set(centres))

    def looked(
        self, key: Key, centres: Mapping[int, NDArray[np.float32]], among: Collection[int] | None, again: set[int]
    ) -> None:
        """A look ended with these `centres` (its merges made), having compared `among` with all
        (None: every pair); `again`: the identities to look at again though their centres stay (of a
        merge the store refused). The file is written after a look at every pair, when `again` holds
        one the file does not (nothing else would name it to a new process), and once what moved
        since the last write passes _WRITE_PAST and _WRITE_SHARE."""
        if among is not None and self.unsaved is not None:
            self.unsaved |= set(among)
            if again <= self.again and len(self.unsaved) <= max(_WRITE_PAST, _WRITE_SHARE * len(centres)):
                return
        numbers, matrix = _by_number(centres)
        about = {"format": _FORMAT, "key": _key_text(key), "again": sorted(again)}

        def write(path: Path) -> None:
            with path.open("wb") as output:
                np.savez(output, about=np.array(json.dumps(about)), numbers=numbers, centres=matrix)

        try:
            remove_leftovers(self.path.parent, self.path.name)  # of a process killed while writing it
            write_atomic(self.path, write, durable=False)
        except OSError as problem:
            log.warning("cannot write the last look for merges %s (%s): a new process compares all", self.path, problem)
            self.unsaved = None
            return
        self.unsaved, self.again = set(), set(again)
