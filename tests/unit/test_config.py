"""Config: lookup order, validation (every problem at once), secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from facesyncd.config import ModelSettings, Secret, find_config, load_settings
from facesyncd.errors import ConfigError

MINIMAL = '[[immich]]\nname = "alice"\nurl = "https://photos.example.org/"\napi_key_env = "FSD_KEY"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_defaults_and_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FSD_KEY", "secret-value")
    settings = load_settings(write(tmp_path, 'state_dir = "state"\n' + MINIMAL))
    assert settings.state_dir == tmp_path / "state"
    assert settings.facesets_dir == tmp_path / "state" / "facesets"
    assert settings.immich[0].url == "https://photos.example.org"
    assert settings.immich[0].api_key.reveal() == "secret-value"
    assert settings.identities.match_distance == 0.45 and settings.identities.cluster_distance == 0.55
    assert settings.faces.min_face_px == 90 and settings.model.pack == "buffalo_l"
    assert "secret-value" not in repr(settings) and "secret-value" not in str(settings.immich[0].api_key)


def test_key_file_and_systemd_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "alice-key").write_text("from-credentials\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
    text = MINIMAL.replace('api_key_env = "FSD_KEY"', 'api_key_file = "alice-key"')
    assert load_settings(write(tmp_path, text)).immich[0].api_key == Secret("from-credentials")


def test_every_problem_is_reported_with_the_file_name(tmp_path: Path) -> None:
    text = (
        'state_dir = 5\nfoo = 1\n[model]\nproviders = "auto"\ndet_size = 641\n[faces]\nmin_det_score = 2\n'
        '[identities]\nmin_faceset_faces = 1\nextra = true\n[[immich]]\nname = "bad name!"\nurl = "https://x"\n'
    )
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_settings(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: 9 problem(s)")
    for needle in (
        "state_dir: must be a string",
        "foo: unknown key",
        "model.providers: must be a list",
        "model.det_size",
        "faces.min_det_score",
        "identities.min_faceset_faces",
        "identities.extra: unknown key",
        "immich[0].name",
        "set exactly one of api_key_env",
    ):
        assert needle in message


def test_not_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "state_dir = [\n"))


def test_status_needs_no_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FSD_KEY", raising=False)
    path = write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError, match="FSD_KEY is not set"):
        load_settings(path)
    assert load_settings(path, secrets=False).immich[0].name == "alice"


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = tmp_path / "explicit.toml"
    monkeypatch.setenv("FACESYNCD_CONFIG", str(tmp_path / "from-env.toml"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert find_config(explicit) == explicit
    assert find_config(None) == tmp_path / "from-env.toml"
    monkeypatch.delenv("FACESYNCD_CONFIG")
    assert find_config(None) == Path("/etc/facesyncd/config.toml")
    user = tmp_path / "xdg" / "facesyncd" / "config.toml"
    user.parent.mkdir(parents=True)
    user.write_text("")
    assert find_config(None) == user


def test_relative_paths_follow_the_config_file_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "keys").mkdir()
    (folder / "keys" / "alice").write_text("key-from-a-relative-file\n")
    text = MINIMAL.replace('api_key_env = "FSD_KEY"', 'api_key_file = "keys/alice"')
    text = 'state_dir = "state"\n[model]\npack = "./packs/buffalo_l"\n' + text
    config = write(folder, text)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = load_settings(config)
    assert settings.immich[0].api_key == Secret("key-from-a-relative-file")
    assert settings.model.pack_dir() == folder / "packs" / "buffalo_l"
    assert settings.state_dir == folder / "state"
    assert ModelSettings(pack="buffalo_l").pack_dir().name == "buffalo_l"  # a name stays a name


def test_the_sample_config_is_every_default_and_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The schema is written once: the sample (facesyncd init, docs/configuration.md) comes from the same
    declarations as the defaults and the checks."""
    import tomllib

    from facesyncd.config import SECTIONS, sample_config, settings_from_dict

    monkeypatch.setenv("IMMICH_API_KEY_ALICE", "sample-key-123456")
    settings = settings_from_dict(tomllib.loads(sample_config()), tmp_path / "config.toml")
    for name, kind in SECTIONS.items():
        assert getattr(settings, name) == kind(), name
    assert settings.immich[0].url == "https://photos.example.org"


def test_the_configuration_reference_is_generated_from_the_code() -> None:
    """docs/configuration.md cannot drift: it is what `python -m facesyncd.config` prints, every
    setting with its default, comment and allowed values."""
    from conftest import REPO
    from facesyncd.config import SECTIONS, _settings_fields, reference, sample_config

    written = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert written == reference(), "docs/configuration.md is stale: python -m facesyncd.config > docs/configuration.md"
    assert f"```toml\n{sample_config()}```" in written
    for name, kind in SECTIONS.items():
        for item, _ in _settings_fields(kind):
            assert f"| `{item.name}` |" in written.split(f"## [{name}]")[1], f"{name}.{item.name}"
