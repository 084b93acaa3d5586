"""Speed of every loss relative to plain cross entropy, and its share of a training step.

For each loss: the median time of one forward + backward, measured side by side with
``torch.nn.functional.cross_entropy`` in the same process (rounds interleave the losses; the
ratio is the median over rounds of loss / CE within a round, which cancels slow drifts of a
shared machine), at (16, 4, 128, 128) and (2, 4, 64, 64, 64), on CPU and, when present, on CUDA
(synchronised; also under AMP). Then one training step (forward, loss, backward, Adam) of the
``tiny`` 2D U-Net at batch 16, 128x128, and the loss's share of it.

    python benchmarks/bench_losses.py             # full run
    python benchmarks/bench_losses.py --quick     # a short run
    python benchmarks/bench_losses.py --threads 1 --clock cpu   # on a busy shared CPU
    python benchmarks/bench_losses.py --losses cals,acls,mdca --no-step   # some losses only
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from mls_tutorial.losses import LOSS_NAMES, build_loss

SHAPES = [(16, 4, 128, 128), (2, 4, 64, 64, 64)]


def naive_mbls(logits, target, margin=10.0, alpha=0.1):
    """The straightforward MbLS (CE plus relu of max minus logits), for comparison."""
    d = logits.amax(dim=1, keepdim=True) - logits
    return F.cross_entropy(logits, target) + alpha * F.relu(d - margin).mean()


def candidates(
    with_monai: bool, cuda: bool = False, compiled: bool = False, only: list[str] | None = None
) -> dict:
    """CE first (the reference), then every loss of ``only`` (default: all, plus MbLS variants)."""
    losses = {"ce (F.cross_entropy)": F.cross_entropy}
    for name in only or LOSS_NAMES:
        if name in ("ce_dice", "nacl", "hl1ace", "sl1ace") and not with_monai:
            continue
        losses[name] = build_loss(name)
    if only:
        return losses
    losses["mbls validate=False"] = build_loss("mbls", validate=False)
    if cuda:  # on CUDA "mbls" is the fused Triton kernel; this is the eager version
        losses["mbls eager (fused=False)"] = build_loss("mbls", fused=False)
    losses["mbls naive autograd"] = naive_mbls
    if compiled:  # for reference: what torch.compile makes of plain CE and the naive MbLS
        losses["ce torch.compile"] = torch.compile(F.cross_entropy)
        losses["mbls naive torch.compile"] = torch.compile(naive_mbls)
    return losses


class Clock:
    def __init__(self, device: torch.device, kind: str):
        self.device, self.kind = device, kind

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.thread_time() if self.kind == "cpu" else time.perf_counter()


def time_losses(losses, logits, target, clock, rounds, reps, amp):
    """Per loss: (median seconds, median ratio to the first loss)."""
    dev = logits.device
    if amp:  # logits as an AMP network would give them
        logits = logits.to(torch.bfloat16)
    per_round = {k: [] for k in losses}
    for _ in range(rounds):
        for name, fn in losses.items():
            best = float("inf")
            for _ in range(reps):
                z = logits.detach().requires_grad_(True)
                t0 = clock.now()
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                    loss = fn(z, target)
                loss.backward()
                best = min(best, clock.now() - t0)
            per_round[name].append(best)
    base = per_round[next(iter(losses))]
    return {
        k: (statistics.median(v), statistics.median(a / b for a, b in zip(v, base, strict=True)))
        for k, v in per_round.items()
    }


def tiny_unet():
    try:
        from mls_tutorial.models import build_unet

        return build_unet(1, 4, "tiny")
    except ImportError:  # pragma: no cover - before models.py exists
        from monai.networks.nets import UNet

        return UNet(2, 1, 4, channels=(8, 16, 32, 64), strides=(2, 2, 2), num_res_units=0)


def time_steps(losses, device, clock, rounds, reps, batch, size, amp):
    """Per loss: (median step seconds, median loss-only seconds at the U-Net's logits)."""
    torch.manual_seed(0)
    model = tiny_unet().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 1, size, size, device=device)
    y = torch.randint(0, 4, (batch, size, size), device=device)
    steps = {k: [] for k in losses}
    for _ in range(rounds):
        for name, fn in losses.items():
            best = float("inf")
            for _ in range(reps):
                t0 = clock.now()
                opt.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    loss = fn(model(x), y)
                loss.backward()
                opt.step()
                best = min(best, clock.now() - t0)
            steps[name].append(best)
    with torch.no_grad():
        logits = model(x)
    alone = time_losses(losses, logits, y, clock, rounds, reps, amp)
    return {k: (statistics.median(v), alone[k][0]) for k, v in steps.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few rounds and repeats")
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: thread CPU time (CPU device, one thread; robust on a busy shared machine)",
    )
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--no-step", action="store_true", help="skip the U-Net training step")
    p.add_argument(
        "--losses",
        default=None,
        help="comma-separated loss names to time against CE (default: every loss)",
    )
    p.add_argument(
        "--compile", action="store_true", help="add torch.compile'd CE and naive MbLS (CUDA only)"
    )
    args = p.parse_args(argv)
    only = args.losses.split(",") if args.losses else None
    unknown = sorted(set(only or []) - set(LOSS_NAMES))
    if unknown:
        p.error(f"unknown loss names {unknown}; valid: {', '.join(LOSS_NAMES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = args.rounds or (3 if args.quick else 11)
    reps = 2 if args.quick else 3
    try:
        import monai  # noqa: F401

        with_monai = True
    except ImportError:
        with_monai = False
        print("monai is not installed: ce_dice, nacl and the U-Net step are skipped")
    devices = []
    if args.device in ("cpu", "all"):
        devices.append(torch.device("cpu"))
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, clock {args.clock}, "
        f"rounds {rounds} x best of {reps}"
    )
    for dev in devices:
        losses = candidates(
            with_monai,
            cuda=dev.type == "cuda",
            compiled=args.compile and dev.type == "cuda",
            only=only,
        )
        clock = Clock(dev, args.clock if dev.type == "cpu" else "wall")
        if dev.type == "cuda":
            print(f"device: {torch.cuda.get_device_name(dev)}")
        for amp in [False, True] if dev.type == "cuda" else [False]:
            for shape in SHAPES:
                g = torch.Generator(device="cpu").manual_seed(0)
                logits = (torch.randn(shape, generator=g) * 4).to(dev)
                target = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g).to(dev)
                time_losses(losses, logits, target, clock, 1, 2, amp)  # warm-up (and compile)
                res = time_losses(losses, logits, target, clock, rounds, reps, amp)
                tag = f"{dev.type}{' AMP bf16' if amp else ''} {shape}"
                print(f"\n### forward+backward, {tag}\n")
                print("| loss | median ms | x CE |\n|---|---:|---:|")
                for name, (sec, ratio) in res.items():
                    print(f"| {name} | {sec * 1e3:.2f} | {ratio:.2f} |")
            if args.no_step or not with_monai:
                continue
            steps = time_steps(losses, dev, clock, max(3, rounds // 2), reps, 16, 128, amp)
            tag = f"{dev.type}{' AMP bf16' if amp else ''}"
            print(f"\n### tiny U-Net training step, batch 16, 128x128, {tag}\n")
            print("| loss | step ms | loss fwd+bwd ms | share of step |\n|---|---:|---:|---:|")
            for name, (step, alone) in steps.items():
                print(f"| {name} | {step * 1e3:.1f} | {alone * 1e3:.2f} | {alone / step:.1%} |")


if __name__ == "__main__":
    main()
