"""Names from Immich (issue 21, part 6): a faceset with no name takes the name of the Immich person
most of its photos show; a name given in facesyncd is never overwritten; an undo declines it for
good; nothing is written to Immich."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import Library, requires_shared
from fake_immich import FakeImmich

pytestmark = requires_shared


def name_people(fake: FakeImmich, assets: list[str], person: dict) -> None:
    """Immich's ML found a face in each of these photos and the user named it `person` in Immich."""
    for asset_id in assets:
        fake.add_face(
            asset_id, {"x1": 10, "y1": 10, "x2": 60, "y2": 60, "image_width": 100, "image_height": 100}, person
        )


def test_a_faceset_takes_the_name_immich_gives_most_of_its_photos(
    fake: FakeImmich, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = Library(fake, tmp_path / "run")
    lib.add(["wild/angelina_jolie", "wild/katy_perry", "wild/scarlett_johansson"])
    by_person = {
        person: sorted(a for a, label in lib.labels.items() if person in label)
        for person in ("angelina", "katy", "scarlett")
    }
    angelina_person = fake.add_person("alice", "Angelina Jolie")
    name_people(fake, by_person["angelina"][:6], angelina_person)  # 6 of her 8 photos
    name_people(fake, by_person["scarlett"][:2], fake.add_person("alice", "Scarlett"))  # 2: too few
    synced = lib.cli("sync")
    angelina, katy, scarlett = (lib.number_of(person) for person in ("angelina", "katy", "scarlett"))
    sets = lib.sets()
    assert sets[angelina]["name"] == "Angelina Jolie", synced
    assert sets[katy]["name"] is None and sets[scarlett]["name"] is None
    manifest = json.loads((lib.facesets / f"faceset_{angelina:03d}" / "faceset.json").read_text())
    assert manifest["name"] == "Angelina Jolie"
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # times are shown in the local time zone
    time.tzset()
    history = lib.cli("history")
    monkeypatch.undo()
    time.tzset()
    assert "after Immich's people" in history and "Angelina Jolie" in history and " +0530 " in history
    assert not [method for method, *_ in fake.requests if method not in ("GET", "POST")]  # read only

    # a name given in facesyncd is never overwritten, not even by a clear majority in Immich
    lib.cli("faceset", "name", str(katy), "Katy")
    name_people(fake, by_person["katy"], fake.add_person("alice", "Katheryn Hudson"))
    # renamed in Immich: an adopted name follows it (people are read again by a full listing:
    # naming a person in Immich changes no asset's updatedAt)
    angelina_person["name"] = "Angelina"
    lib.cli("sync", "--reconcile")
    sets = lib.sets()
    assert sets[katy]["name"] == "Katy" and sets[angelina]["name"] == "Angelina"

    # an adoption undone is declined for good: the name before it is the user's from then on
    adopted = [line.split()[0] for line in lib.cli("history").splitlines() if "after Immich's people" in line]
    assert len(adopted) == 2
    lib.cli("undo", adopted[1])
    lib.cli("sync", "--reconcile")
    assert lib.sets()[angelina]["name"] == "Angelina Jolie"  # Immich says "Angelina": no longer followed
    lib.cli("undo", adopted[0])
    lib.cli("sync", "--reconcile")
    assert lib.sets()[angelina]["name"] is None


def test_no_name_is_taken_with_adopt_names_off_or_when_another_faceset_has_it(fake: FakeImmich, tmp_path: Path) -> None:
    lib = Library(fake, tmp_path / "run")
    lib.add(["wild/angelina_jolie", "wild/katy_perry"])
    person = fake.add_person("alice", "Someone")
    name_people(fake, list(lib.labels), person)  # every photo: both facesets would take it
    lib.config.write_text(lib.config.read_text().replace("api_key_env", "adopt_names = false\napi_key_env"))
    lib.cli("sync")
    assert {entry["name"] for entry in lib.sets().values()} == {None}
    lib.config.write_text(lib.config.read_text().replace("adopt_names = false\n", ""))
    lib.cli("sync", "--reconcile")
    names = [entry["name"] for entry in lib.sets().values()]
    assert names.count("Someone") == 1 and names.count(None) == len(names) - 1  # one name, one faceset
    assert "Immich names both" in lib.cli("faceset", "suggestions")  # the other one is the user's question
