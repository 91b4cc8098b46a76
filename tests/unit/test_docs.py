"""The docs say what the code does: every command the README's table lists exists (and every command is
listed), every exit code the table gives is one facesyncd exits with (and every one it exits with is
given), and every link between the pages leads somewhere."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import REPO, run_cli

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def commands() -> set[tuple[str, ...]]:
    """Every command path the CLI has: ("sync",), ("faceset", "merge"), ..."""
    import typer.main

    from facesyncd.cli import app

    def walk(command: object, path: tuple[str, ...]) -> set[tuple[str, ...]]:
        children = getattr(command, "commands", None)
        if not children:
            return {path}
        return set().union(*(walk(child, (*path, name)) for name, child in children.items()))

    return walk(typer.main.get_command(app), ())


def listed() -> set[tuple[str, ...]]:
    """The command paths the README's command table names, in its first column."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Commands", 1)[1].split("\n\n", 2)[1]
    groups = {path[0] for path in commands() if len(path) == 2}
    found: set[tuple[str, ...]] = set()
    for row in table.splitlines()[2:]:
        group: str | None = None
        for segment in re.findall(r"`([^`]*)`", row.split(" | ")[0]):
            words = [word for word in segment.replace("[--config PATH]", "").split() if word != "facesyncd"]
            if not words:
                continue
            if words[0] in groups:
                group = words[0]
                found.add((group, words[1]))
            elif group is not None:
                found.add((group, words[0]))
            else:
                found.add((words[0],))
    return found


def test_every_command_is_in_the_readmes_table_and_every_one_listed_exists() -> None:
    assert listed() == commands()
    for path in sorted(commands()):
        result = run_cli(*path, "--help")
        assert result.returncode == 0 and "Usage:" in result.stdout, path


def test_every_exit_code_in_the_table_is_one_facesyncd_exits_with() -> None:
    from facesyncd import errors
    from facesyncd.entry import EXIT_INTERRUPTED

    page = (REPO / "docs" / "commands.md").read_text(encoding="utf-8")
    table = page.split("## Exit codes", 1)[1]
    documented = {int(code) for code in re.findall(r"(?m)^\| (\d+) \|", table)}
    raised = {
        kind.exit_code
        for kind in vars(errors).values()
        if isinstance(kind, type) and issubclass(kind, errors.FacesyncError)
    }
    # 0: done; 2: a usage error (typer's, and ConfigError's); 130: interrupted
    assert documented == raised | {0, 2, EXIT_INTERRUPTED}


def _anchors(page: Path) -> set[str]:
    headings = re.findall(r"(?m)^#+ (.+)$", page.read_text(encoding="utf-8"))
    return {re.sub(r"[^a-z0-9 _-]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_every_link_between_the_pages_leads_somewhere() -> None:
    broken = []
    for page in PAGES:
        text = re.sub(r"(?s)```.*?```", "", page.read_text(encoding="utf-8"))
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # a web address
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == []


def test_the_readmes_first_screen_is_the_quick_start() -> None:
    """On a fresh Debian, as root and as a user: install, a config, the model, a sync, where things are."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    for step in ("./install.sh", "facesyncd init", "facesyncd model fetch", "facesyncd sync", "facesyncd status"):
        assert step in quick, step
    assert "as root" in quick
    assert len(readme.splitlines()) < 150, "the README grows again: put the detail in docs/"
