"""The review page in a real headless browser (Debian's chromium, driven by Selenium), /metrics and
/healthz, and the page's defences (CSRF, the token)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests

from conftest import API_KEY, API_KEY_ENV, PHOTOS, REPO, Library, add_photos, free_port, requires_shared, wait_until
from fake_immich import FakeImmich

pytestmark = requires_shared

# Debian's packages chromium and chromium-driver (Ubuntu's snap names them otherwise).
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or shutil.which("chromium.chromedriver")
# Where test_the_readme_pictures_of_the_page leaves its screenshots when asked to: the README's are
# made with FACESYNCD_SCREENSHOTS=docs .venv/bin/python -m pytest tests/system/test_web.py -k readme
SCREENSHOTS = os.environ.get("FACESYNCD_SCREENSHOTS")


class Server:
    """`facesyncd serve` in a subprocess, on a free loopback port."""

    def __init__(self, lib: Library, extra: list[str] | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "facesyncd",
                "--config",
                str(lib.config),
                "serve",
                "--listen",
                f"127.0.0.1:{self.port}",
            ],
            cwd=REPO,
            env={**os.environ, API_KEY_ENV: API_KEY},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        wait_until(self._answers, "facesyncd serve answers /healthz")

    def _answers(self) -> bool:
        try:
            return requests.get(f"{self.url}/healthz", timeout=5).status_code == 200
        except requests.ConnectionError:
            assert self.process.poll() is None, self.process.communicate()[0]
            return False

    def stop(self) -> str:
        self.process.terminate()
        try:
            return self.process.communicate(timeout=10)[0]
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.communicate()[0]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.fail("chromium and chromium-driver are missing: ./install.sh --test installs them (as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1200,900",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()


def click_and_wait(driver: object, element: object) -> None:
    """Click a form's button and wait for the page the POST leads to (a click returns before it).
    The old page is marked; the new one has no mark. Chromium's driver may answer anything while
    the page changes, so errors during the wait are retried, not taken as answers."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    driver.execute_script("window.__before_click = true")
    element.click()
    WebDriverWait(driver, 120, ignored_exceptions=(WebDriverException,)).until(
        lambda d: d.execute_script("return window.__before_click === undefined && document.readyState === 'complete'")
    )


def screenshot(driver: object, path: Path, *, height: int | None = None) -> np.ndarray:
    """The page as the browser drew it (its top `height` pixels); fails on a blank page (one colour,
    or images not drawn). Lazy images are loaded and decoded first."""
    driver.execute_script("document.querySelectorAll('img[loading=lazy]').forEach(i => i.loading = 'eager')")
    driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "Promise.all([...document.images].map(i => i.decode().catch(() => null))).then(() => done(true));"
    )
    driver.save_screenshot(str(path))
    if height is not None:
        cv2.imwrite(str(path), cv2.imread(str(path))[:height], [cv2.IMWRITE_PNG_COMPRESSION, 9])
    pixels = cv2.imread(str(path))
    assert pixels is not None and pixels.shape[0] > 300 and pixels.shape[1] > 300
    assert float(pixels.std()) > 20, "the page is blank"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500, "nothing but flat colours: no face was drawn"
    broken = driver.execute_script(
        "return [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)"
    )
    assert not broken, f"images that did not load: {broken}"
    return pixels


