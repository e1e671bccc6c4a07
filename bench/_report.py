"""Shared by the benchmarks: write a section of docs/performance.md."""

from __future__ import annotations

from pathlib import Path

PERFORMANCE_DOC = Path(__file__).resolve().parent.parent / "docs" / "performance.md"


def update_section(path: Path, heading: str, body: str) -> None:
    """Replace the ``heading`` section of a markdown file (up to the next ``## ``), or append it."""
    text = path.read_text() if path.exists() else "# Performance\n\n"
    start = text.find(heading + "\n")
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + body
    else:
        end = text.find("\n## ", start + len(heading))
        rest = "\n" + text[end + 1 :] if end != -1 else ""
        text = text[:start] + body.rstrip("\n") + "\n" + rest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
