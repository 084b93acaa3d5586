"""Two gloo processes on CPU: reduced evaluation equals one process; a short DDP training runs.

The workers are spawned with ``torch.multiprocessing`` on a free local port. A slow test also
runs the real ``torchrun --nproc_per_node 2 -m mls_tutorial train`` command line.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _cli_args import SYNTHETIC_DATA

from mls_tutorial.data import build_data
from mls_tutorial.losses import CALSLoss
from mls_tutorial.models import build_unet
from mls_tutorial.train import CHECKPOINT_NAME, evaluate, fit, load_checkpoint
from mls_tutorial.train.distributed import all_reduce_sum

DATA = dict(n_train=16, size=32, slices=3, n_val=2, n_test=3, seed=4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_unet(1, 4, "tiny")


def _cals_probe() -> CALSLoss:
    """CALS with set multipliers (so that every branch of the update is exercised)."""
    loss = CALSLoss(num_classes=4, margin=2.0, rho_step=1)
    loss.lambdas, loss.rho = [0.1, 0.5, 1.0, 2.0], [1.0, 2.0, 3.0, 4.0]
    return loss


def _probe_update(loss: CALSLoss, volumes, reduce=None) -> None:
    """One validation pass of ``loss`` over ``volumes`` through ``evaluate(on_logits=)``."""
    loss.begin_validation()
    evaluate(_model(), volumes, 4, device="cpu", hd95=False, on_logits=loss.observe)
    loss.end_validation(reduce)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        data = build_data("synthetic", **DATA)
        res = evaluate(_model(), data.test, data.num_classes, device="cpu")
        with open(os.path.join(out, f"eval_{rank}.json"), "w") as f:
            json.dump(res, f)
        model = _model()
        history = fit(
            model,
            torch.nn.CrossEntropyLoss(),
            data,
            iterations=4,
            batch_size=2,
            device="cpu",
            progress=False,
            val_every=2,
            run_dir=os.path.join(out, "run"),
        )
        torch.save(
            {"params": model.state_dict(), "history": history},
            os.path.join(out, f"train_{rank}.pt"),
        )
        cals = CALSLoss(margin=0.1, rho_step=1)
        cals_history = fit(
            _model(),
            cals,
            data,
            iterations=4,
            batch_size=2,
            device="cpu",
            progress=False,
            val_every=2,
            run_dir=os.path.join(out, "run_cals"),
        )
        probe = _cals_probe()
        _probe_update(probe, data.test, all_reduce_sum)  # uneven shards: 1 and 2 volumes
        torch.save(
            {"cals": cals.adaptive_state_dict(), "history": cals_history, "probe": probe.history()},
            os.path.join(out, f"cals_{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return out


def _assert_same(a, b, path="results"):
    """Equal structures; floats equal to 1e-12 (NaN == NaN)."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        assert math.isnan(b), path
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, abs=1e-12, rel=1e-12), path
    else:
        assert a == b, path


def test_reduced_evaluation_equals_single_process(two_ranks):
    data = build_data("synthetic", **DATA)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' setting: identical float32 convolutions
    try:
        single = evaluate(_model(), data.test, data.num_classes, device="cpu")
    finally:
        torch.set_num_threads(threads)
    single = json.loads(json.dumps(single))
    for rank in (0, 1):
        with open(two_ranks / f"eval_{rank}.json") as f:
            reduced = json.load(f)
        _assert_same(reduced, single)
    assert single["n_volumes"] == 3  # uneven shards: rank 0 had 1 volume, rank 1 had 2


def test_ddp_training_keeps_ranks_in_sync_and_rank0_writes(two_ranks):
    r0 = torch.load(two_ranks / "train_0.pt", weights_only=True)
    r1 = torch.load(two_ranks / "train_1.pt", weights_only=True)
    for key, value in r0["params"].items():
        assert torch.equal(value, r1["params"][key]), key
    assert not torch.equal(
        r0["params"]["model.0.conv.weight"], _model().state_dict()["model.0.conv.weight"]
    )
    h0, h1 = r0["history"], r1["history"]
    assert h0["loss"] == h1["loss"] and len(h0["loss"]) == 4  # mean over ranks, same everywhere
    assert h0["val_fg_dice"] == h1["val_fg_dice"] and h0["val_iteration"] == [2, 4]
    ckpt = load_checkpoint(two_ranks / "run" / CHECKPOINT_NAME)
    assert ckpt["iteration"] == 4
    assert [p.name for p in (two_ranks / "run").iterdir()] == [CHECKPOINT_NAME]


def test_cals_multipliers_are_all_reduced_and_in_sync(two_ranks):
    r0 = torch.load(two_ranks / "cals_0.pt", weights_only=True)
    r1 = torch.load(two_ranks / "cals_1.pt", weights_only=True)
    for key in ("lambdas", "rho", "prev_constraint"):
        assert torch.equal(r0["cals"][key], r1["cals"][key]), key
    assert r0["cals"]["validations"] == 2 and len(r0["history"]["loss_state"]) == 2
    assert r0["history"]["loss_state"] == r1["history"]["loss_state"]
    assert r0["cals"]["lambdas"].tolist() != [1e-6] * 4  # validation moved them
    ckpt = load_checkpoint(two_ranks / "run_cals" / CHECKPOINT_NAME)
    assert torch.equal(ckpt["loss_state"]["lambdas"], r0["cals"]["lambdas"])
    # the pooled update over 2 ranks equals one process over every volume
    data = build_data("synthetic", **DATA)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = _cals_probe()
        _probe_update(single, data.test)
    finally:
        torch.set_num_threads(threads)
    for rank_probe in (r0["probe"], r1["probe"]):
        for key in ("lambda", "rho", "constraint"):
            assert rank_probe[key] == pytest.approx(single.history()[key], rel=1e-12), key
    assert single.history()["lambda"] != _cals_probe().history()["lambda"]


def test_single_process_ddp_helpers_are_identities():
    from mls_tutorial.train import distributed as d

    assert (d.rank(), d.world_size(), d.is_main(), d.is_distributed()) == (0, 1, True, False)
    t = torch.tensor([1.0, 2.0])
    assert d.all_reduce_sum(t) is t and t.tolist() == [1.0, 2.0]
    assert d.all_gather_objects({"a": 1}) == [{"a": 1}]
    assert d.init_from_env() is False


@pytest.mark.slow
def test_torchrun_command_line_trains_with_two_processes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        "-m",
        "mls_tutorial",
        "train",
        *SYNTHETIC_DATA,
        "--loss",
        "mbls",
        "--margin",
        "3",
        "--iterations",
        "4",
        "--batch-size",
        "2",
        "--val-every",
        "2",
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = [
        p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith(".")
    ]  # not .locks
    assert run.name.startswith("mbls-m3-s1-")
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["dice"] <= 1.0
    assert proc.stdout.count("run folder:") == 1  # printed by rank 0 only