def test_review_page_merges_and_rejects_in_a_browser(fake: FakeImmich, tmp_path: Path, browser: object) -> None:
    from selenium.webdriver.common.by import By

    lib = Library(fake, tmp_path / "run")
    lib.add(["wild/angelina_jolie", "wild/scarlett_johansson", "wild/katy_perry", "wild/matt_damon"])
    lib.cli("sync")
    angelina, katy, matt = lib.number_of("angelina"), lib.number_of("katy"), lib.number_of("matt")
    server = Server(lib)
    driver = browser
    try:
        # the grid: one card per faceset, each with its best face
        driver.get(server.url + "/")
        cards = driver.find_elements(By.CSS_SELECTOR, ".card.faceset")
        assert sorted(int(card.get_attribute("data-number")) for card in cards) == sorted(lib.sets())
        screenshot(driver, tmp_path / "review-grid.png")

        # merge two facesets from katy's page
        driver.get(f"{server.url}/faceset/{katy}")
        matt_faces = set(lib.faces(matt))
        driver.find_element(By.ID, "merge-others").send_keys(str(matt))
        click_and_wait(driver, driver.find_element(By.ID, "merge"))
        message = driver.find_element(By.ID, "message").text
        assert f"merged {matt:03d} into {katy:03d}" in message, message
        shown = {int(card.get_attribute("data-face")) for card in driver.find_elements(By.CSS_SELECTOR, ".card.face")}
        assert matt_faces <= shown
        assert lib.show(matt)["merged_into"] == katy and matt_faces <= set(lib.faces(katy))

        # reject a face on angelina's page
        driver.get(f"{server.url}/faceset/{angelina}?sort=distance")
        face = max(lib.faces(angelina))
        reject = driver.find_element(By.CSS_SELECTOR, f'.card.face[data-face="{face}"] button.reject')
        click_and_wait(driver, reject)
        assert f"rejected face {face}" in driver.find_element(By.ID, "message").text
        assert not driver.find_elements(By.CSS_SELECTOR, f'.card.face[data-face="{face}"]')
        assert face not in lib.faces(angelina)
        assert lib.sql(f"SELECT identity FROM rejections WHERE face_id = {face}") == [(angelina,)]
        screenshot(driver, tmp_path / "review-faceset.png")

        # the history page undoes it
        driver.get(f"{server.url}/history")
        rows = driver.find_elements(By.CSS_SELECTOR, "#history tr")
        assert "rejected face" in rows[1].text
        click_and_wait(driver, rows[1].find_element(By.TAG_NAME, "button"))
        assert face in lib.faces(angelina)

        # hide: off the grid (a filter shows it), off the disk, kept in the store; unhide brings it back
        driver.get(f"{server.url}/faceset/{angelina}")
        click_and_wait(driver, driver.find_element(By.ID, "hide"))
        assert f"hid faceset {angelina:03d}" in driver.find_element(By.ID, "message").text
        assert not (lib.facesets / f"faceset_{angelina:03d}").exists() and lib.faces(angelina)
        driver.get(server.url + "/")
        numbers = {
            int(card.get_attribute("data-number")) for card in driver.find_elements(By.CSS_SELECTOR, ".card.faceset")
        }
        assert angelina not in numbers and numbers
        click_and_wait(driver, driver.find_element(By.ID, "show-hidden"))
        cards = driver.find_elements(By.CSS_SELECTOR, ".card.faceset")
        assert [int(card.get_attribute("data-number")) for card in cards] == [angelina]
        driver.get(f"{server.url}/faceset/{angelina}")
        click_and_wait(driver, driver.find_element(By.ID, "hide"))  # now labelled "unhide"
        assert f"showed faceset {angelina:03d}" in driver.find_element(By.ID, "message").text
        assert (lib.facesets / f"faceset_{angelina:03d}").is_dir()

        # a form posted from elsewhere is refused: no CSRF token, or another origin
        refused = requests.post(f"{server.url}/act/lock", data={"number": angelina}, timeout=5)
        assert refused.status_code == 403
        csrf = driver.find_element(By.NAME, "csrf").get_attribute("value")
        foreign = requests.post(
            f"{server.url}/act/lock",
            data={"number": angelina, "csrf": csrf},
            headers={"Origin": "http://evil.example"},
            timeout=5,
        )
        assert foreign.status_code == 403 and not lib.sets()[angelina]["locked"]
        assert requests.get(f"{server.url}/", headers={"Host": "evil.example"}, timeout=5).status_code == 400

        metrics = requests.get(f"{server.url}/metrics", timeout=5).text
        assert 'facesyncd_assets{state="done"}' in metrics and "facesyncd_identities 3.0" in metrics
        assert "facesyncd_last_success_timestamp_seconds" in metrics and "facesyncd_cycle_duration_seconds" in metrics
    finally:
        output = server.stop()
    assert "Traceback" not in output, output


