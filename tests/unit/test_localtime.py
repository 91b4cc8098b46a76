"""Times as a person reads them (localtime.py): the local time zone, stored times untouched."""

from __future__ import annotations

import time

import pytest

from facesyncd.localtime import local_time


@pytest.fixture
def kolkata(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_a_stored_utc_time_is_shown_in_the_local_time_zone(kolkata: None) -> None:
    assert local_time("2026-12-02T10:00:00.000Z") == "2026-12-02 15:30 +0530"
    assert local_time("2026-12-02T10:00:07+00:00", seconds=True) == "2026-12-02 15:30:07 +0530"


def test_what_is_not_a_time_is_shown_as_it_is(kolkata: None) -> None:
    assert local_time(None) == "" and local_time("") == ""
    assert local_time("soon") == "soon"
    assert local_time("2026-12-02T10:00:00") == "2026-12-02T10:00:00"  # no zone: not guessed
