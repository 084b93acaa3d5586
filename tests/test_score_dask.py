"""``score`` on a Dask cluster (``--scheduler``): one task per case on a real ``LocalCluster``
of worker processes gives the numbers of one local worker, for a softmax folder and a
region-based one, through the API and the CLI; and a region folder with ``--workers 2``."""

from __future__ import annotations

import json

import pytest
from _dask import local_cluster
from test_score import make_cases, write_folders
from test_score_regions import KEYS, REGIONS, write_nnunet
from test_score_regions import make_cases as region_cases

from mls_tutorial.cli import main
from mls_tutorial.score import score_folder

pytestmark = pytest.mark.slow  # a Dask cluster of worker processes
distributed = pytest.importorskip("distributed")

NUMBERS = ("dice", "hd95", "ece", "cece", "gap", "nll", "brier", "ece_all", "cece_all")


@pytest.fixture(scope="module")
def cluster():
    """``(LocalCluster, Client)``, 2 worker processes on 127.0.0.1."""
    with local_cluster() as cluster, distributed.Client(cluster) as client:
        client.wait_for_workers(2, timeout=120)
        yield cluster, client


def test_dask_cases_give_the_numbers_of_one_worker(cluster, tmp_path):
    client = cluster[1]
    cases = make_cases(seed=80, n=4, power=2.0)
    pred, labels = write_folders(tmp_path, cases, "nnunet")
    one = score_folder(pred, labels, tmp_path / "one", val_cases=["case00"], progress=False)
    with distributed.get_task_stream(client) as stream:
        dask = score_folder(pred, labels, tmp_path / "dask", val_cases=["case00"],
                            progress=False, executor=client.get_executor())  # fmt: skip
    assert len(stream.data) == 3  # one task per reported case, on the cluster's workers
    assert [r["name"] for r in dask["per_volume"]] == ["case01", "case02", "case03"]
    for key in NUMBERS:
        assert dask[key] == one[key], key
        assert dask["temperature_scaled"][key] == one["temperature_scaled"][key], key
    assert dask["per_volume"] == one["per_volume"]
    assert dask["meter"] == one["meter"] and dask["histogram"] == one["histogram"]


def test_dask_region_folder_through_the_cli(cluster, tmp_path, capsys):
    address = cluster[0].scheduler_address
    pred, labels = tmp_path / "pred", tmp_path / "labels"
    write_nnunet(pred, labels, region_cases(3, seed=90))
    base = ["score", str(pred), str(labels), "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "one")]) == 0
    assert main([*base, "--out", str(tmp_path / "dask"), "--scheduler", address]) == 0
    one, dask = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "dask"))
    for name in REGIONS:
        for key in (*KEYS, "hd95"):
            assert dask["regions"][name][key] == one["regions"][name][key], (name, key)
    capsys.readouterr()
    args = [*base, "--out", str(tmp_path / "x"), "--scheduler", address]
    assert main([*args, "--workers", "2"]) == 2
    assert "--workers sizes the local pool; with a scheduler its workers score the cases" in (
        capsys.readouterr().err
    )


def test_two_local_workers_give_the_numbers_of_one_for_regions(tmp_path):
    """``--workers 2``: every region of a case scored in one worker process from one read."""
    pred, labels = tmp_path / "pred", tmp_path / "labels"
    write_nnunet(pred, labels, region_cases(3, seed=95))
    one = score_folder(pred, labels, tmp_path / "one", progress=False)
    two = score_folder(pred, labels, tmp_path / "two", progress=False, workers=2)
    for name in REGIONS:
        for key in (*KEYS, "hd95"):
            assert two["regions"][name][key] == one["regions"][name][key], (name, key)