def test_the_page_asks_for_its_token(fake: FakeImmich, tmp_path: Path) -> None:
    lib = Library(fake, tmp_path / "run")
    token = "s3cret-token-for-the-review-page"
    (tmp_path / "run" / "web.token").write_text(token + "\n")
    lib.config.write_text(lib.config.read_text() + '[web]\ntoken_file = "web.token"\n')
    lib.add(["wild/katy_perry"])
    lib.cli("sync")
    server = Server(lib)
    try:
        assert requests.get(f"{server.url}/", timeout=5).status_code == 401
        assert requests.get(f"{server.url}/metrics", timeout=5).status_code == 401
        session = requests.Session()
        assert session.get(f"{server.url}/?token={token}", timeout=5).status_code == 200
        assert session.get(f"{server.url}/pool", timeout=5).status_code == 200, "the cookie was not kept"
        bearer = {"Authorization": f"Bearer {token}"}
        assert "facesyncd_faces" in requests.get(f"{server.url}/metrics", headers=bearer, timeout=5).text
        assert requests.get(f"{server.url}/healthz", timeout=5).text == "ok"
    finally:
        output = server.stop()
    assert token not in output, "the token was logged"
    # beyond loopback, no page without a token
    lib.config.write_text(lib.config.read_text().replace('token_file = "web.token"', 'listen = "0.0.0.0:8765"'))
    refused = lib.cli("status", ok=False)
    assert "web.listen" in refused and "token_file" in refused


