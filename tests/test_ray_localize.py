"""`cream localize --ray`: the records of single-process `cream localize` (to 1e-5), corrupt
files as error rows, JSONL and Parquet shards with a manifest, resume after a killed run, and a
cluster reached by address (`ray start --head` on 127.0.0.1). Ray runs on this machine only."""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from cli_helpers import CLI, ENV, assert_one_error, run, run_process

ray = pytest.importorskip("ray", reason="ray (the `ray` extra) not installed")
pytest.importorskip("ray.data", reason="Ray Data not installed")

OBJECT_STORE = 200 * 1024 * 1024  # small: a test machine's /dev/shm may be small
AUTH: dict[str, str] = {}  # the head node's token settings, for its clients


@pytest.fixture(scope="module")
def inputs(tiny, tmp_path_factory) -> dict:
    """Good test images, corrupt ones, a missing path and a duplicate, in a text file of paths,
    with the single-process `cream localize` records of the same list."""
    root = tmp_path_factory.mktemp("rayin")
    good = sorted((tiny["data"] / "images").rglob("*.png"))[:20]
    png = good[0].read_bytes()
    (root / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "garbage.jpg").write_bytes(b"not an image at all")
    (root / "empty.png").write_bytes(b"")
    paths = [*good[:10], root / "truncated.png", *good[10:], root / "garbage.jpg", root / "missing.png",
             root / "empty.png", good[3]]
    listing = root / "inputs.txt"
    listing.write_text("".join(f"{p}\n" for p in paths))
    single = root / "single.jsonl"
    run("localize", listing, "--model", tiny["model"], "--out", single, "--batch-size", "4", expect=1)
    records = [json.loads(line) for line in single.read_text().splitlines()]
    assert sum("error" in r for r in records) == 4
    return {"listing": listing, "paths": paths, "single": records, "model": tiny["model"], "root": root}


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray on two CPUs, started by the test; `--ray` uses the running instance."""
    ray.init(num_cpus=2, object_store_memory=OBJECT_STORE, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    yield
    ray.shutdown()


def read_shards(folder: Path) -> list[dict]:
    manifest = json.loads((folder / "manifest.json").read_text())
    records = []
    for shard in manifest["shards"]:
        path = folder / shard["file"]
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
            records += [{k: v for k, v in row.items() if v is not None} for row in rows]
        else:
            records += [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == manifest["rows"]
    return records


def assert_same_records(ours: list[dict], reference: list[dict]) -> None:
    """The same multiset of records: error rows equal, results equal with scores and boxes to 1e-5."""
    key = lambda r: (r["image"], json.dumps({k: v for k, v in r.items() if k not in ("score", "boxes")}))  # noqa
    ours, reference = sorted(ours, key=key), sorted(reference, key=key)
    assert len(ours) == len(reference)
    for a, b in zip(ours, reference):
        assert a.keys() == b.keys() and a["image"] == b["image"]
        if "error" in b:
            assert a == b
            continue
        assert {k: v for k, v in a.items() if k not in ("score", "boxes")} == \
               {k: v for k, v in b.items() if k not in ("score", "boxes")}
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
        assert len(a["boxes"]) == len(b["boxes"])
        for u, v in zip(a["boxes"], b["boxes"]):
            assert u == pytest.approx(v, abs=1e-5)


@pytest.mark.parametrize("shard_format", ["jsonl", "parquet"])
def test_ray_records_equal_single_process(inputs, local_ray, tmp_path, shard_format):
    out = tmp_path / "out"
    result = run("localize", inputs["listing"], "--model", inputs["model"], "--out", out, "--ray", "--actors", "2",
                 "--batch-size", "4", "--shard-format", shard_format, "--json", expect=1)  # 1: some images failed
    summary = json.loads(result.stdout)
    assert summary["written"] == len(inputs["paths"]) and summary["errors"] == 4 and summary["complete"]
    assert sum(line.startswith("cream: error:") for line in result.stderr.splitlines()) == 4
    assert_same_records(read_shards(out), inputs["single"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["rows"] == len(inputs["paths"]) and manifest["errors"] == 4
    assert all(s["file"].endswith(shard_format) for s in manifest["shards"])
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [".lock"]  # no temporary file left


def test_resume_redoes_only_missing_shards(inputs, local_ray, tmp_path):
    out = tmp_path / "out"
    argv = ["localize", inputs["listing"], "--model", inputs["model"], "--out", out, "--ray", "--batch-size", "4",
            "--json"]
    run(*argv, expect=1)
    shards = sorted(out.glob("part-*.jsonl"))
    lost = len(shards[1].read_text().splitlines())
    shards[1].unlink()  # as if the run had been killed before this shard was written
    (out / f".{shards[2].name}.abc.tmp").write_text('{"image": "half written')  # a shard cut off by a kill
    summary = json.loads(run(*argv).stdout)
    assert summary["skipped"] == len(inputs["paths"]) - lost and summary["written"] == lost
    assert_same_records([r for s in sorted(out.glob("part-*.jsonl")) for r in map(json.loads, s.read_text()
                                                                                      .splitlines())],
                        inputs["single"])
    assert not list(out.glob(".*.tmp"))
    again = json.loads(run(*argv, expect=0).stdout)  # all done: nothing to do, success
    assert again["written"] == 0 and again["skipped"] == len(inputs["paths"])


def test_folder_of_another_model_or_not_ours_is_refused(inputs, local_ray, tiny, tmp_path):
    out = tmp_path / "out"
    run("localize", inputs["listing"], "--model", inputs["model"], "--out", out, "--ray")
    other = tmp_path / "other.onnx"
    run("export", "--checkpoint", tiny["ckpt"], "--out", other, "--mode", "cam", expect=0)
    assert_one_error(run("localize", inputs["listing"], "--model", other, "--out", out, "--ray"), "another model")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert_one_error(run("localize", inputs["listing"], "--model", inputs["model"], "--out", foreign, "--ray"),
                     "not a cream localize --ray folder")
    assert_one_error(run("localize", inputs["listing"], "--model", inputs["model"], "--out", out, "--ray",
                         "--overlays", tmp_path / "ov"), "--overlays", "--ray")
    assert_one_error(run("localize", inputs["listing"], "--model", inputs["model"], "--out", tmp_path / "r.jsonl",
                         "--actors", "4"), "--actors goes with --ray")


def test_second_writer_on_one_folder_is_refused(inputs, local_ray, tmp_path):
    from cream_rt.ray_localize import _model_bytes
    from cream_rt.shards import ShardFolder

    _, sha = _model_bytes(str(inputs["model"]))
    with ShardFolder(tmp_path / "out", "jsonl", sha, str(inputs["model"])) as running:  # a run in progress
        running.start_run({})
        assert_one_error(run("localize", inputs["listing"], "--model", inputs["model"], "--out", tmp_path / "out",
                             "--ray"), "another `cream localize --ray` is writing")


def test_api_function_beside_localizer(inputs, local_ray, tmp_path):
    from cream_rt.ray_localize import localize_ray

    summary = localize_ray(inputs["paths"], str(inputs["model"]), tmp_path / "api", actors=1, batch_size=8,
                           shard_format="parquet")
    assert summary["written"] == len(inputs["paths"])
    assert_same_records(read_shards(tmp_path / "api"), inputs["single"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head` on 127.0.0.1 as a cluster user starts it, stopped by ending its
    `--block` process (which stops only this head, not other Ray instances)."""
    port = _free_port()
    ray_cli = Path(sys.executable).with_name("ray")
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    # token authentication, set the same on the head and every client as Ray's docs ask; the
    # token is this test's own, not ~/.ray/auth_token
    AUTH.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    head = subprocess.Popen([str(ray_cli), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                             "--num-cpus=1", f"--object-store-memory={OBJECT_STORE}", "--include-dashboard=false",
                             "--disable-usage-stats", "--block", f"--temp-dir={temp}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**ENV, **AUTH},
                            start_new_session=True)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if head.poll() is not None:
                pytest.fail(f"ray start --head exited: {head.stderr.read().decode()[-1000:]}")
            time.sleep(0.5)
    else:
        pytest.fail("ray start --head did not open its port in 90 s")
    yield address
    os.killpg(head.pid, signal.SIGTERM)  # the whole group: `ray start` and the node's processes
    try:
        head.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.pid, signal.SIGKILL)
    head.wait(timeout=30)
    shutil.rmtree(temp, ignore_errors=True)


