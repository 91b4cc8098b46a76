"""Broken and hostile files: each ends recorded with a reason, never a crash, never unbounded memory."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

from PIL import Image

from conftest import API_KEY, API_KEY_ENV, PHOTOS, REPO, asset_states, requires_shared, write_config
from fake_immich import FakeImmich

pytestmark = requires_shared

OBAMA = PHOTOS / "wild" / "obama" / "obama.jpg"


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's calling card)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def corrupt_exif(jpeg: bytes) -> bytes:
    """Insert an APP1 Exif segment whose TIFF structure points nowhere."""
    garbage = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\x00\x05\x01\x12\x00\x03\xff\xff\xff\xff" + b"\xde\xad" * 20
    segment = b"\xff\xe1" + struct.pack(">H", len(garbage) + 2) + garbage
    return jpeg[:2] + segment + jpeg[2:]


def hostile_library() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, what must become of it: 'failed' or 'done')."""
    obama = Image.open(OBAMA).convert("RGB")
    grey16 = Image.fromarray(__import__("numpy").asarray(obama.convert("L"), dtype="uint16") * 257)
    frames = [obama, obama.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    data = OBAMA.read_bytes()
    return {
        "empty.jpg": (b"", "failed"),
        "truncated.jpg": (data[: len(data) // 3], "failed"),
        "bomb.png": (png_claiming(100_000, 100_000), "failed"),
        "notes.jpg": (b"Meeting notes\nnot an image at all\n" * 50, "failed"),
        "html.png": (b"<html><body>502 Bad Gateway</body></html>", "failed"),
        "png-named.jpg": (encoded(obama, "PNG"), "done"),
        "cmyk.jpg": (encoded(obama.convert("CMYK"), "JPEG"), "done"),
        "grey16.png": (encoded(grey16, "PNG"), "done"),
        "animated.gif": (encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]), "done"),
        "animated.webp": (encoded(frames[0], "WEBP", save_all=True, append_images=frames[1:]), "done"),
        "no-exif.jpg": (encoded(obama, "JPEG"), "done"),
        "corrupt-exif.jpg": (corrupt_exif(encoded(obama, "JPEG")), "done"),
    }


def test_broken_and_hostile_files_are_recorded_not_fatal(fake: FakeImmich, tmp_path: Path) -> None:
    library = hostile_library()
    ids = {fake.add_asset("alice", data, name): name for name, (data, _) in library.items()}
    config = write_config(tmp_path, fake.url, faces="min_face_px = 40", sync="max_attempts = 2")
    # run in a child that reports its own peak memory
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['facesyncd', '--config', {str(config)!r}, 'sync']\n"
        "code = 0\ntry:\n    runpy.run_module('facesyncd', run_name='__main__')\n"
        "except SystemExit as done:\n    code = done.code\n"
        # VmHWM: this process's own peak (ru_maxrss would include the parent's size, carried over fork)
        "peak = next(line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM:'))\n"
        "print('PEAK_KB', peak, file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    env = {**__import__("os").environ, API_KEY_ENV: API_KEY}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    peak_kb = int(result.stderr.rsplit("PEAK_KB", 1)[1].split()[0])
    assert peak_kb < 1_000_000, f"peak memory {peak_kb} kB"
    status = json.loads(
        subprocess.run(
            [sys.executable, "-m", "facesyncd", "--config", str(config), "status", "--json"],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
        ).stdout
    )
    problems = {problem["asset_id"]: problem for problem in status["problems"]}
    for asset_id, name in ids.items():
        expected = library[name][1]
        if expected == "failed":
            assert asset_id in problems, f"{name} is not listed as a problem"
            assert problems[asset_id]["reason"], f"{name} has no reason"
        else:
            assert asset_id not in problems, f"{name} failed: {problems[asset_id]['reason']}"
    reasons = {ids[a]: p["reason"] for a, p in problems.items()}
    assert "over the" in reasons["bomb.png"] or "too large" in reasons["bomb.png"]
    assert status["assets"] == asset_states(done=7, failed=5)
    assert status["faces"]["total"] == 7  # one face in each decodable copy of the photo


def test_a_100_megapixel_photo_decodes_under_the_configured_limit(tmp_path: Path) -> None:
    """Pillow's own limit (89 MP, with a warning from half of that) refused a legitimate 100 MP
    photo although max_image_megapixels = 250; the configured limit is the one that counts."""
    from facesyncd.errors import ImageError
    from facesyncd.imaging import decode_image

    path = tmp_path / "big.jpg"
    Image.new("RGB", (10_000, 10_000), (120, 90, 60)).save(path, quality=50)
    image = decode_image(path, max_pixels=250_000_000)
    assert (image.width, image.height) == (10_000, 10_000)
    del image
    png = tmp_path / "big.png"
    Image.new("L", (10_000, 10_000), 80).save(png)
    assert decode_image(png, max_pixels=250_000_000).width == 10_000
    try:
        decode_image(path, max_pixels=50_000_000)
    except ImageError as error:
        assert "over the 50 MP limit" in str(error) or "too large" in str(error)
    else:
        raise AssertionError("a photo over the configured limit was decoded")
