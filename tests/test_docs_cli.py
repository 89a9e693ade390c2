"""docs/cli.md documents every command the CLI registers, with its options and JSON keys."""

from __future__ import annotations

import re
from pathlib import Path

import click

from syncengine.cli import cli
from tests.test_cli import (
    CONVERSATION_KEYS,
    MESSAGE_KEYS,
    OUTBOX_KEYS,
    STATUS_KEYS,
    SYNC_KEYS,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"

#: The JSON keys each command prints with --json: the product's interface.
JSON_KEYS: dict[str, set[str]] = {
    "login": {"server", "user", "device", "protocol"},
    "logout": {"logged_out", "had_token"},
    "status": STATUS_KEYS | {"pending", "sending", "failed", "running", "pid"},
    "conversations": CONVERSATION_KEYS,
    "create": {"id"},
    "send": {"op_id"},
    "edit": {"op_id"},
    "delete": {"op_id"},
    "read": {"op_id"},
    "cancel": {"cancelled", "kind"},
    "react": {"op_id"},
    "members": {"id", "members", "queued"},
    "messages": MESSAGE_KEYS,
    "outbox": OUTBOX_KEYS,
    "retry": {"requeued"},
    "sync": SYNC_KEYS,
    "demo": {
        "ok",
        "messages",
        "on_server",
        "lost",
        "duplicated",
        "converge_s",
        "total_s",
        "peak_pending",
        "stores",
    },
}

_HEADING = re.compile(r"^## `syncengine ([a-z-]+)`\s*$", re.MULTILINE)


def sections(text: str) -> dict[str, str]:
    """Each ``## `syncengine NAME` `` section's text, by command name."""
    found: dict[str, str] = {}
    matches = list(_HEADING.finditer(text))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        # A section ends at the next level-2 heading of any kind.
        body = text[match.end() : end]
        other = re.search(r"^## ", body, re.MULTILINE)
        found[match.group(1)] = body[: other.start()] if other else body
    return found


def problems(group: click.Group, text: str) -> list[str]:
    """Everything docs/cli.md lacks or has in excess for ``group``."""
    docs = sections(text)
    out: list[str] = []
    for name, command in sorted(group.commands.items()):
        if not (command.help or "").strip():
            out.append(f"{name}: the command has no help text")
        section = docs.get(name)
        if section is None:
            out.append(f"{name}: no '## `syncengine {name}`' section in docs/cli.md")
            continue
        for param in command.params:
            if isinstance(param, click.Option):
                for opt in (*param.opts, *param.secondary_opts):
                    if opt.startswith("--") and opt not in section:
                        out.append(f"{name}: option {opt} is not documented")
        for key in sorted(JSON_KEYS.get(name, ())):
            if f"`{key}`" not in section:
                out.append(f"{name}: JSON key `{key}` is not documented")
    for name in sorted(set(docs) - set(group.commands)):
        out.append(f"{name}: documented but no such command")
    return out


def test_every_command_is_documented_with_its_options_and_keys() -> None:
    assert problems(cli, DOC.read_text(encoding="utf-8")) == []


def test_global_options_are_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    for param in cli.params:
        if isinstance(param, click.Option):
            for opt in param.opts:
                if opt.startswith("--"):
                    assert f"`{opt}" in text, opt
    assert "SYNCENGINE_DB" in text and "NO_COLOR" in text and "SYNCENGINE_PASSWORD" in text


def test_the_checker_catches_drift() -> None:
    group = click.Group()

    @group.command()
    @click.option("--loud", is_flag=True)
    def shout() -> None:
        """Shout."""

    @group.command()
    def mumble() -> None:
        pass

    text = "## `syncengine shout`\n\nShouts.\n\n## `syncengine gone`\n\nOld.\n"
    assert problems(group, text) == [
        "mumble: the command has no help text",
        "mumble: no '## `syncengine mumble`' section in docs/cli.md",
        "shout: option --loud is not documented",
        "gone: documented but no such command",
    ]
