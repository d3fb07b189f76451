"""Build journals: what a build in progress is doing, for `banger ui` in another process.

A build appends JSON lines to `<state>/builds/<id>.jsonl`: `begin` (pid and its start time, the
build's words), `step-start`, `step` (ran or cached, seconds), `log` (the lines the terminal
shows) and `end` (ok or the error). A journal without `end` whose process is gone (killed) is
`killed`, never running forever. Only the last KEEP finished journals are kept.
"""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from banger.core import procs

KEEP = 20


def journal_dir(state: Path) -> Path:
    return Path(state) / "builds"


class Journal:
    """The writer one build holds; every write is one line, flushed (a reader sees whole lines)."""

    def __init__(self, state: Path, words: list[str]):
        self.dir = journal_dir(state)
        self.dir.mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        self.id = f"{time.strftime('%Y%m%d-%H%M%S')}-{pid}-{os.urandom(3).hex()}"
        self.path = self.dir / f"{self.id}.jsonl"
        self._lock = threading.Lock()
        self._file = open(self.path, "a", encoding="utf-8")
        self.write("begin", pid=pid, started=procs.start_time(pid), words=list(words))

    def write(self, event: str, **fields) -> None:
        line = json.dumps({"event": event, "at": time.time(), **fields}) + "\n"
        with self._lock:
            if self._file.closed:
                return
            try:
                self._file.write(line)
                self._file.flush()
            except OSError:  # a full disk must not fail the build over its journal
                pass

    def close(self, ok: bool, error: str | None = None) -> None:
        self.write("end", ok=ok, error=error)
        with self._lock:
            self._file.close()
        prune(self.dir)


def prune(directory: Path, keep: int = KEEP) -> None:
    """Drop the oldest finished (or killed) journals beyond `keep`."""
    done = [s for s in (read(p) for p in sorted(directory.glob("*.jsonl"))) if s.state != "running"]
    for summary in done[:-keep] if keep else done:
        summary.path.unlink(missing_ok=True)


@dataclass
class BuildSummary:
    id: str
    path: Path
    words: list[str] = field(default_factory=list)
    began: float = 0.0
    state: str = "running"  # running | done | failed | killed
    error: str | None = None
    events: list[dict] = field(default_factory=list)


def events(path: Path, offset: int = 0) -> tuple[list[dict], int]:
    """The whole lines from byte `offset` on, and the offset after them (a line still being
    written is left for the next call)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    out = []
    for line in data[:end].splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict):
            out.append(item)
    return out, offset + end


def state_of(items: list[dict]) -> tuple[str, str | None]:
    """(state, error) of a journal from its events: an `end` settles it; else its writer must
    still be the same live process, or the build was killed."""
    for item in reversed(items):
        if item.get("event") == "end":
            return ("done", None) if item.get("ok") else ("failed", item.get("error"))
    begin = next((i for i in items if i.get("event") == "begin"), {})
    pid, started = begin.get("pid"), begin.get("started")
    if isinstance(pid, int) and procs.alive(pid, started):
        return "running", None
    return "killed", "the build's process is gone (killed?) before it finished"


def read(path: Path) -> BuildSummary:
    items, _ = events(path)
    begin = next((i for i in items if i.get("event") == "begin"), {})
    state, error = state_of(items)
    return BuildSummary(id=path.stem, path=path, words=begin.get("words", []), began=begin.get("at", 0.0),
                        state=state, error=error, events=items)


def all_builds(state: Path) -> list[BuildSummary]:
    """Every kept journal, newest first."""
    found = [read(p) for p in journal_dir(state).glob("*.jsonl")]
    return sorted(found, key=lambda s: s.began, reverse=True)


def find(state: Path, build_id: str) -> BuildSummary | None:
    if not build_id or "/" in build_id or build_id.startswith("."):
        return None
    path = journal_dir(state) / f"{build_id}.jsonl"
    return read(path) if path.is_file() else None
