"""The engine on the real store and doit: caching, resume after kill -9, concurrent builds."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

TOY = Path(__file__).resolve().parents[1] / "toy_pipeline.py"


def toy(cache, seed, log, env=None, wait=True):
    proc = subprocess.Popen([sys.executable, str(TOY), str(cache), seed, str(log)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    if not wait:
        return proc
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return dict(item.split("=") for item in out.split())


def ran(log):
    return [line.split()[0] for line in Path(log).read_text().splitlines()] if Path(log).exists() else []


def test_second_build_is_fully_cached(tmp_path):
    log = tmp_path / "log"
    first = toy(tmp_path / "c", "a", log)
    assert set(first.values()) == {"ran"}
    second = toy(tmp_path / "c", "a", log)
    assert set(second.values()) == {"cached"}
    assert ran(log) == ["one", "two", "three", "four"]


def test_changed_input_reruns_everything_downstream(tmp_path):
    log = tmp_path / "log"
    toy(tmp_path / "c", "a", log)
    result = toy(tmp_path / "c", "b", log)
    assert set(result.values()) == {"ran"}


def test_kill_9_mid_build_then_rerun_runs_only_unfinished_steps(tmp_path):
    log, cache = tmp_path / "log", tmp_path / "c"
    proc = toy(cache, "a", log, env={"TOY_SLOW": "three"}, wait=False)
    deadline = time.monotonic() + 60
    while ran(log) != ["one", "two", "three"]:
        assert time.monotonic() < deadline and proc.poll() is None, "toy build never reached step three"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    result = toy(cache, "a", log)
    assert result == {"one": "cached", "two": "cached", "three": "ran", "four": "ran"}
    assert ran(log) == ["one", "two", "three", "three", "four"]


def test_two_concurrent_builds_run_each_step_once(tmp_path):
    log, cache = tmp_path / "log", tmp_path / "c"
    env = {"TOY_SLOW": "two", "TOY_SLEEP": "2"}
    procs = [toy(cache, "a", log, env=env, wait=False) for _ in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(dict(item.split("=") for item in out.split()))
    assert sorted(ran(log)) == sorted(["one", "two", "three", "four"])  # each step ran once in all
    for step in ("one", "two", "three", "four"):
        assert sorted(o[step] for o in outs) == ["cached", "ran"]


def test_corrupted_output_is_detected_removed_and_rebuilt(tmp_path):
    import json

    log, cache = tmp_path / "log", tmp_path / "c"
    toy(cache, "a", log)
    record = next(json.loads(p.read_text()) for p in (cache / "actions").glob("*/*.json")
                  if json.loads(p.read_text())["step"] == "two")
    blob = cache / "blobs" / record["outputs"]["out"].replace(":", "/")
    good = blob.read_bytes()
    os.chmod(blob, 0o644)
    blob.write_bytes(good.replace(b"two", b"TWO"))  # same size: only the digest can tell
    result = toy(cache, "a", log)
    assert result == {"one": "cached", "two": "ran", "three": "cached", "four": "cached"}
    assert blob.read_bytes() == good


def test_recheck_finds_a_step_that_is_not_reproducible(tmp_path):
    from banger.engine.tasks import Build, step_task
    from banger.core.store import Store

    store = Store(tmp_path / "c")
    build = Build(store, log=lambda m: None)

    def make(name, payload):
        def work(run):
            out = run.stage / "out"
            out.write_bytes(payload())
            return {"out": run.store.ingest_file(out)}
        step_task(build, name=name, version="1", work=work, inputs=lambda: {"seed": "s"})
        build.execute(build.steps[name])

    make("steady", lambda: b"same bytes every time")
    make("noisy", lambda: os.urandom(64))
    assert build.recheck("steady") == []
    (difference,) = build.recheck("noisy")
    assert difference.startswith("noisy.out: cached blake3:") and "block 0" in difference
    assert len(list(store.artifacts())) == 2  # the re-run went to a scratch store, not the cache
