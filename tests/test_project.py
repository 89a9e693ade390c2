"""Project hygiene: the README's commands, CI, exported names and docstrings stay honest."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import syncengine

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    quick = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)\n```", quick, flags=re.S)


def test_readme_has_exactly_two_commands_demo_and_tests() -> None:
    commands = readme_commands()
    assert len(commands) == 2
    demo, tests = commands
    assert demo.startswith("python3 -m venv .venv") and demo.endswith("syncengine demo")
    assert "pytest" in tests and "'.[test]'" in tests


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert readme_commands()[1] in ci.splitlines()


def test_all_is_honest() -> None:
    for name in syncengine.__all__:
        assert hasattr(syncengine, name), name
    public = {n for n in dir(syncengine) if not n.startswith("_")}
    exported_types = {n for n in public if inspect.isclass(getattr(syncengine, n))}
    assert exported_types <= set(syncengine.__all__)


def test_every_public_name_has_a_docstring() -> None:
    missing = []
    for name in syncengine.__all__:
        obj = getattr(syncengine, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            if not (obj.__doc__ or "").strip():
                missing.append(name)
            for attr, member in vars(obj).items() if inspect.isclass(obj) else []:
                if attr.startswith("_") or not inspect.isfunction(member):
                    continue
                if not (member.__doc__ or "").strip() and obj.__module__.startswith(
                    ("syncengine.client", "syncengine.store", "syncengine.blocking")
                ):
                    missing.append(f"{name}.{attr}")
    assert not missing, f"public names without a docstring: {missing}"


def test_core_imports_no_io_library() -> None:
    # Dependencies point inward: core/, models, events and wire import no I/O library.
    for module in (
        "syncengine.core.sync",
        "syncengine.core.policy",
        "syncengine.core.typing",
        "syncengine.models",
        "syncengine.events",
        "syncengine.wire",
    ):
        source = inspect.getsource(importlib.import_module(module))
        for banned in (
            "import httpx",
            "import websockets",
            "import sqlite3",
            "sqlite_utils",
            "from websockets",
            "from httpx",
        ):
            assert banned not in source, f"{module} imports {banned}"


def test_changelog_and_docs_exist() -> None:
    assert "## [Unreleased]" in (ROOT / "CHANGELOG.md").read_text()
    for doc in ("protocol.md", "embedding.md", "store.md"):
        assert (ROOT / "docs" / doc).exists(), doc
