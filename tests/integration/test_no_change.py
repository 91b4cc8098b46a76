"""A cycle with nothing new costs its two requests, not the library: no model loaded, no clustering of
an unchanged pool, no folder compared or written (a sync with nothing new took 89 s of CPU at 100,000
faces). What does change still reaches the folders at the next cycle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import PHOTOS, add_photos, requires_shared, run_cli, write_config
from facesyncd.sidecar import INDEX_FILE
from fake_immich import FakeImmich

pytestmark = requires_shared

LOADED = "model buffalo_test loaded"


def snapshot(folder: Path) -> dict[Path, tuple[int, int]]:
    return {path: (path.stat().st_ino, path.stat().st_mtime_ns) for path in sorted(folder.rglob("*"))}


def test_a_cycle_with_nothing_new_loads_no_model_clusters_nothing_and_writes_nothing(
    fake: FakeImmich, tmp_path: Path
) -> None:
    add_photos(fake, ["wild/obama", "wild/katy_perry", "wild/angelina_jolie"])
    config = write_config(tmp_path, fake.url, extra='[export]\nformat = "swap"\n')
    facesets = tmp_path / "facesets"
    first = run_cli("--config", str(config), "sync")
    assert first.returncode == 0 and LOADED in first.stderr, first.stderr
    run_cli("--config", str(config), "sync")  # what the first cycle's own later steps changed, once
    before, requests = snapshot(facesets), len(fake.requests)

    quiet = run_cli("--config", str(config), "--log-level", "debug", "sync")
    assert quiet.returncode == 0, quiet.stderr
    assert LOADED not in quiet.stderr, "the model was loaded for a cycle with nothing to embed"
    assert "the pool is not clustered again" in quiet.stderr
    assert "no faceset changed since the last export" in quiet.stderr
    assert snapshot(facesets) == before
    assert len(fake.requests) - requests == 2, fake.requests[requests:]

    # What a user changes in the folders is still seen, and costs the folders changed: a face's file
    # deleted and a file of the user's added, a name written into NAME.txt (those folders alone are
    # compared with the store); a folder deleted (every folder is)
    numbers = sorted(path.name for path in facesets.glob("faceset_*"))
    lost = sorted((facesets / numbers[0]).glob("face_*.png"))[0]
    lost.unlink()
    (facesets / numbers[2] / "mine.txt").write_text("the user's own file\n")
    changed = {numbers[0], numbers[2]}
    others = {path: state for path, state in snapshot(facesets).items() if not changed & set(path.parts)}
    mended = run_cli("--config", str(config), "--log-level", "debug", "sync")
    assert mended.returncode == 0, mended.stderr
    assert "the folders of 2 facesets were changed by hand" in mended.stderr, mended.stderr
    assert "exporting the 2 facesets that changed since the last export" in mended.stderr, mended.stderr
    assert "face index loaded" not in mended.stderr, "the index was loaded to mend two folders"
    assert lost.is_file(), "a face's file deleted by hand did not come back"
    assert (facesets / numbers[2] / "mine.txt").read_text() == "the user's own file\n"
    assert {path: state for path, state in snapshot(facesets).items() if path in others} == others
    (facesets / numbers[0] / "NAME.txt").write_text("Someone\n")
    (tmp_path / "state" / INDEX_FILE).unlink()  # lost: the next export that writes a folder makes it again
    named = run_cli("--config", str(config), "--log-level", "debug", "sync")
    assert named.returncode == 0 and "the folders of 1 facesets were changed by hand" in named.stderr, named.stderr
    assert (tmp_path / "state" / INDEX_FILE).is_file(), "an export left no index for the next start"
    assert json.loads((facesets / numbers[0] / "manifest.json").read_text())["name"] == "Someone"
    shutil.rmtree(facesets / numbers[1])
    again = run_cli("--config", str(config), "--log-level", "debug", "sync")
    assert again.returncode == 0 and LOADED not in again.stderr, again.stderr
    assert "changed by hand" not in again.stderr, "a folder deleted was taken for a change inside one"
    assert (facesets / numbers[1] / "manifest.json").is_file(), "a folder deleted by hand did not come back"
    quiet_again = run_cli("--config", str(config), "--log-level", "debug", "sync")
    assert "no faceset changed since the last export" in quiet_again.stderr, quiet_again.stderr

    # A new photo: the model loads, its face is placed and its folder written
    fake.add_file("alice", PHOTOS / "wild" / "biden" / "biden.jpg", label="wild/biden/biden.jpg")
    new = run_cli("--config", str(config), "sync")
    assert new.returncode == 0 and LOADED in new.stderr, new.stderr
    assert "embedded 1 assets with 1 faces" in new.stdout, new.stdout


def test_faces_whose_photo_could_not_be_had_are_tried_again_though_nothing_changed(
    fake: FakeImmich, tmp_path: Path
) -> None:
    """Switched to the swap layout while Immich cannot send photos and the crops are lost: the faces
    wait for their PNGs. The next cycle, with nothing else new, still fetches them (a skipped export
    would have left them out)."""
    from fake_immich import Fault

    add_photos(fake, ["wild/obama", "wild/katy_perry"])
    config = write_config(tmp_path, fake.url)
    assert run_cli("--config", str(config), "sync").returncode == 0
    config.write_text(config.read_text().replace("[[immich]]", '[export]\nformat = "swap"\n[[immich]]', 1))
    shutil.rmtree(tmp_path / "state" / "crops")  # nothing to cut a PNG from here either
    for path in ("/original", "/thumbnail"):
        fake.faults.append(Fault("status", path_contains=path, status=503, times=10_000))
    waiting = run_cli("--config", str(config), "sync")
    assert waiting.returncode == 0 and "made the swap PNGs of 0 faces" in waiting.stderr, waiting.stderr
    assert not list((tmp_path / "facesets").glob("faceset_*/face_*.png"))
    fake.faults.clear()
    again = run_cli("--config", str(config), "sync")
    assert again.returncode == 0 and "embedded 0 assets" in again.stdout, again.stdout
    manifests = [json.loads(path.read_text()) for path in (tmp_path / "facesets").glob("faceset_*/manifest.json")]
    assert manifests and all(data["faces"] for data in manifests), "the faces waiting for a PNG were not tried again"
    assert not [entry for data in manifests for entry in data["left_out"] if entry["why"].startswith("no PNG yet")]


def test_a_cycle_exports_only_the_facesets_that_changed(fake: FakeImmich, tmp_path: Path) -> None:
    """A new photo of one person: that faceset's folder is read and written, no other (the export
    of 1,000 new faces read every face and compared every folder: 37 CPU-s at 500,000 faces). What
    it wrote is what comparing every folder with the store would have written."""
    import sqlite3

    add_photos(
        fake,
        [
            "wild/katy_perry",
            "wild/angelina_jolie",
            "wild/obama/obama.jpg",
            "wild/obama/obama1.jpg",
            "wild/obama/obama2.jpg",
        ],
    )
    config = write_config(tmp_path, fake.url)
    facesets = tmp_path / "facesets"
    assert run_cli("--config", str(config), "sync").returncode == 0
    assert run_cli("--config", str(config), "sync").returncode == 0
    folders = {path.name: snapshot(path) for path in facesets.glob("faceset_*")}
    assert len(folders) >= 3

    fake.add_file("alice", PHOTOS / "wild" / "obama" / "obama3.jpg", label="wild/obama/obama3.jpg")
    new = run_cli("--config", str(config), "--log-level", "debug", "sync")
    assert new.returncode == 0 and "embedded 1 assets with 1 faces" in new.stdout, new.stdout
    assert "exporting the 1 facesets that changed since the last export" in new.stderr, new.stderr
    assert "brought 1 facesets in line from their changed faces alone" in new.stderr, new.stderr
    changed = [name for name, before in folders.items() if snapshot(facesets / name) != before]
    assert len(changed) == 1 and "obama3.jpg" in (facesets / changed[0] / "faceset.json").read_text()
    written = (facesets / changed[0] / "faceset.json").read_text()

    # a manifest edited where it stands (its folder's listing unchanged): its lines are not taken as
    # written; every folder is compared with the store, and that one written again
    manifest = facesets / changed[0] / "faceset.json"
    with manifest.open("r+", encoding="utf-8") as edited:
        edited.write(written.replace('"det_score": 0.', '"det_score": 1.', 1))
    again_taken = (PHOTOS / "wild" / "obama" / "obama3.jpg").read_bytes() + b"\0"  # other bytes, the same face
    fake.add_asset("alice", again_taken, "obama4.jpg", label="wild/obama/obama3.jpg")
    again = run_cli("--config", str(config), "--log-level", "debug", "sync")
    assert again.returncode == 0 and "brought" not in again.stderr, again.stderr
    assert '"det_score": 1.' not in manifest.read_text() and "obama4.jpg" in manifest.read_text()

    with sqlite3.connect(tmp_path / "state" / "facesyncd.db") as db:  # forget how the folders were left
        db.execute("DELETE FROM meta WHERE key = 'unchanged:publish'")
    whole = run_cli("--config", str(config), "sync")
    assert whole.returncode == 0 and " 0 folders written" in whole.stdout, whole.stdout


def test_a_name_facesyncd_writes_into_name_txt_leaves_the_folders_as_an_export_left_them(
    fake: FakeImmich, tmp_path: Path
) -> None:
    """NAME.txt is read back as the user's word, so a name a correction gives (or Immich's, adopted)
    is written into it. That is facesyncd's own write, not a change of the user's: the next cycle
    exports what changed, and does not compare every folder with the store."""
    add_photos(fake, ["wild/obama", "wild/katy_perry"])
    config = write_config(tmp_path, fake.url)
    facesets = tmp_path / "facesets"
    assert run_cli("--config", str(config), "sync").returncode == 0
    folder = sorted(facesets.glob("faceset_*"))[0]
    (folder / "NAME.txt").write_text("Barack\n")  # the user's own file
    assert run_cli("--config", str(config), "sync").returncode == 0  # the user's change: all compared
    quiet = run_cli("--config", str(config), "--log-level", "debug", "sync")
    assert "no faceset changed since the last export" in quiet.stderr, quiet.stderr

    named = run_cli("--config", str(config), "faceset", "name", folder.name.split("_")[1], "Barack Obama")
    assert named.returncode == 0, named.stderr
    assert (folder / "NAME.txt").read_text() == "Barack Obama\n"
    after = run_cli("--config", str(config), "--log-level", "debug", "sync")
    assert after.returncode == 0 and "no faceset changed since the last export" in after.stderr, after.stderr


def test_immich_moved_behind_the_same_web_url_leaves_the_folders_and_a_new_web_url_rewrites_the_links(
    fake: FakeImmich, tmp_path: Path
) -> None:
    """The folders hold links to the photos in Immich's web app: the links, not the API's address,
    decide whether every folder must be compared again."""
    add_photos(fake, ["wild/katy_perry", "wild/obama/obama.jpg", "wild/obama/obama1.jpg"])
    config = write_config(tmp_path, fake.url)
    config.write_text(config.read_text().replace("api_key_env", 'web_url = "https://photos.example.org"\napi_key_env'))
    facesets = tmp_path / "facesets"
    assert run_cli("--config", str(config), "sync").returncode == 0
    folders = {path.name: snapshot(path) for path in facesets.glob("faceset_*")}
    assert folders and all(
        "https://photos.example.org/photos/" in (facesets / name / "faceset.json").read_text() for name in folders
    )

    # the same server under another address (localhost for 127.0.0.1)
    config.write_text(config.read_text().replace(fake.url, fake.url.replace("127.0.0.1", "localhost")))
    moved = run_cli("--config", str(config), "--log-level", "debug", "sync")
    assert moved.returncode == 0 and "no faceset changed since the last export" in moved.stderr, moved.stderr
    assert {name: snapshot(facesets / name) for name in folders} == folders

    config.write_text(config.read_text().replace("https://photos.example.org", "https://immich.example.net"))
    relinked = run_cli("--config", str(config), "--log-level", "debug", "sync")
    assert relinked.returncode == 0 and "no faceset changed" not in relinked.stderr, relinked.stderr
    for name in folders:
        manifest = (facesets / name / "faceset.json").read_text()
        assert "https://immich.example.net/photos/" in manifest and "photos.example.org" not in manifest


def test_a_sync_in_a_new_process_reads_the_pool_from_its_file(fake: FakeImmich, tmp_path: Path, monkeypatch) -> None:
    """Issue 24: the pool's arrays are kept in the state folder between processes: a `sync` reads that
    file and the faces marked since, not the whole pool (0.97 CPU-s at 200,000 pooled faces)."""
    import facesyncd.pool as pool_module

    monkeypatch.setattr(pool_module, "_SAVE_AT_LEAST", 0)  # (a small library: written at every read)
    monkeypatch.setattr(pool_module, "SAVE_BEHIND", 0.0)
    add_photos(fake, ["wild/obama", "wild/biden"])
    config = write_config(tmp_path, fake.url)
    first = run_cli("--config", str(config), "--log-level", "debug", "sync")
    assert first.returncode == 0 and "read the pool whole" in first.stderr, first.stderr
    assert (tmp_path / "state" / pool_module.POOL_FILE).is_file()
    add_photos(fake, ["wild/rose_leslie"])  # faces new to the pool
    second = run_cli("--config", str(config), "--log-level", "debug", "sync")
    assert second.returncode == 0 and "read the pool's file" in second.stderr, second.stderr
    assert "read the pool whole" not in second.stderr