def public_domain_tree(root: Path) -> Path:
    """Facesets of four people from public-domain pictures (Pierre and Marie Curie from
    immich-app/test-assets' portrait.jpg; Gauss and Newton from the scrfd package's test images),
    each with altered copies: what the README's pictures of the page show."""
    rng = np.random.default_rng(1)
    portrait = cv2.imread(str(PHOTOS / "groups" / "portrait.jpg"))
    people = {
        1: ("Pierre Curie", portrait),
        2: ("Marie Curie", portrait[:, :480]),  # her side of the photo only
        3: ("Carl Friedrich Gauss", cv2.imread(str(PHOTOS / "edge" / "gauss.png"))),
        4: ("Isaac Newton", cv2.imread(str(PHOTOS / "edge" / "newton.png"))),
    }
    for number, (name, picture) in people.items():
        folder = root / f"faceset_{number:03d}"
        folder.mkdir(parents=True)
        height, width = picture.shape[:2]
        tilt = cv2.getRotationMatrix2D((width / 2, height / 2), 10, 1.0)
        copies = {
            "a": picture,
            "b_grain": np.clip(picture + rng.normal(0, 14, picture.shape), 0, 255).astype(np.uint8),
            "c_mirrored": cv2.flip(picture, 1),
            "d_small": cv2.resize(picture, (width // 3, height // 3), interpolation=cv2.INTER_AREA),
            "e_soft": cv2.GaussianBlur(picture, (0, 0), 2.5),
            "f_tilted": cv2.warpAffine(picture, tilt, (width, height)),
        }
        for label, pixels in copies.items():
            cv2.imwrite(str(folder / f"{label}.jpg"), pixels)
        (folder / "NAME.txt").write_text(name + "\n")
    return root


def test_the_readme_pictures_of_the_page(fake: FakeImmich, tmp_path: Path, browser: object) -> None:
    lib = Library(fake, tmp_path / "run")
    imported = lib.cli("import-facesets", str(public_domain_tree(tmp_path / "tree")))
    assert "into 4 facesets" in imported, imported
    lib.cli("faceset", "lock", "1")
    worst = min(lib.show(2)["face_list"], key=lambda face: face["quality"])["face_id"]
    lib.cli("face", "reject", str(worst))
    server = Server(lib)
    driver = browser
    try:
        driver.set_window_size(1100, 760)
        pictures = {"review-grid.png": ("/", 380), "review-faceset.png": ("/faceset/2?sort=quality", 570)}
        for name, (path, height) in pictures.items():
            driver.get(server.url + path)
            screenshot(driver, tmp_path / name, height=height)
            if SCREENSHOTS:
                shutil.copy(tmp_path / name, Path(SCREENSHOTS) / name)
        names = [element.text for element in driver.find_elements("css selector", "h1 .name")]
        assert names == ["Marie Curie"]
    finally:
        server.stop()
    # the pool, "same person?" and a face in its photo: Newton's faces back in the pool, the two
    # Curies given one family name (a suggestion to decline), Gauss's portrait arriving from Immich
    lib.cli("faceset", "name", "1", "Curie")
    lib.cli("faceset", "name", "2", "curie")
    fake.add_file("alice", PHOTOS / "edge" / "gauss.png")
    lib.cli("sync")
    lib.sql("UPDATE faces SET identity = NULL, matched_at = '2026-12-01T00:00:00Z' WHERE identity = 4")
    [(from_immich,)] = lib.sql("SELECT f.id FROM faces f JOIN assets a ON a.sha256 = f.sha256 LIMIT 1")
    server = Server(lib)
    try:
        driver.set_window_size(1100, 760)
        pictures = {
            "review-pool.png": ("/pool", 420),
            "review-suggestions.png": ("/suggestions", 340),
            "review-photo.png": (f"/photo/{from_immich}", 700),
        }
        for name, (path, height) in pictures.items():
            driver.get(server.url + path)
            screenshot(driver, tmp_path / name, height=height)
            if SCREENSHOTS:
                shutil.copy(tmp_path / name, Path(SCREENSHOTS) / name)
        driver.get(server.url + "/suggestions")
        assert driver.find_elements("css selector", '.suggestion[data-pair="1-2"]')
    finally:
        server.stop()


def farther(face: int, total: int) -> np.ndarray:
    """An embedding that lies farther from the common direction the higher the face's id: one shared
    axis, and a part of its own on another axis, growing with the id."""
    vector = np.zeros(256, np.float32)
    vector[0] = 1.0
    vector[1 + face % 255] = face / total
    return vector / np.linalg.norm(vector)


def synthetic_library(root: Path, facesets: int, per_set: int, big: int) -> Path:
    """A library of `facesets` facesets of `per_set` faces, faceset 1 with `big` more, straight into a
    store (no Immich, no model: the page reads the store and the crops). Every fifth faceset is
    named "Person N"; a face's distance grows with its id; photos taken a day apart."""
    from facesyncd.store import Store

    state = root / "state"
    (state / "crops").mkdir(parents=True)
    portrait = cv2.imread(str(PHOTOS / "wild" / "obama" / "obama.jpg"))
    sample = root / "face.jpg"
    cv2.imwrite(str(sample), cv2.resize(portrait, (512, 512)))
    store = Store(state / "facesyncd.db")
    now = "2026-12-01T00:00:00.000Z"
    total = facesets * per_set + big
    with store.transaction():
        store.conn.execute("INSERT INTO sources (name, url) VALUES ('alice', 'http://127.0.0.1:9')")
        store.conn.executemany(
            "INSERT INTO identities (number, origin, created_at, name) VALUES (?, 'cluster', ?, ?)",
            ((n, now, f"Person {n}" if n % 5 == 0 else None) for n in range(1, facesets + 1)),
        )
        for face in range(1, total + 1):
            identity = (face - 1) % facesets + 1 if face <= facesets * per_set else 1
            sha = f"{face:064x}"
            os.link(sample, state / "crops" / f"{sha}.jpg")
            store.conn.execute(
                "INSERT INTO blobs (sha256, size, decoded_from, model, embedded_at) VALUES (?, 1, 'original', 'm', ?)",
                (sha, now),
            )
            taken = f"2020-01-{1 + face % 28:02d}T00:00:00.000Z"
            store.conn.execute(
                "INSERT INTO assets (source, asset_id, type, state, sha256, first_seen_at, changed_at, "
                "file_created_at, original_file_name) VALUES ('alice', ?, 'IMAGE', 'done', ?, ?, ?, ?, ?)",
                (f"{face:08x}-0000-4000-8000-000000000000", sha, now, now, taken, f"IMG_{face:05d}.jpg"),
            )
            store.conn.execute(
                "INSERT INTO faces (sha256, face_index, x1, y1, x2, y2, det_score, landmarks, embedding, crop, "
                "identity, distance, matched_at, quality) "
                "VALUES (?, 0, 0, 0, 100, 100, 0.9, '[]', ?, ?, ?, ?, ?, ?)",
                (sha, farther(face, total).tobytes(), f"{sha}.jpg", identity, face / (total + 1), now, 0.5),
            )
    store.close()
    config = root / "config.toml"
    config.write_text(
        f'state_dir = "{state}"\nfacesets_dir = "{root / "facesets"}"\n'
        f'[[immich]]\nname = "alice"\nurl = "http://127.0.0.1:9"\napi_key_env = "{API_KEY_ENV}"\n'
    )
    return config


def test_a_big_library_is_paged_searched_and_sorted_and_an_action_comes_back_to_its_place(
    tmp_path: Path, browser: object
) -> None:
    """A grid of 300 facesets was one 12,271-px page, a 300-face faceset 13,569 px that took 14.6 s
    with no image lazy. Now: pages, lazy thumbnails at the size shown, search, sorts, and a form
    that returns to the page, sort and scroll position it was sent from."""
    from types import SimpleNamespace

    from selenium.webdriver.common.by import By

    from facesyncd.web.pages import FACES_PER_PAGE, SETS_PER_PAGE

    config = synthetic_library(tmp_path, facesets=SETS_PER_PAGE + 50, per_set=1, big=FACES_PER_PAGE + 30)
    server = Server(SimpleNamespace(config=config))  # type: ignore[arg-type]
    driver = browser
    try:
        driver.get(server.url + "/")
        cards = driver.find_elements(By.CSS_SELECTOR, ".card.faceset")
        assert len(cards) == SETS_PER_PAGE and "page 1 of 2" in driver.page_source
        images = driver.find_elements(By.CSS_SELECTOR, ".card img")
        assert images and all(image.get_attribute("loading") == "lazy" for image in images)
        assert all("size=" in image.get_attribute("src") for image in images)
        thumbnail = requests.get(images[0].get_attribute("src"), timeout=10)
        picture = cv2.imdecode(np.frombuffer(thumbnail.content, np.uint8), cv2.IMREAD_COLOR)
        assert picture is not None and max(picture.shape[:2]) <= 320  # the crop is 512 px
        first_page = {int(card.get_attribute("data-number")) for card in cards}
        click_and_wait(driver, driver.find_element(By.CSS_SELECTOR, ".pager a.next"))
        second_page = {
            int(card.get_attribute("data-number")) for card in driver.find_elements(By.CSS_SELECTOR, ".card.faceset")
        }
        assert len(second_page) == 50 and not first_page & second_page

        # search by number and by name; sort by size
        search = driver.find_element(By.CSS_SELECTOR, "#search input[name=q]")
        search.send_keys("person 15")
        click_and_wait(driver, driver.find_element(By.CSS_SELECTOR, "#search button"))
        found = [
            int(card.get_attribute("data-number")) for card in driver.find_elements(By.CSS_SELECTOR, ".card.faceset")
        ]
        assert found == [15, 150, 155]  # a name that holds it
        driver.get(server.url + "/?q=7")
        assert [
            int(c.get_attribute("data-number")) for c in driver.find_elements(By.CSS_SELECTOR, ".card.faceset")
        ] == [7]
        driver.get(server.url + "/")
        click_and_wait(driver, driver.find_element(By.CSS_SELECTOR, 'a.sort[data-sort="size"]'))
        assert driver.find_elements(By.CSS_SELECTOR, ".card.faceset")[0].get_attribute("data-number") == "1"

        # the big faceset: paged, farthest first, and a rejection comes back to the same place
        driver.get(server.url + "/faceset/1?sort=distance&page=2")
        faces = [int(card.get_attribute("data-face")) for card in driver.find_elements(By.CSS_SELECTOR, ".card.face")]
        assert len(faces) == FACES_PER_PAGE + 30 + 1 - FACES_PER_PAGE  # what page 1 left
        assert faces == sorted(faces, reverse=True)  # distance grows with the id: farthest first
        target = faces[-1]
        card = driver.find_element(By.CSS_SELECTOR, f'.card.face[data-face="{target}"]')
        driver.execute_script("arguments[0].scrollIntoView()", card)
        scrolled = driver.execute_script("return window.scrollY")
        assert scrolled > 100
        click_and_wait(driver, card.find_element(By.CSS_SELECTOR, "button.reject"))
        assert f"rejected face {target}" in driver.find_element(By.ID, "message").text
        assert "sort=distance" in driver.current_url and "page=2" in driver.current_url
        # back where it was (the page is one card shorter now, so it may not scroll quite as far)
        assert driver.execute_script("return window.scrollY") > scrolled / 2, "the page went back to its top"
        driver.get(server.url + "/faceset/1?sort=date")
        dates = driver.find_elements(By.CSS_SELECTOR, ".card.face .body span.muted[title]")
        taken = [element.text for element in dates]
        assert taken == sorted(taken, reverse=True) and taken[0].startswith("2020-01-")
    finally:
        output = server.stop()
    assert "Traceback" not in output, output


def test_same_person_suggestions_are_accepted_or_declined_for_good_in_a_browser(
    fake: FakeImmich, tmp_path: Path, browser: object
) -> None:
    """Naming 044 "angelina jolie" while 001 was "Angelina Jolie" gave no hint, and nothing proposed
    "same person?" pairs. Now: close faces and same names are suggested; accepting merges, declining
    keeps the two apart for good (never suggested again, never merged automatically)."""
    from selenium.webdriver.common.by import By

    lib = Library(fake, tmp_path / "run")
    first = [f"wild/angelina_jolie/img{n}.jpg" for n in (1, 10, 11, 2, 4)]
    lib.add([*first, "wild/katy_perry", "wild/scarlett_johansson"])
    lib.cli("sync")
    angelina, katy, scarlett = (lib.number_of(person) for person in ("angelina", "katy", "scarlett"))
    lib.cli("faceset", "lock", str(angelina))  # her later photos cannot join: they open a faceset of their own
    lib.add([f"wild/angelina_jolie/img{n}.jpg" for n in (5, 6, 7)])
    lib.cli("sync")
    later = max(lib.sets())
    assert later not in (angelina, katy, scarlett) and lib.sets()[later]["merged_into"] is None
    lib.cli("faceset", "name", str(katy), "Star")
    lib.cli("faceset", "name", str(scarlett), "  star ")
    listed = lib.cli("faceset", "suggestions")
    assert f"{angelina:03d}" in listed and f"{later:03d}" in listed and "same name" in listed
    server = Server(lib)
    driver = browser
    try:
        driver.get(server.url + "/suggestions")
        pairs = {card.get_attribute("data-pair"): card for card in driver.find_elements(By.CSS_SELECTOR, ".suggestion")}
        close, named = f"{angelina}-{later}", f"{min(katy, scarlett)}-{max(katy, scarlett)}"
        assert {close, named} <= set(pairs), list(pairs)
        assert len(pairs[close].find_elements(By.TAG_NAME, "img")) >= 2  # a preview of both
        screenshot(driver, tmp_path / "suggestions.png")
        click_and_wait(driver, pairs[named].find_element(By.CSS_SELECTOR, "button.decline"))
        assert "not the same person" in driver.find_element(By.ID, "message").text
        pairs = {card.get_attribute("data-pair"): card for card in driver.find_elements(By.CSS_SELECTOR, ".suggestion")}
        assert named not in pairs and close in pairs
        click_and_wait(driver, pairs[close].find_element(By.CSS_SELECTOR, "button.accept"))
        assert f"merged {later:03d} into {angelina:03d}" in driver.find_element(By.ID, "message").text
        assert not driver.find_elements(By.CSS_SELECTOR, ".suggestion")
    finally:
        output = server.stop()
    assert "Traceback" not in output, output
    assert lib.sets()[later]["merged_into"] == angelina
    lib.cli("sync", "--reconcile")  # never again, and never merged automatically
    assert "no suggestions" in lib.cli("faceset", "suggestions")
    assert lib.sets()[katy]["merged_into"] is None and lib.sets()[scarlett]["merged_into"] is None


def test_the_pool_is_a_work_queue_in_a_browser(fake: FakeImmich, tmp_path: Path, browser: object) -> None:
    """331 pooled faces in id order, two photos of one person with no way to make a faceset of them,
    strangers that could not be put away. Now: groups that look alike, a selection (shift for a
    range), a new faceset of it, strangers put away; bulk reject on a faceset's page."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    lib = Library(fake, tmp_path / "run")
    lib.add(["wild/biden", "wild/rose_leslie", "wild/katy_perry"])  # two photos of each of the first two: pooled
    lib.cli("sync")
    katy = lib.number_of("katy")
    pooled = {int(face): label for face, label in lib.sql(
        "SELECT f.id, a.original_file_name FROM faces f JOIN assets a ON a.sha256 = f.sha256 WHERE f.identity IS NULL"
    )}  # fmt: skip
    biden = sorted(face for face, name in pooled.items() if "biden" in name)
    assert len(biden) == 2 and katy
    server = Server(lib)
    driver = browser
    try:
        driver.get(server.url + "/pool")
        groups = driver.find_elements(By.CSS_SELECTOR, "section.group")
        together = [
            {int(card.get_attribute("data-face")) for card in group.find_elements(By.CSS_SELECTOR, ".card.face")}
            for group in groups
        ]
        assert set(biden) in together, together  # his two photos look alike
        screenshot(driver, tmp_path / "pool.png")
        boxes = {int(box.get_attribute("value")): box for box in driver.find_elements(By.CSS_SELECTOR, "input.pick")}
        order = list(boxes)
        first, second = sorted(order.index(face) for face in biden)
        assert second == first + 1  # one group: side by side
        boxes[order[first]].click()
        ActionChains(driver).key_down(Keys.SHIFT).click(boxes[order[second]]).key_up(Keys.SHIFT).perform()
        assert "2 ticked" in driver.find_element(By.ID, "ticked").text
        click_and_wait(driver, driver.find_element(By.ID, "gather"))
        assert "made the new faceset" in driver.find_element(By.ID, "message").text
        new = max(lib.sets())
        assert sorted(lib.faces(new)) == biden
        strangers = [face for face in pooled if face not in biden]
        driver.get(server.url + "/pool")
        for box in driver.find_elements(By.CSS_SELECTOR, "input.pick"):
            box.click()
        click_and_wait(driver, driver.find_element(By.ID, "put-away"))
        assert f"put away {len(strangers)} faces" in driver.find_element(By.ID, "message").text
        assert not driver.find_elements(By.CSS_SELECTOR, "input.pick")
        assert lib.sql("SELECT COUNT(*) FROM faces WHERE held = 'put away'") == [(len(strangers),)]

        # bulk reject on a faceset's page: one correction per face
        driver.get(f"{server.url}/faceset/{katy}")
        ticked = sorted(lib.faces(katy))[:2]
        for face in ticked:
            driver.find_element(By.CSS_SELECTOR, f'input[name="face"][value="{face}"]').click()
        click_and_wait(driver, driver.find_element(By.ID, "reject-ticked"))
        assert "2 faces" in driver.find_element(By.ID, "message").text
        assert not set(ticked) & set(lib.faces(katy))
    finally:
        output = server.stop()
    assert "Traceback" not in output, output


def test_the_page_shows_what_the_export_took_and_left_out(fake: FakeImmich, tmp_path: Path, browser: object) -> None:
    """The page hid what the export does: faces left out of the swap export and the top bundle were
    not marked, and it showed the distance faces were assigned at, not the one the export decides by."""
    from selenium.webdriver.common.by import By

    add_photos(fake, ["wild/angelina_jolie"])
    image = cv2.imread(str(PHOTOS / "wild" / "angelina_jolie" / "img1.jpg"))
    smaller = cv2.resize(image, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)
    fake.add_asset("alice", cv2.imencode(".jpg", smaller)[1].tobytes(), "img1-small.jpg")  # a near-duplicate
    lib = Library(fake, tmp_path / "run", extra='\n[export]\nformat = "swap"\ntop_n = 3\n')
    lib.cli("sync")
    number = lib.number_of("angelina")
    manifest = json.loads((lib.facesets / f"faceset_{number:03d}" / "manifest.json").read_text())
    left = {entry["face_id"]: entry["why"] for entry in manifest["left_out"]}
    assert left, "the copy is a near-duplicate, left out of the swap set"
    ranked = [face["face_id"] for face in manifest["faces"]]
    server = Server(lib)
    driver = browser
    try:
        driver.get(f"{server.url}/faceset/{number}")
        badges = {
            int(card.get_attribute("data-face")): card.find_element(By.CSS_SELECTOR, ".badge.export").text
            for card in driver.find_elements(By.CSS_SELECTOR, ".card.face")
        }
        for face, why in left.items():
            assert badges[face] == f"left out: {why}"
        assert [badges[face] for face in ranked[:3]] == ["top 1", "top 2", "top 3"]
        assert all(badges[face] == f"exported #{rank}" for rank, face in enumerate(ranked, 1) if rank > 3)
        shown = driver.find_elements(By.CSS_SELECTOR, '.card.face span[title^="distance from the set"]')
        assert shown and all(element.text.endswith("from centre") for element in shown)
    finally:
        output = server.stop()
    assert "Traceback" not in output, output


def test_a_face_opens_in_its_photo_with_its_box_date_name_and_a_link_to_immich(
    fake: FakeImmich, tmp_path: Path, browser: object
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    lib = Library(fake, tmp_path / "run")
    lib.add(["wild/obama"])
    lib.config.write_text(
        lib.config.read_text().replace("api_key_env", 'web_url = "https://photos.example.org"\napi_key_env')
    )
    lib.cli("sync")
    number = lib.number_of("obama")
    face = min(lib.faces(number))
    detail = next(entry for entry in lib.show(number)["face_list"] if entry["face_id"] == face)
    server = Server(lib)
    driver = browser
    try:
        driver.get(f"{server.url}/faceset/{number}")
        click_and_wait(driver, driver.find_element(By.CSS_SELECTOR, f'.card.face[data-face="{face}"] a'))
        assert driver.current_url.endswith(f"/photo/{face}")
        picture = driver.find_element(By.CSS_SELECTOR, "#photo img")
        WebDriverWait(driver, 60).until(
            lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", picture)
        )
        box = driver.find_element(By.ID, "box").rect
        shown = picture.rect
        assert 0 < box["width"] < shown["width"] and 0 < box["height"] < shown["height"]
        assert shown["x"] <= box["x"] and box["x"] + box["width"] <= shown["x"] + shown["width"] + 1
        assert driver.find_element(By.ID, "file-name").text == detail["file_name"]
        assert driver.find_element(By.ID, "taken").get_attribute("datetime") == detail["taken"]
        link = driver.find_element(By.ID, "in-immich").get_attribute("href")
        assert link == f"https://photos.example.org/photos/{detail['asset_id']}"
        assert fake.count("GET", f"/api/assets/{detail['asset_id']}/thumbnail") >= 1  # the preview, fetched server-side
        assert "x-api-key" not in driver.page_source.lower()
    finally:
        output = server.stop()
    assert "Traceback" not in output, output


def test_a_form_from_a_tab_opened_before_a_restart_is_not_lost(
    fake: FakeImmich, tmp_path: Path, browser: object
) -> None:
    from selenium.webdriver.common.by import By

    lib = Library(fake, tmp_path / "run")
    lib.add(["wild/obama"])
    lib.cli("sync")
    number = lib.number_of("obama")
    server = Server(lib)
    driver = browser
    try:
        driver.get(f"{server.url}/faceset/{number}")
        port = server.port
        server.stop()
        server = Server(lib, port=port)  # restarted: the tab's form still belongs to this server
        field = driver.find_element(By.CSS_SELECTOR, 'input[name="name"]')
        field.clear()
        field.send_keys("Barack")
        click_and_wait(driver, driver.find_element(By.ID, "save-name"))
        assert "named faceset" in driver.find_element(By.ID, "message").text
        assert lib.sets()[number]["name"] == "Barack"

        # a new state directory's token: the page explains, keeps what was typed, and sends it again
        driver.get(f"{server.url}/faceset/{number}")
        server.stop()
        (lib.state / "web-csrf").unlink()
        server = Server(lib, port=port)
        field = driver.find_element(By.CSS_SELECTOR, 'input[name="name"]')
        field.clear()
        field.send_keys("Barack Obama")
        click_and_wait(driver, driver.find_element(By.ID, "save-name"))
        assert "Nothing you typed is lost" in driver.find_element(By.ID, "resend").text
        assert "Barack Obama" in driver.page_source and lib.sets()[number]["name"] == "Barack"
        click_and_wait(driver, driver.find_element(By.ID, "send-again"))
        assert "named faceset" in driver.find_element(By.ID, "message").text
        assert lib.sets()[number]["name"] == "Barack Obama"
    finally:
        output = server.stop()
    assert "Traceback" not in output, output