def test_cluster_by_address_and_resume_after_kill(inputs, ray_head, tmp_path):
    """The CLI in its own process against `ray start --head`: killed (SIGKILL) once shards are on
    disk, then re-run on the same folder, it completes with every record exactly once."""
    images = tmp_path / "many.txt"  # enough batches that the kill lands mid-run
    images.write_text(inputs["listing"].read_text() * 6)
    out = tmp_path / "out"
    argv = CLI + ["localize", str(images), "--model", str(inputs["model"]), "--out", str(out), "--ray",
                  "--ray-address", ray_head, "--actors", "2", "--batch-size", "2"]  # 2 actors on 1 CPU
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**ENV, **AUTH})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(out.glob("part-*.jsonl"))) < 3 and proc.poll() is None:
        time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=30)
    written = sorted(out.glob("part-*.jsonl"))
    assert written, proc.stderr.read().decode()[-2000:]
    for shard in written:  # every shard on disk is whole
        for line in shard.read_text().splitlines():
            json.loads(line)
    result = subprocess.run(argv + ["--json"], capture_output=True, text=True, timeout=300, env={**ENV, **AUTH})
    assert result.returncode == 1, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    total = len(inputs["paths"]) * 6
    assert summary["skipped"] + summary["written"] == total and summary["skipped"] > 0
    records = [json.loads(line) for s in sorted(out.glob("part-*.jsonl")) for line in s.read_text().splitlines()]
    assert_same_records(records, inputs["single"] * 6)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["rows"] == total and len(manifest["runs"]) == 2
    assert manifest["runs"][1]["address"] == ray_head


def test_unreachable_address_is_one_line(inputs, tmp_path):
    port = _free_port()
    started = time.monotonic()
    result = run_process("localize", inputs["listing"], "--model", inputs["model"], "--out", tmp_path / "o",
                         "--ray", "--ray-address", f"127.0.0.1:{port}")
    assert_one_error(result, "--ray-address", "no ray cluster answers")
    assert time.monotonic() - started < 60
    assert not (tmp_path / "o").exists()


def test_without_ray_installed_is_one_line(inputs, tmp_path):
    code = ("import sys; sys.modules['ray'] = None; from cream_rt.cli import main; "
            f"sys.exit(main(['localize', {str(inputs['listing'])!r}, '--model', {str(inputs['model'])!r}, "
            f"'--out', {str(tmp_path / 'o')!r}, '--ray']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert_one_error(result, "pip install 'cream-rt[ray]'")
    assert not (tmp_path / "o").exists()


def test_model_without_manifest_is_one_line(inputs, tmp_path):
    import onnx

    proto = onnx.load(str(inputs["model"]))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    assert_one_error(run("localize", inputs["listing"], "--model", bare, "--out", tmp_path / "o", "--ray"),
                     "no cream_rt manifest")
    assert not (tmp_path / "o").exists()
