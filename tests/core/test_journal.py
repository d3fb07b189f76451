"""Build journals (core/journal.py): what `banger ui` reads of a build in another process."""
from __future__ import annotations

import subprocess
import sys

from banger.core import journal
from tests.support_tools import REPO


def test_events_are_read_by_whole_lines_from_an_offset(tmp_path):
    j = journal.Journal(tmp_path, ["image=x"])
    j.write("step-start", step="fetch")
    items, offset = journal.events(j.path)
    assert [i["event"] for i in items] == ["begin", "step-start"]
    with open(j.path, "a") as f:
        f.write('{"event": "log", "mess')  # a line still being written
    assert journal.events(j.path, offset) == ([], offset)
    with open(j.path, "a") as f:
        f.write('age": "hi"}\n')
    items, _ = journal.events(j.path, offset)
    assert items == [{"event": "log", "message": "hi"}]


def test_state_is_running_then_done_or_failed(tmp_path):
    j = journal.Journal(tmp_path, ["image=x"])
    assert journal.read(j.path).state == "running"
    j.close(True)
    assert journal.read(j.path).state == "done"
    k = journal.Journal(tmp_path, ["image=y"])
    k.close(False, "step ext4 failed: boom")
    summary = journal.find(tmp_path, k.id)
    assert (summary.state, summary.error, summary.words) == ("failed", "step ext4 failed: boom", ["image=y"])


def test_a_killed_writer_is_killed_not_running_forever(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from banger.core.journal import Journal; "
                             "j = Journal(sys.argv[1], ['image=x']); print(j.id, flush=True); sys.stdin.read()",
                             str(tmp_path)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    build_id = proc.stdout.readline().strip()
    assert journal.find(tmp_path, build_id).state == "running"
    proc.kill()
    proc.wait()
    assert journal.find(tmp_path, build_id).state == "killed"


def test_only_the_last_finished_journals_are_kept_and_ids_are_not_paths(tmp_path):
    running = journal.Journal(tmp_path, ["image=still"])
    for n in range(journal.KEEP + 3):
        journal.Journal(tmp_path, [f"image={n}"]).close(True)
    kept = journal.all_builds(tmp_path)
    assert len(kept) == journal.KEEP + 1 and running.id in {b.id for b in kept}
    assert journal.find(tmp_path, "../x") is None and journal.find(tmp_path, "nope") is None
