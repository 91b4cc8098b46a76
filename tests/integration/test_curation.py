"""Review and correct: every correction is state, and a constraint that no re-run undoes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import TEST_PACK, Library, requires_shared, run_cli
from fake_immich import FakeImmich

pytestmark = requires_shared

ANGELINA_FIRST = [f"wild/angelina_jolie/img{n}.jpg" for n in (1, 10, 11, 2, 4)]
ANGELINA_LATER = [f"wild/angelina_jolie/img{n}.jpg" for n in (5, 6, 7)]


def _correction(output: str) -> int:
    """The id a correction command printed ("... (correction 3; ...")."""
    return int(output.split("(correction ")[1].split(";")[0])


def test_corrections_stick_through_a_full_re_run(fake: FakeImmich, tmp_path: Path) -> None:
    lib = Library(fake, tmp_path / "run")
    lib.add([*ANGELINA_FIRST, "wild/scarlett_johansson", "wild/katy_perry", "wild/matt_damon"])
    lib.cli("sync")
    angelina, scarlett = lib.number_of("angelina"), lib.number_of("scarlett")
    katy, matt = lib.number_of("katy"), lib.number_of("matt")
    assert len({angelina, scarlett, katy, matt}) == 4

    # name: in the store and in the export
    named = lib.cli("faceset", "name", str(angelina), "Angelina Jolie")
    folder = lib.facesets / f"faceset_{angelina:03d}"
    assert json.loads((folder / "faceset.json").read_text())["name"] == "Angelina Jolie"
    # reject (cannot-link), move (must-link), split (kept apart), merge, lock
    rejected = min(lib.faces(katy))
    before = lib.sets()[katy]["last_change"]
    lib.cli("face", "reject", str(rejected))
    assert lib.sets()[katy]["last_change"] > before, "a face leaving is a change of the faceset"
    moved = min(lib.faces(matt))
    lib.cli("face", "move", str(moved), str(angelina))
    split_off = sorted(lib.faces(scarlett))[:3]
    split = lib.cli("faceset", "split", str(scarlett), *map(str, split_off))
    new_scarlett = max(lib.sets())
    assert sorted(lib.faces(new_scarlett)) == split_off, split
    matt_faces = set(lib.faces(matt))
    lib.cli("faceset", "merge", str(katy), str(matt))
    lib.cli("faceset", "lock", str(angelina))
    angelina_faces = set(lib.faces(angelina))
    katy_faces = set(lib.faces(katy))
    assert rejected not in katy_faces and moved in angelina_faces
    assert lib.show(matt)["merged_into"] == katy
    assert "merged into" in lib.cli("faceset", "show", str(matt))

    # a full re-run: the index deleted, every unassigned face compared again as if new, the pool
    # clustered again, the identities' automatic merge, new photos of the locked person
    for path in lib.state.glob("index*"):
        path.unlink()
    lib.cli("rebuild-index")
    lib.sql("UPDATE faces SET matched_at = NULL WHERE identity IS NULL")
    lib.add(ANGELINA_LATER)
    lib.cli("sync")

    assert set(lib.faces(angelina)) == angelina_faces, "the locked faceset changed, or a correction was undone"
    assert set(lib.faces(katy)) == katy_faces, "the rejected face came back, or the hand merge was undone"
    assert katy_faces >= matt_faces - {moved}
    assert sorted(lib.faces(new_scarlett)) == split_off, "the split was merged back"
    assert lib.sets()[new_scarlett]["merged_into"] is None and lib.sets()[scarlett]["merged_into"] is None
    later = {face for number in lib.sets() for face, label in lib.faces(number).items() if label in ANGELINA_LATER}
    assert not later & set(lib.faces(angelina))
    assert lib.sets()[matt]["faces"] == 0
    assert json.loads((folder / "faceset.json").read_text())["name"] == "Angelina Jolie"

    # history lists every correction; undo reverts one
    history = json.loads(lib.cli("history", "--json"))
    assert [entry["kind"] for entry in history] == ["name", "reject", "move", "split", "merge", "lock"]
    lib.cli("undo", str(_correction(split)))
    assert lib.sets()[new_scarlett]["merged_into"] == scarlett
    assert set(split_off) <= set(lib.faces(scarlett))
    lib.cli("undo", str(_correction(named)))
    assert lib.sets()[angelina]["name"] is None
    assert "name" not in json.loads((folder / "faceset.json").read_text())
    again = lib.cli("undo", str(_correction(named)), ok=False)
    assert "undone already" in again
    assert "undone" in lib.cli("history")


def test_a_forgotten_person_never_comes_back(fake: FakeImmich, tmp_path: Path) -> None:
    lib = Library(fake, tmp_path / "run")
    lib.add(["wild/angelina_jolie", "wild/scarlett_johansson"])
    lib.cli("sync")
    scarlett = lib.number_of("scarlett")
    folder = lib.facesets / f"faceset_{scarlett:03d}"
    crops = {face["face_id"]: face for face in lib.show(scarlett)["face_list"]}
    kept_copy = tmp_path / "old-tree" / "faceset_050"  # the user's copy of the export, imported later
    kept_copy.parent.mkdir()
    shutil.copytree(folder, kept_copy)
    faces_before = lib.sql("SELECT COUNT(*) FROM faces")[0][0]
    numbers = set(lib.sets())

    refused = run_cli("--config", str(lib.config), "faceset", "forget", str(scarlett))
    assert refused.returncode == 1 and "--yes" in refused.stderr
    assert folder.is_dir()
    lib.cli("faceset", "forget", str(scarlett), "--yes")

    assert not folder.exists()
    assert lib.sql("SELECT COUNT(*) FROM faces")[0][0] == faces_before - len(crops)
    assert lib.sets()[scarlett]["forgotten"] and scarlett not in json.loads(lib.cli("faceset", "list", "--json"))
    assert not lib.sql(f"SELECT 1 FROM faces WHERE identity = {scarlett}")
    # no embedding kept anywhere: the block list holds hashes and boxes only
    assert [column[1] for column in lib.sql("PRAGMA table_info(forgotten)")] == [
        "sha256",
        "x1",
        "y1",
        "x2",
        "y2",
        "number",
        "correction",
    ]
    assert "forgotten" in lib.cli("faceset", "show", str(scarlett))

    lib.cli("rebuild-index")
    # the photos deleted in Immich (their files leave the store) and uploaded again
    for asset_id, label in list(lib.labels.items()):
        if "scarlett" in label:
            fake.delete(asset_id)
    lib.cli("sync", "--reconcile")
    lib.add(["wild/scarlett_johansson"])
    lib.cli("sync")
    assert lib.sql("SELECT COUNT(*) FROM faces")[0][0] == faces_before - len(crops)
    assert all("scarlett" not in label for number in lib.sets() for label in lib.faces(number).values())
    assert set(lib.sets()) == numbers, "a new faceset formed"

    # and the user's copy of the export, imported again, brings nothing back
    imported = lib.cli("import-facesets", "--merge", str(kept_copy.parent))
    assert f"{len(crops)} of forgotten people left out" in imported, imported
    assert lib.sql("SELECT COUNT(*) FROM faces")[0][0] == faces_before - len(crops)


def test_every_kind_of_correction_is_undone_to_where_it_was(fake: FakeImmich, tmp_path: Path) -> None:
    """Each kind (curation.KINDS) applied, then undone: the facesets are as before, and the record it
    left in the history has the keys databases of earlier versions hold."""
    from facesyncd.curation import KINDS

    lib = Library(fake, tmp_path / "run")
    lib.add([*ANGELINA_FIRST, "wild/katy_perry", "wild/matt_damon"])
    lib.cli("sync")
    angelina, katy, matt = lib.number_of("angelina"), lib.number_of("katy"), lib.number_of("matt")
    rejected_before = min(lib.faces(katy))
    lib.cli("face", "reject", str(rejected_before))  # so that a move below lifts a rejection

    def state() -> dict:
        """The live facesets (a split's new number stays retired after its undo: numbers are never
        given twice)."""
        sets = {
            number: (entry["name"], entry["locked"], entry["hidden"], sorted(lib.faces(number)))
            for number, entry in lib.sets().items()
            if entry["merged_into"] is None and not entry["forgotten"]
        }
        return {**sets, "kept apart": sorted(lib.sql("SELECT low, high FROM kept_apart"))}

    corrections = {
        "name": ["faceset", "name", str(angelina), "Angelina Jolie"],
        "lock": ["faceset", "lock", str(katy)],
        "hide": ["faceset", "hide", str(katy)],
        "apart": ["faceset", "apart", str(katy), str(matt)],
        "merge": ["faceset", "merge", str(katy), str(matt)],
        "split": ["faceset", "split", str(angelina), str(min(lib.faces(angelina)))],
        "move": ["face", "move", str(rejected_before), str(katy)],
        "reject": ["face", "reject", str(max(lib.faces(matt)))],
        "gather": ["face", "gather", *map(str, sorted(lib.faces(matt))[:2])],
        "put-away": ["face", "put-away", str(min(lib.faces(matt)))],
    }
    for kind, command in corrections.items():
        before = state()
        made = _correction(lib.cli(*command))
        assert state() != before, f"{kind} changed nothing"
        lib.cli("undo", str(made))
        assert state() == before, f"undoing {kind} did not bring the facesets back"
    lib.cli("faceset", "lock", str(katy))
    before = state()
    made = _correction(lib.cli("faceset", "unlock", str(katy)))
    lib.cli("undo", str(made))
    assert state() == before
    lib.cli("faceset", "hide", str(katy))
    before = state()
    made = _correction(lib.cli("faceset", "unhide", str(katy)))
    lib.cli("undo", str(made))
    assert state() == before
    assert lib.sql(f"SELECT COUNT(*) FROM rejections WHERE face_id = {rejected_before}") == [(1,)], (
        "undoing the move restored the rejection it lifted"
    )

    recorded = {kind: set(json.loads(undo)) for kind, undo in lib.sql("SELECT kind, undo FROM corrections")}
    assert recorded == {
        "name": {"number", "before"},
        "lock": {"number", "locked"},
        "unlock": {"number", "locked"},
        "hide": {"number", "hidden"},
        "apart": {"low", "high"},
        "gather": {"new", "before"},
        "put-away": {"before"},
        "unhide": {"number", "hidden"},
        "merge": {"kept", "moved", "pooled"},
        "split": {"from", "to", "faces"},
        "move": {"face", "to", "before", "placed_before", "lifted"},
        "reject": {"face", "from", "placed_before"},
    }
    assert set(recorded) | {"forget", "undo"} == set(KINDS)


def test_a_correction_costs_what_it_changes_not_the_library(
    fake: FakeImmich, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every correction loaded the face model, rebuilt the index and compared every folder (10-28 s a
    correction): now it writes the folders it touches, loads no model, and leaves the index to be
    brought in step (not rebuilt) by the next process that needs it."""
    import facesyncd.export as export

    lib = Library(fake, tmp_path / "run")
    lib.add(["wild/angelina_jolie", "wild/scarlett_johansson", "wild/katy_perry"])
    lib.cli("sync")
    angelina, scarlett, katy = (lib.number_of(person) for person in ("angelina", "scarlett", "katy"))
    configured = lib.config.read_text()
    # no model pack at all: a correction needs none
    lib.config.write_text(configured.replace(str(TEST_PACK), str(tmp_path / "no-pack-here")))
    written: list[int] = []  # the facesets whose folders were read, whole or from their marked faces
    whole, marked = export.write_faceset, export._marked_changes

    def counting_whole(facesets_dir: Path, crops_dir: Path, number: int, *rest: object) -> bool:
        written.append(number)
        return whole(facesets_dir, crops_dir, number, *rest)  # type: ignore[arg-type]

    def counting_marked(facesets_dir: Path, crops_dir: Path, number: int, *rest: object) -> object:
        written.append(number)
        return marked(facesets_dir, crops_dir, number, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(export, "write_faceset", counting_whole)
    monkeypatch.setattr(export, "_marked_changes", counting_marked)
    lib.cli("faceset", "name", str(angelina), "Angelina Jolie")
    lib.cli("face", "reject", str(min(lib.faces(katy))))
    assert sorted(set(written)) == sorted({angelina, katy})  # scarlett's folder is not even read
    split_off = sorted(lib.faces(scarlett))[:2]
    lib.cli("faceset", "split", str(scarlett), *map(str, split_off))
    new = max(lib.sets())
    assert sorted(lib.faces(new)) == split_off
    assert (lib.facesets / f"faceset_{new:03d}").is_dir()
    # the index, left behind by the corrections, is brought in step by the next sync from the faces
    # they marked (not rebuilt, nor compared with every face)
    lib.config.write_text(configured)
    synced = lib.cli("sync")
    assert "faces marked since it was written" in synced and "rebuilt from the database" not in synced
    every = dict(lib.sql("SELECT id, identity FROM faces WHERE identity IS NOT NULL"))
    assert len(every) and lib.sets()[new]["faces"] == len(split_off)


def test_a_hidden_faceset_keeps_taking_its_person_and_is_never_exported(fake: FakeImmich, tmp_path: Path) -> None:
    """Forget was the only way to put a person away, and it keeps no embedding: 2 new photos of a
    forgotten person opened a new faceset. A hidden faceset keeps its faces and takes the new ones."""
    lib = Library(fake, tmp_path / "run")
    lib.add([*ANGELINA_FIRST, "wild/katy_perry"])
    lib.cli("sync")
    angelina = lib.number_of("angelina")
    folder = lib.facesets / f"faceset_{angelina:03d}"
    (folder / "notes.txt").write_text("mine")  # a file of the user's stays
    before = set(lib.faces(angelina))
    hidden = lib.cli("faceset", "hide", str(angelina))
    assert f"hid faceset {angelina:03d}" in hidden
    assert not exported_faces(folder) and (folder / "notes.txt").read_text() == "mine"
    assert lib.sets()[angelina]["hidden"] and f"{angelina:03d}" in lib.cli("faceset", "list")
    assert "hidden" in lib.cli("faceset", "list") and "hidden:" in lib.cli("faceset", "show", str(angelina))
    lib.add(ANGELINA_LATER)
    lib.cli("sync")
    grown = set(lib.faces(angelina))
    assert grown > before, "the hidden faceset took its person's new photos"
    assert all(number == angelina or "angelina" not in " ".join(lib.faces(number).values()) for number in lib.sets())
    assert not exported_faces(folder), "a hidden faceset was exported"
    assert "already" in lib.cli("faceset", "hide", str(angelina), ok=False)
    shown = lib.cli("faceset", "unhide", str(angelina))
    assert f"showed faceset {angelina:03d}" in shown and exported_faces(folder) == grown
    lib.cli("undo", str(_correction(shown)))  # hidden again
    assert not exported_faces(folder) and lib.sets()[angelina]["hidden"]


def exported_faces(folder: Path) -> set[int]:
    """The faces facesyncd's manifest in a folder lists (none when it wrote no manifest there)."""
    manifest = folder / "faceset.json"
    return {face["face_id"] for face in json.loads(manifest.read_text())["faces"]} if manifest.exists() else set()


def test_in_the_crops_layout_a_name_file_is_the_users_and_keeps_its_folder(fake: FakeImmich, tmp_path: Path) -> None:
    """facesyncd writes no NAME.txt in the crops layout: one there is the user's own file, kept when the
    folder's faces go (the swap layout's NAME.txt is facesyncd's placeholder and is not)."""
    lib = Library(fake, tmp_path / "run")
    lib.add(["wild/katy_perry", "wild/matt_damon"])
    lib.cli("sync")
    katy, matt = lib.number_of("katy"), lib.number_of("matt")
    folder = lib.facesets / f"faceset_{matt:03d}"
    (folder / "NAME.txt").write_text("my own words\n")
    lib.cli("faceset", "merge", str(katy), str(matt))
    assert (folder / "NAME.txt").read_text() == "my own words\n"
    assert not exported_faces(folder)
