"""Training under torchrun with two CPU processes (gloo): the context embeddings stay identical
on both ranks and equal those of one process fed the same global batches in the same order
(a plain loop written here: each rank's half-batch through the model, as DDP runs it, the
losses averaged, and the one-process update over rank 0's samples then rank 1's); rank 0
alone writes the checkpoint; a killed rank ends the job with an error, not a hang."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from cli_helpers import ENV

torch = pytest.importorskip("torch")

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1"]
DDP_ENV = {**ENV, "OMP_NUM_THREADS": "1"}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*argv) -> list[str]:
    return TORCHRUN + ["--master-port", str(_free_port()), "-m", "cream_rt.train", *map(str, argv)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from cli_helpers import run

    root = tmp_path_factory.mktemp("ddp")
    run("synth", "--out", root / "data", "--train", "40", "--val", "6", "--test", "6", "--size", "64",
        "--classes", "3", expect=0)
    return root / "data"


def reference_training(data, epochs: int, batch: int, seed: int = 0, update_order: tuple[int, int] = (0, 1)):
    """One process, the same global batches in the same order: per step, rank 0's and rank 1's
    batches (from the same DistributedSampler permutation) through the model separately, as
    the two DDP replicas run them (BatchNorm sees each half), the mean of the two losses, one
    SGD step, then the one-process embedding update over rank 0's samples followed by rank 1's."""
    from cream_rt.train.trainer import TrainConfig

    config = TrainConfig(epochs=epochs, batch_size=batch, seed=seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank runs (OMP_NUM_THREADS=1): oneDNN's reductions in the same order
    try:
        return _reference_loop(data, config, seed, update_order)
    finally:
        torch.set_num_threads(threads)


def _reference_loop(data, config, seed: int, update_order: tuple[int, int]):
    from cream_rt.metadata import read_split
    from cream_rt.model import create_model
    from cream_rt.train.data import WsolImages
    from cream_rt.train.trainer import param_groups, seed_everything

    epochs, batch = config.epochs, config.batch_size
    meta = read_split(data / "metadata" / "train", require_localization=False)
    seed_everything(seed)
    model = create_model("small-cnn", meta.num_classes, pretrained=False, input_size=64)
    optimizer = torch.optim.SGD(param_groups(model, config.lr), lr=config.lr, momentum=0.9, nesterov=True,
                                weight_decay=config.weight_decay)
    images = WsolImages(meta, data / "images", 64, model.config.mean, model.config.std, train=True, seed=seed)
    loss_fn = torch.nn.CrossEntropyLoss()
    for epoch in range(epochs):
        images.epoch = epoch
        loaders = []
        for rank in range(2):
            sampler = torch.utils.data.DistributedSampler(images, 2, rank, shuffle=True, seed=seed, drop_last=True)
            sampler.set_epoch(epoch)
            loaders.append(torch.utils.data.DataLoader(images, batch_size=batch, sampler=sampler, drop_last=True))
        model.train()
        for halves in zip(*loaders):
            features = [model.features(x) for x, _ in halves]
            loss = sum(loss_fn(model.logits(f), y) for f, (_, y) in zip(features, halves)) / 2
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            model.update_embeddings(torch.cat([features[r] for r in update_order]),
                                    torch.cat([halves[r][1] for r in update_order]))
    return model


def test_two_gloo_processes_match_one_process(data, tmp_path):
    out = tmp_path / "ddp.pt"
    result = subprocess.run(torchrun("--data", data, "--out", out, "--epochs", "2", "--batch-size", "8",
                                     "--input-size", "64", "--bn-batches", "2", "--json",
                                     "--no-embedding-pass"),  # the momentum rule's order across ranks is checked
                            capture_output=True, text=True, timeout=300, env=DDP_ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count('"history"') == 1  # rank 0 alone reports
    payload = torch.load(out, weights_only=True)
    history = payload["training"]["history"]
    assert [h["embeddings_max_diff_across_ranks"] for h in history] == [0.0, 0.0]  # identical on both ranks
    assert payload["training"]["distributed"] == {"processes": 2, "backend": "gloo", "batch_size_per_process": 8}
    assert not [p.name for p in tmp_path.iterdir() if p.name != "ddp.pt"]  # one file, written atomically
    reference = reference_training(data, epochs=2, batch=8)
    state = payload["state_dict"]
    assert (state["embeddings"] - reference.embeddings).abs().max().item() < 1e-5
    assert (state["classifier.weight"] - reference.classifier.weight.detach()).abs().max().item() < 1e-5
    # the agreed order matters: rank 1's samples first gives other embeddings, which DDP's do not match
    swapped = reference_training(data, epochs=2, batch=8, update_order=(1, 0))
    assert (state["embeddings"] - swapped.embeddings).abs().max().item() > 1e-4


def _rank_pid(parent: int, rank: int, deadline: float) -> int | None:
    """The pid of the torchrun worker with RANK=rank (a child of the torchrun process)."""
    while time.monotonic() < deadline:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/stat") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
                if ppid != parent:
                    continue
                with open(f"/proc/{pid}/environ", "rb") as handle:
                    if f"RANK={rank}".encode() in handle.read().split(b"\0"):
                        return int(pid)
            except (OSError, ValueError, IndexError):
                continue
        time.sleep(0.2)
    return None


def test_killed_rank_ends_the_job_with_an_error(data, tmp_path):
    out = tmp_path / "k.pt"
    proc = subprocess.Popen(torchrun("--data", data, "--out", out, "--epochs", "200", "--batch-size", "8",
                                     "--input-size", "64", "--bn-batches", "0"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=DDP_ENV)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not out.exists() and proc.poll() is None:
        time.sleep(0.1)  # until rank 0 has written a checkpoint: training is under way
    victim = _rank_pid(proc.pid, 1, deadline)
    assert victim is not None and proc.poll() is None, proc.stderr.read()[-2000:] if proc.poll() is not None else ""
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    try:
        _, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the job hung after a rank was killed")
    assert proc.returncode != 0
    assert time.monotonic() - killed < 60
    assert "rank      : 1" in err and "SIGKILL" in err, err[-3000:]  # torchrun names the rank that died
    # the surviving rank stops with one line of ours, no trace through our code (torchrun's own
    # report of the failed child follows it)
    assert "cream_rt/" not in err and "cream_rt\\" not in err, err[-3000:]
    assert any(line.startswith("cream: ") for line in err.splitlines()), err[-3000:]
    torch.load(out, weights_only=True)  # the last checkpoint is whole


def test_fewer_images_than_one_global_batch_is_one_line_per_rank(data, tmp_path):
    result = subprocess.run(torchrun("--data", data, "--out", tmp_path / "m.pt", "--epochs", "1", "--batch-size", "32",
                                     "--input-size", "64"),
                            capture_output=True, text=True, timeout=300, env=DDP_ENV)
    assert result.returncode != 0
    # each rank says it once (the two lines may interleave on a shared stderr)
    assert result.stderr.count("cream: error:") == 2, result.stderr[-2000:]
    assert result.stderr.count("fewer than one global batch (32 x 2 processes)") == 2, result.stderr[-2000:]
    assert not (tmp_path / "m.pt").exists()


def test_broken_torchrun_environment_is_one_line(data, tmp_path):
    from cli_helpers import assert_one_error

    env = {**DDP_ENV, "WORLD_SIZE": "two", "RANK": "0", "LOCAL_RANK": "0"}
    result = subprocess.run([sys.executable, "-m", "cream_rt.train", "--data", str(data), "--out",
                             str(tmp_path / "m.pt"), "--epochs", "1"], capture_output=True, text=True, timeout=120,
                            env=env)
    assert_one_error(result, "WORLD_SIZE")


def test_a_rank_whose_whole_batch_is_unreadable_skips_with_the_others(data, tmp_path):
    """Rank 1's first batch is all broken files: both ranks skip that step (DDP's all-reduce
    needs every rank), the job ends normally, and rank 0's record names rank 1's images."""
    import shutil

    from cream_rt.metadata import read_split

    broken = tmp_path / "data"
    shutil.copytree(data, broken)
    ids = read_split(broken / "metadata" / "train", require_localization=False).image_ids
    sampler = torch.utils.data.DistributedSampler(range(len(ids)), 2, 1, shuffle=True, seed=0, drop_last=True)
    sampler.set_epoch(0)
    bad = sorted(ids[i] for i in list(sampler)[:8])
    for name in bad:
        (broken / "images" / name).write_bytes(b"not an image")
    out = tmp_path / "m.pt"
    result = subprocess.run(torchrun("--data", broken, "--out", out, "--epochs", "1", "--batch-size", "8",
                                     "--input-size", "64", "--bn-batches", "2", "--json", "--no-embedding-pass",
                                     "--max-bad-images", "8"),
                            capture_output=True, text=True, timeout=300, env=DDP_ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    training = torch.load(out, weights_only=True)["training"]
    assert sorted(training["unreadable_images"]["images"]) == bad
    assert training["history"][0]["embeddings_max_diff_across_ranks"] == 0.0
    assert "skipped 8 unreadable images" in result.stderr


def test_a_worker_exits_without_interpreter_shutdown(data, tmp_path, monkeypatch, capsys):
    """Under torchrun `cream train` ends with os._exit (gloo's threads outlive the process group
    and may abort a shutting-down interpreter), with its status and its error line written."""
    from cream_rt import cli

    ended = []

    def fake_exit(code: int):
        ended.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(cli.os, "_exit", fake_exit)
    argv = ["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "m.pt"), "--epochs", "1"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit):
        cli.main(argv)
    assert ended == [2]
    assert capsys.readouterr().err.startswith("cream: error: ")
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: an ordinary return
    assert cli.main(argv) == 2 and ended == [2]
