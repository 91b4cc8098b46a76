"""Run the fake Immich in a child process, as a real server would be: it must not share the
benchmarked process's interpreter (GIL) or be counted in its CPU time."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import API_KEY, REPO

CHILD = """
import json, sys, threading
sys.path.insert(0, {tests!r})
from fake_immich import FakeImmich
spec = json.loads(open(sys.argv[1], encoding="utf-8").read())
fake = FakeImmich()
fake.add_user("bench", {key!r})
for path in spec["files"]:
    fake.add_file("bench", __import__("pathlib").Path(path))
from datetime import datetime, timedelta, timezone
start = datetime(2020, 1, 1, tzinfo=timezone.utc)
for index in range(spec.get("blank", 0)):
    asset_id = fake.add_asset("bench", b"x", f"blank{{index}}.jpg", taken=start + timedelta(seconds=index),
                              faces=[dict(x1=0, y1=0, x2=10, y2=10, image_width=100, image_height=100)])
    fake.assets[asset_id].updated_at -= timedelta(days=1)  # a library at rest, not one changed just now
fake.start()
print(fake.url, flush=True)
for line in sys.stdin:  # commands from the benchmark, one per line; end of input stops the server
    if line.strip() == "delete":  # a force delete that skipped the trash: the row is just gone
        fake.delete(next(iter(fake.assets)))
        print("deleted", flush=True)
fake.stop()
"""


class FakeServerProcess:
    def __init__(self, files: list[Path], blank: int = 0) -> None:
        code = CHILD.format(tests=str(REPO / "tests"), key=API_KEY)
        # The list of files goes through a file: thousands of paths overflow a command line.
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, encoding="utf-8") as spec:
            json.dump({"files": [str(p) for p in files], "blank": blank}, spec)
        self._spec = Path(spec.name)
        self.process = subprocess.Popen(
            [sys.executable, "-c", code, spec.name], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        if not self.url.startswith("http"):
            raise RuntimeError("the fake Immich did not start")

    def delete_one(self) -> None:
        """Remove one asset the way a force delete does once Immich's job has run (no trash)."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("delete\n")
        self.process.stdin.flush()
        if self.process.stdout.readline().strip() != "deleted":
            raise RuntimeError("the fake Immich did not delete an asset")

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(30)
        self._spec.unlink(missing_ok=True)

    def __enter__(self) -> FakeServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
