"""``fit``: iteration-based training with validation, model selection, checkpoints and resume.

One step: ``logits = model(x)`` under ``autocast`` (CUDA only), ``loss = loss_fn(logits, y)``,
Adam update (optionally StepLR). Every ``val_every`` iterations the model is evaluated on the
validation volumes (no HD95) and the weights with the best ``select_metric`` are kept; at the end
``model`` holds those weights. With ``run_dir`` a checkpoint (model, optimizer, scheduler, scaler,
RNG states, history, best weights) is written atomically every ``checkpoint_every`` iterations;
``resume=True`` continues from it. A NaN/inf loss raises ``FloatingPointError`` naming the
iteration, and the last good checkpoint stays on disk.

A loss that implements ``mls_tutorial.losses.AdaptiveLoss`` (CALS) sees every validation pass:
``begin_validation()``, ``observe(logits, labels)`` per validation volume (the logits of the
evaluation itself, no second forward pass), then ``end_validation(all_reduce)`` with a sum across
ranks. Its ``adaptive_state_dict()`` is in the checkpoint and its ``history()`` is appended to
``history["loss_state"]`` after each validation.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from mls_tutorial.device import amp_dtype, autocast, pick_device
from mls_tutorial.losses.adaptive import is_adaptive
from mls_tutorial.train import distributed as dist_utils
from mls_tutorial.train.checkpoint import (
    CHECKPOINT_NAME,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from mls_tutorial.train.evaluation import evaluate, unwrap
from mls_tutorial.train.sampling import StreamBatchSampler, seed_everything

# validation series recorded in the history: history key -> evaluate() key
VAL_METRICS = {
    "val_fg_dice": "dice",
    "val_fg_ece": "ece",
    "val_fg_cece": "cece",
    "val_fg_nll": "nll",
    "val_fg_brier": "brier",
    "val_fg_gap": "gap",
    "val_ece_all": "ece_all",
}
HIGHER_IS_BETTER = {"val_fg_dice"}
_ON_DEVICE_MAX_BYTES = 1 << 30  # training sets smaller than this are kept on the device


def _check_positive_int(name: str, value: Any, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        raise ValueError(f"{name} must be an int >= {0 if allow_zero else 1}, got {value!r}")
    return value


class _Batches:
    """Batches from the seeded stream; tensors indexed directly for a ``SliceDataset``."""

    def __init__(
        self, dataset, sampler: StreamBatchSampler, device: torch.device, num_workers: int
    ):
        from mls_tutorial.data.common import SliceDataset

        self.device = device
        fast = (
            isinstance(dataset, SliceDataset)
            and type(dataset).__getitem__ is SliceDataset.__getitem__
        )
        if fast:
            images, labels = dataset.images, dataset.labels
            if images.numel() * 4 + labels.numel() < _ON_DEVICE_MAX_BYTES:
                images, labels = images.to(device), labels.to(device)
            self._iter = ((images[b], labels[b].long()) for b in map(torch.as_tensor, sampler))
        else:
            loader = torch.utils.data.DataLoader(
                dataset,
                batch_sampler=sampler,
                num_workers=num_workers,
                pin_memory=device.type == "cuda",
            )
            self._iter = iter(loader)

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = next(self._iter)
        if y.ndim == 4 and y.shape[1] == 1:
            y = y[:, 0]
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def fit(
    model: torch.nn.Module,
    loss_fn: torch.nn.Module,
    data: Any,
    *,
    iterations: int,
    batch_size: int,
    lr: float = 1e-3,
    device: str | torch.device | None = None,
    amp: bool = True,
    seed: int = 1,
    run_dir: str | Path | None = None,
    resume: bool = False,
    val_every: int | None = None,
    select_metric: str = "val_fg_dice",
    progress: bool = True,
    lr_step: int | None = None,
    lr_gamma: float = 0.1,
    checkpoint_every: int | None = None,
    log_every: int = 10,
    num_workers: int = 0,
    channels_last: bool = False,
) -> dict[str, Any]:
    """Train ``model`` on ``data.train`` for ``iterations`` steps; returns the history.

    ``data``: a ``DataBundle`` (``train``, ``val``, ``num_classes``, ``class_names``).
    ``val_every``: validate every k iterations (default ``iterations // 10``; 0 or no validation
    volumes: no validation, the last weights are kept). ``select_metric``: a ``val_*`` key of the
    history (``val_fg_dice`` is maximised, the others minimised), or ``"last"``: validate (for
    the history) but keep the final weights. Two defaults on purpose: ``fit`` keeps the best
    validation Dice (the paper's protocol, what a user's own training wants), while the course's
    run configs (``runs.DEFAULT_CONFIG``) keep the last weights, the memorised, over-confident
    end state whose calibration the course studies (docs/results.md). ``lr_step``: StepLR period in iterations (None:
    constant lr). ``checkpoint_every`` defaults to ``val_every``. Under ``torchrun`` the model
    is wrapped in DDP, each rank draws its own share of the data and only rank 0 writes.

    History (``dict`` of lists plus a few scalars): ``iteration``, ``loss`` (mean over ranks),
    ``val_iteration``, ``val_fg_dice``, ``val_fg_ece``, ... , ``lr``, ``best_iteration``,
    ``best_value``, ``select_metric``, ``seconds``, ``images_per_second``; with an adaptive loss
    also ``loss_state`` (one ``loss_fn.history()`` dict per validation, e.g. CALS's ``lambda``
    and ``rho`` per class).
    """
    _check_positive_int("iterations", iterations)
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("log_every", log_every)
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if select_metric not in VAL_METRICS and select_metric != "last":
        raise ValueError(
            f"select_metric={select_metric!r} is unknown; valid: 'last' or {sorted(VAL_METRICS)}"
        )
    if lr_step is not None:
        _check_positive_int("lr_step", lr_step)
    if not hasattr(data, "train"):
        raise ValueError("data must be a DataBundle (with .train, .val and .num_classes)")
    if val_every is None:
        val_every = max(1, iterations // 10)
    _check_positive_int("val_every", val_every, allow_zero=True)
    if resume and run_dir is None:
        raise ValueError("resume=True needs run_dir (where the checkpoint lives)")
    trainer = _Trainer(
        model,
        loss_fn,
        data,
        iterations=iterations,
        batch_size=batch_size,
        lr=lr,
        device=device,
        amp=amp,
        seed=seed,
        run_dir=run_dir,
        val_every=val_every,
        select_metric=select_metric,
        lr_step=lr_step,
        lr_gamma=lr_gamma,
        checkpoint_every=checkpoint_every,
        log_every=log_every,
        channels_last=channels_last,
    )
    if resume and trainer.ckpt_path.is_file():
        trainer.resume()
    return trainer.run(progress=progress, num_workers=num_workers)


class _Trainer:
    """The state of one ``fit`` call; each method is one stage of it."""

    def __init__(
        self,
        model,
        loss_fn,
        data,
        *,
        iterations,
        batch_size,
        lr,
        device,
        amp,
        seed,
        run_dir,
        val_every,
        select_metric,
        lr_step,
        lr_gamma,
        checkpoint_every,
        log_every,
        channels_last,
    ):
        self.loss_fn, self.data, self.iterations, self.batch_size = (
            loss_fn,
            data,
            iterations,
            batch_size,
        )
        self.amp, self.seed, self.log_every, self.channels_last = (
            amp,
            seed,
            log_every,
            channels_last,
        )
        self.val_volumes = list(getattr(data, "val", None) or [])
        self.val_every = val_every if self.val_volumes else 0
        self.checkpoint_every = checkpoint_every or self.val_every or max(1, iterations // 10)
        self.ckpt_path = Path(run_dir) / CHECKPOINT_NAME if run_dir is not None else None
        self.device = dist_utils.local_device(pick_device(device))
        seed_everything(seed)
        self.net = model.to(self.device)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.scheduler = (
            torch.optim.lr_scheduler.StepLR(self.optimizer, lr_step, lr_gamma) if lr_step else None
        )
        use_scaler = amp and amp_dtype(self.device) == torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        self.history: dict[str, Any] = {"iteration": [], "loss": [], "val_iteration": [], "lr": []}
        self.history.update({k: [] for k in VAL_METRICS})
        self.history.update(select_metric=select_metric, best_iteration=None, best_value=None)
        self.adaptive = loss_fn if is_adaptive(loss_fn) else None
        if self.adaptive is not None:
            self.history["loss_state"] = []
        self.best_state: dict[str, torch.Tensor] | None = None
        self.start, self.last_saved = 0, None
        self.pending: list[torch.Tensor] = []

    # ------------------------------------------------------------------ checkpoints
    def resume(self) -> None:
        """Continue from the checkpoint: weights, optimizer, scheduler, scaler, RNG, history."""
        path = self.ckpt_path
        ckpt = load_checkpoint(path, map_location=self.device)
        for key, want in (("seed", self.seed), ("batch_size", self.batch_size)):
            if ckpt.get(key) != want:
                raise ValueError(
                    f"cannot resume {path}: it was trained with {key}={ckpt.get(key)}, not {want}"
                )
        metric = ckpt["history"].get("select_metric")
        if metric != self.history["select_metric"]:
            raise ValueError(
                f"cannot resume {path}: it selects by {metric!r}, "
                f"not select_metric={self.history['select_metric']!r}"
            )
        self.net.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        for part, name in ((self.scheduler, "scheduler"), (self.scaler, "scaler")):
            if part is not None and ckpt.get(name) is not None:
                part.load_state_dict(ckpt[name])
        self.history, self.best_state = ckpt["history"], ckpt["best_model"]
        if self.adaptive is not None:
            if ckpt.get("loss_state") is None:
                raise ValueError(
                    f"cannot resume {path}: it holds no state for the adaptive loss "
                    f"{type(self.adaptive).__name__} (was it trained with another loss?)"
                )
            self.adaptive.load_adaptive_state_dict(ckpt["loss_state"])
        self.start = self.last_saved = int(ckpt["iteration"])
        set_rng_state(ckpt["rng"])

    def save(self, iteration: int) -> None:
        """Atomic checkpoint (rank 0 only; no-op without ``run_dir``)."""
        if self.ckpt_path is None:
            return
        if dist_utils.is_main():
            state = {
                "format": 1,
                "iteration": iteration,
                "seed": self.seed,
                "batch_size": self.batch_size,
                "model": _cpu_state(self.net),
                "best_model": self.best_state,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler else None,
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "history": self.history,
                "rng": rng_state(),
                "loss_state": (
                    self.adaptive.adaptive_state_dict() if self.adaptive is not None else None
                ),
            }
            save_checkpoint(state, self.ckpt_path)
        self.last_saved = iteration

    # --------------------------------------------------------------------- training
    def step(self, x: torch.Tensor, y: torch.Tensor, model: torch.nn.Module) -> None:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, enabled=self.amp):
            loss = self.loss_fn(model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.pending.append(loss.detach().float())  # read in flush(): no host sync per step

    def flush(self, iteration: int) -> None:
        """Move pending losses to the history (mean over ranks); raise on a non-finite one."""
        if not self.pending:
            return
        losses = dist_utils.all_reduce_sum(torch.stack(self.pending)) / dist_utils.world_size()
        values = losses.tolist()
        first = iteration - len(values) + 1
        self.pending.clear()
        for i, value in enumerate(values):
            if not math.isfinite(value):
                kept = (
                    f"the last good checkpoint ({self.ckpt_path}, iteration {self.last_saved}) "
                    "is kept"
                    if self.last_saved is not None
                    else "no checkpoint was written before it"
                )
                raise FloatingPointError(
                    f"training stopped: loss is {value} at iteration {first + i}; {kept}. "
                    "Lower the learning rate, check the data, or disable AMP."
                )
        self.history["iteration"].extend(range(first, iteration + 1))
        self.history["loss"].extend(values)

    def _all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over ranks, on this rank's device (NCCL needs CUDA tensors)."""
        if not dist_utils.is_distributed():
            return tensor
        return dist_utils.all_reduce_sum(tensor.to(self.device)).cpu()

    def validate(self, iteration: int) -> None:
        """Evaluate on the validation volumes, record ``val_*`` series, keep the best weights.

        An adaptive loss observes the validation logits and updates its state at the end.
        """
        adaptive = self.adaptive
        if adaptive is not None:
            adaptive.begin_validation()
        res = evaluate(
            self.net,
            self.val_volumes,
            self.data.num_classes,
            device=self.device,
            amp=self.amp,
            hd95=False,
            class_names=getattr(self.data, "class_names", None),
            on_logits=None if adaptive is None else adaptive.observe,
        )
        h = self.history
        if adaptive is not None:
            adaptive.end_validation(self._all_reduce)
            h["loss_state"].append(adaptive.history())
        h["val_iteration"].append(iteration)
        h["lr"].append(self.optimizer.param_groups[0]["lr"])
        for key, src in VAL_METRICS.items():
            h[key].append(res[src])
        metric = h["select_metric"]
        if metric == "last":  # no selection: the weights at the end of training are kept
            return
        value, best = res[VAL_METRICS[metric]], h["best_value"]
        if best is None:
            better = True
        else:
            better = value > best if metric in HIGHER_IS_BETTER else value < best
        if math.isfinite(value) and better:
            h["best_value"], h["best_iteration"] = value, iteration
            self.best_state = _cpu_state(self.net)

    def run(self, progress: bool, num_workers: int) -> dict[str, Any]:
        model = self.net
        if dist_utils.is_distributed():
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = torch.nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        start, stop = self.start, max(self.start, self.iterations)
        sampler = StreamBatchSampler(
            len(self.data.train),
            self.batch_size,
            seed=self.seed,
            start=start,
            stop=stop,
            rank=dist_utils.rank(),
            world_size=dist_utils.world_size(),
        )
        batches = _Batches(self.data.train, sampler, self.device, num_workers)
        bar = None
        if progress and dist_utils.is_main():
            from tqdm.auto import tqdm

            bar = tqdm(total=stop, initial=start, desc="train", unit="it", dynamic_ncols=True)
        t0 = time.perf_counter()
        self.net.train()
        for it in range(start + 1, stop + 1):
            self.step(*next(batches), model)
            do_val = self.val_every and (it % self.val_every == 0 or it == stop)
            do_ckpt = it % self.checkpoint_every == 0 and it < stop
            if it % self.log_every == 0 or do_val or do_ckpt or it == stop:
                self.flush(it)
            if do_val:
                self.validate(it)
                self.net.train()
            if do_ckpt:
                self.save(it)
            if bar is not None:
                bar.set_postfix(self._postfix(), refresh=False)
                bar.update(1)
        if bar is not None:
            bar.close()
        return self._finish(stop - start, time.perf_counter() - t0)

    def _postfix(self) -> dict[str, str]:
        h, metric = self.history, self.history["select_metric"]
        out = {"loss": f"{h['loss'][-1]:.4f}"} if h["loss"] else {}
        if h.get(metric):
            out[metric] = f"{h[metric][-1]:.4f}"
        return out

    def _finish(self, done: int, seconds: float) -> dict[str, Any]:
        """Final checkpoint (the last weights), timing, then load the selected weights."""
        h = self.history
        if done:
            h["seconds"] = h.get("seconds", 0.0) + seconds
            h["images_per_second"] = done * self.batch_size * dist_utils.world_size() / seconds
            if h["select_metric"] == "last":
                h["best_iteration"] = self.start + done
            self.save(self.start + done)
        if self.best_state is not None:
            self.net.load_state_dict({k: v.to(self.device) for k, v in self.best_state.items()})
        return h


def _cpu_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in unwrap(net).state_dict().items()}
