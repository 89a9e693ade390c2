"""The state diagrams in docs/architecture.md are generated from the code's tables."""

from __future__ import annotations

from pathlib import Path

from syncengine.core.sync import CONNECTION_TRANSITIONS, OUTBOX_TRANSITIONS, mermaid

DOC = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"


def test_diagrams_match_the_transition_tables() -> None:
    text = DOC.read_text()
    block = text.split("<!-- BEGIN GENERATED DIAGRAMS -->", 1)[1].split(
        "<!-- END GENERATED DIAGRAMS -->", 1
    )[0]
    assert mermaid(CONNECTION_TRANSITIONS) in block, "regenerate: python -m syncengine.core.sync"
    assert mermaid(OUTBOX_TRANSITIONS) in block, "regenerate: python -m syncengine.core.sync"
