"""Training throughput of ``mls_tutorial.train.fit`` against a bare MONAI training loop.

Both train the same MONAI U-Net (same initial weights) with the same loss, data and batch size;
the bare loop is the textbook one (``DataLoader(shuffle=True)``, ``zero_grad``, forward,
``backward``, ``step``). ``fit`` adds its seeded sampler, NaN guard, loss history, progress
accounting and (when asked) AMP / channels-last; validation and checkpoints are off here, so the
ratio shows the engine's own overhead. Images per second are medians over ``--repeats`` timed
runs of ``--iterations`` iterations after a warm-up, measured side by side in one process.

Runs on CPU, and on CUDA when present, where it also compares AMP (bf16 autocast) and
channels-last memory layout, for the tiny preset and the paper's U-Net::

    python benchmarks/bench_train.py            # full
    python benchmarks/bench_train.py --quick    # a short run (CI smoke)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from mls_tutorial.data import build_data
from mls_tutorial.device import autocast
from mls_tutorial.losses import build_loss
from mls_tutorial.models import build_unet
from mls_tutorial.train import fit


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model(preset: str, device: torch.device, channels_last: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_unet(1, 4, preset).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def bare_loop(data, preset, device, iterations, batch_size, amp, channels_last) -> float:
    """Seconds for ``iterations`` steps of the textbook MONAI loop."""
    model = _model(preset, device, channels_last)
    loss_fn = build_loss("ce")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(
        data.train,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        pin_memory=device.type == "cuda",
    )
    model.train()
    _sync(device)
    t0 = time.perf_counter()
    done = 0
    while done < iterations:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            opt.zero_grad(set_to_none=True)
            with autocast(device, enabled=amp):
                loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            done += 1
            if done == iterations:
                break
    _sync(device)
    return time.perf_counter() - t0


def engine(data, preset, device, iterations, batch_size, amp, channels_last) -> float:
    """Seconds for ``fit`` (no validation, no checkpoint, no progress bar)."""
    model = _model(preset, device, channels_last)
    _sync(device)
    t0 = time.perf_counter()
    fit(
        model,
        build_loss("ce"),
        data,
        iterations=iterations,
        batch_size=batch_size,
        device=device,
        amp=amp,
        channels_last=channels_last,
        val_every=0,
        progress=False,
    )
    _sync(device)
    return time.perf_counter() - t0


def measure(fn, args, iterations, batch_size, repeats, warmup) -> float:
    """Median images per second."""
    fn(*args[:3], warmup, batch_size, *args[3:])
    rates = [
        iterations * batch_size / fn(*args[:3], iterations, batch_size, *args[3:])
        for _ in range(repeats)
    ]
    return statistics.median(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="few iterations and repeats")
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda if present")
    p.add_argument("--batch-size", type=int, default=16, help="images per iteration")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args()
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    # the bundled task's slice size (112 x 96) and the demo's 64 training images
    data = build_data("synthetic", size=(112, 96), n_train=64, n_val=1, n_test=1, slices=2)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")
    )
    print(f"data: 64 images 1x112x96, batch {args.batch_size}, loss ce, Adam 1e-3")
    rows = []
    head = f"{'device':6} {'preset':6} {'amp':5} {'ch_last':7} {'bare img/s':>11} {'fit img/s':>10} {'fit/bare':>8}"
    print(head)
    print("-" * len(head))
    for name in devices:
        device = torch.device(name)
        cuda = device.type == "cuda"
        if cuda:
            torch.backends.cudnn.benchmark = True
        iters = (40 if args.quick else 100) if cuda else (5 if args.quick else 30)
        repeats = (2 if args.quick else 3) if cuda else (1 if args.quick else 3)
        warmup = 10 if cuda else 2
        variants = [("tiny", False, False)]
        if cuda:
            variants = [
                (preset, amp, cl)
                for preset in ("tiny", "paper")
                for amp in (False, True)
                for cl in (False, True)
            ]
        for preset, amp, cl in variants:
            common = (data, preset, device, amp, cl)
            bare = measure(bare_loop, common, iters, args.batch_size, repeats, warmup)
            ours = measure(engine, common, iters, args.batch_size, repeats, warmup)
            row = dict(
                device=name,
                preset=preset,
                amp=amp,
                channels_last=cl,
                batch=args.batch_size,
                iterations=iters,
                repeats=repeats,
                bare=bare,
                fit=ours,
                ratio=ours / bare,
            )
            rows.append(row)
            print(
                f"{name:6} {preset:6} {str(amp):5} {str(cl):7} {bare:11.1f} {ours:10.1f} {ours / bare:8.2f}",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
