"""Load-if-cached-else-train: the finished run for a config, from the run root, the package's
shipped runs, or trained now.

``load_or_train(config, root)`` returns the cached run when ``<root>/<run_name>/metrics.json``
exists; else copies a shipped run with exactly this normalised config into ``root``
(``[shipped]``); else resumes from ``checkpoint.pt`` when an earlier run was interrupted, or
trains. ``temperature_scaling=True`` reuses the run trained without it (same training config):
only T is fitted (on the validation volumes) and the test set re-evaluated. With the
environment variable ``MLS_TUTORIAL_NO_TRAIN=1`` it raises ``TrainingForbidden`` instead of
training (CI runs the notebooks so: a default that needs an unshipped run fails, naming it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mls_tutorial.files import atomic_write, write_json
from mls_tutorial.runs import shipped
from mls_tutorial.runs.config import get_data, normalize_config, run_label, run_name
from mls_tutorial.runs.figures import save_figures
from mls_tutorial.runs.folder import (
    EXAMPLE_FILE,
    HISTORY_FILE,
    METRICS_FILE,
    SHIPPED_FILE,
    WEIGHTS_FILE,
    Run,
    claim_folder,
    load_run,
    move_aside,
    run_lock,
)
from mls_tutorial.train.checkpoint import CHECKPOINT_NAME, save_checkpoint

#: set to 1 to make load_or_train raise instead of training (CI's notebook tests)
NO_TRAIN_ENV = "MLS_TUTORIAL_NO_TRAIN"


class TrainingForbidden(RuntimeError):
    """``load_or_train`` would have to train, and ``MLS_TUTORIAL_NO_TRAIN`` forbids it."""


def load_or_train(
    config: dict[str, Any],
    root: str | Path = "runs",
    *,
    device=None,
    progress: bool = True,
    data=None,
    force: bool = False,
    figures: bool = True,
    use_shipped: bool = True,
    log: Callable[[str], None] | None = print,
) -> Run:
    """The finished run for ``config`` under ``root``: cached, shipped, or trained now.

    ``data``: a prebuilt ``DataBundle`` matching the config (else built and cached in-process).
    ``force``: retrain even if the run exists; the old folder is first moved to
    ``<root>/.replaced/<name>-<time>/`` (kept, never deleted; ``find_runs`` skips it).
    ``use_shipped``: look up the package's shipped runs (``runs.shipped``) before training;
    with ``False`` a copy of a shipped run found in ``root`` is moved aside and trained anew.
    ``log``: where one-line messages go (``print`` by default; None for silence).
    Under ``torchrun`` every rank trains (DDP) and evaluates; rank 0 alone writes files. Figures
    are not drawn while the process group is up (rebuilding a meter to plot it would start a
    collective on rank 0 alone); call ``save_figures(run)`` after it is destroyed (the CLI does).
    """
    from mls_tutorial.train import distributed as dist_utils

    say = log if (log is not None and dist_utils.is_main()) else (lambda _msg: None)
    cfg = normalize_config(config)
    root = Path(root)
    path = root / run_name(cfg)
    if _usable(path, force, use_shipped):
        return _cached(path, cfg, say)
    with run_lock(root, path.name, say):
        dist_utils.barrier()
        if _usable(path, force, use_shipped):  # finished while we waited
            return _cached(path, cfg, say)
        if use_shipped and not force and not dist_utils.is_distributed():
            entry = shipped.find(cfg)
            if entry is not None:
                shipped.copy_into(entry, path, say)
                run = _cached(path, cfg, lambda _msg: None)
                if figures:  # a trained run has them: so does the copy
                    save_figures(run)
                return run
        if dist_utils.is_main():
            if path.exists() and (force or (path / SHIPPED_FILE).is_file()):
                move_aside(path, say)
            claim_folder(path, cfg)
        dist_utils.barrier()
        if cfg["temperature_scaling"]:
            return _temperature_scaled(
                cfg, root, path, device, progress, data, figures, use_shipped, say
            )
        _refuse_if_forbidden(cfg, path)
        return _train_and_evaluate(cfg, path, device, progress, data, figures, say)


def _usable(path: Path, force: bool, use_shipped: bool) -> bool:
    """A finished run is there, and may be used (not forced; not a shipped copy if refused)."""
    if force or not (path / METRICS_FILE).is_file():
        return False
    return use_shipped or not (path / SHIPPED_FILE).is_file()


def _refuse_if_forbidden(cfg: dict[str, Any], path: Path) -> None:
    if os.environ.get(NO_TRAIN_ENV, "").strip() not in ("", "0"):
        raise TrainingForbidden(
            f"{NO_TRAIN_ENV} is set, but {run_label(cfg)} ({path.name}) is neither in "
            f"{path.parent} nor among the shipped runs; config: {json.dumps(cfg, sort_keys=True)}. "
            "Ship it (`mls-tutorial shipped --rebuild`) or unset the variable to train it."
        )


def _cached(path: Path, cfg: dict[str, Any], say) -> Run:
    run = load_run(path)
    if run.config != cfg:
        raise ValueError(f"{path} holds a different config; refusing to reuse it")
    run.cached = True
    say(f"[cached] {run_label(cfg)}: reusing {path}")
    return run


def _seeded_model(cfg: dict[str, Any], data):
    from mls_tutorial.models import build_unet
    from mls_tutorial.train.sampling import RNG_LOCK, seed_everything

    with RNG_LOCK:  # seed and initialise in one step: threads of a process share the RNGs
        seed_everything(cfg["seed"])
        return build_unet(data.in_channels, data.num_classes, cfg["preset"])


def _train_and_evaluate(cfg, path, device, progress, data, figures, say) -> Run:
    from mls_tutorial.losses import build_loss
    from mls_tutorial.train import fit

    data = data if data is not None else get_data(cfg)
    model = _seeded_model(cfg, data)
    loss_fn = build_loss(cfg["loss"], **cfg["loss_kwargs"])
    resuming = (path / CHECKPOINT_NAME).is_file()
    say(
        f"[train] {run_label(cfg)}: {cfg['iterations']} iterations -> {path}"
        + (" (resuming from checkpoint)" if resuming else "")
    )
    history = fit(
        model,
        loss_fn,
        data,
        iterations=cfg["iterations"],
        batch_size=cfg["batch_size"],
        lr=cfg["lr"],
        device=device,
        amp=cfg["amp"],
        seed=cfg["seed"],
        run_dir=path,
        resume=resuming,
        val_every=cfg["val_every"],
        select_metric=cfg["select_metric"],
        progress=progress,
        lr_step=cfg["lr_step"],
    )
    return _finish(cfg, path, model, data, history, None, device, figures)


def _temperature_scaled(cfg, root, path, device, progress, data, figures, use_shipped, say):
    """Fit T on the validation volumes of the run trained without TS (its weights.pt is this
    folder's too) and evaluate the test volumes with logits / T."""
    from mls_tutorial.train import fit_temperature

    base = load_or_train(
        {**cfg, "temperature_scaling": False},
        root,
        device=device,
        progress=progress,
        data=data,
        force=False,
        figures=figures,
        use_shipped=use_shipped,
        log=say,
    )
    data = data if data is not None else get_data(cfg)
    model = base.load_model(device)
    t = fit_temperature(model, data.val, device=device, amp=cfg["amp"])
    say(f"[temperature] {run_label(cfg)}: T = {t:.3f} fitted on {len(data.val)} validation volumes")
    return _finish(cfg, path, model, data, base.history, t, device, figures)


def _finish(cfg, path, model, data, history, temperature, device, figures) -> Run:
    """Evaluate on the test volumes; write history, weights, example and (last) metrics on
    rank 0."""
    import torch

    from mls_tutorial.device import pick_device
    from mls_tutorial.train import distributed as dist_utils
    from mls_tutorial.train import evaluate

    metrics = evaluate(
        model,
        data.test,
        data.num_classes,
        device=device,
        temperature=temperature,
        amp=cfg["amp"],
        class_names=data.class_names,
    )
    metrics["val"] = _val_metrics(model, data, temperature, device, cfg["amp"])
    metrics["data"] = {
        "description": data.description,
        "num_classes": data.num_classes,
        "in_channels": data.in_channels,
        "class_names": list(data.class_names),
        "class_colors": list(data.class_colors),
    }
    metrics["runtime"] = {  # how the run was made (the shipped runs' manifest reads it)
        "device": str(pick_device(device)),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "train_seconds": history.get("seconds"),
    }
    run = Run(path=path, config=cfg, history=history, metrics=metrics)
    if dist_utils.is_main():
        write_json(history, path / HISTORY_FILE)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        save_checkpoint(state, path / WEIGHTS_FILE)
        _write_example(path / EXAMPLE_FILE, model, data, temperature, device, cfg["amp"])
        write_json(metrics, path / METRICS_FILE)
        if figures and not dist_utils.is_distributed():  # plots reduce meters: see load_or_train
            save_figures(run)
    dist_utils.barrier()
    return run


#: the validation numbers kept in metrics.json["val"] (the selection rules read them)
VAL_KEYS = ("dice", "ece", "cece", "ece_all", "gap", "nll", "brier", "tce", "ece_true", "prob_gap")


def _val_metrics(model, data, temperature, device, amp) -> dict[str, Any] | None:
    """``evaluate`` of the kept weights on the validation volumes (no HD95), headline keys."""
    from mls_tutorial.train import evaluate

    if not getattr(data, "val", None):
        return None
    res = evaluate(
        model,
        data.val,
        data.num_classes,
        device=device,
        temperature=temperature,
        amp=amp,
        hd95=False,
        class_names=data.class_names,
    )
    out = {key: res.get(key) for key in (*VAL_KEYS, "dice_bayes", "temperature")}
    out["per_class_dice"] = {name: v["dice"] for name, v in res["per_class"].items()}
    return out


def _write_example(path: Path, model, data, temperature, device, amp) -> None:
    """The test slice with the most foreground (middle of the first test volume on ties)."""
    import torch

    from mls_tutorial.device import pick_device
    from mls_tutorial.train.evaluation import predict_logits

    vol = data.test[0]
    fg = (vol.label != 0).flatten(1).sum(1)
    i = int(torch.argmax(fg)) if int(fg.max()) > 0 else vol.image.shape[0] // 2
    logits = predict_logits(model, vol.image[i : i + 1], device=pick_device(device), amp=amp)
    if temperature is not None:
        logits = logits / temperature
    arrays = {
        "image": vol.image[i, 0].numpy(),
        "label": vol.label[i].numpy(),
        "probs": torch.softmax(logits, 1)[0].cpu().numpy(),
        "slice_index": np.array(i),
    }
    if vol.prob is not None:
        arrays["true_prob"] = vol.prob[i].numpy()
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))
