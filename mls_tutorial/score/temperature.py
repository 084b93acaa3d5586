"""Post-hoc temperature scaling fitted on validation cases only.

``T* = argmin_T mean_v -log softmax(log p_v / T)_{y_v}`` (``train.optimal_temperature``, L-BFGS
on log T in float64), ``log p`` clipped at the smallest normal number of p's dtype, over a
seeded uniform subsample of at most ``max_voxels`` voxels (``max_voxels / n_cases`` per case),
drawn in the label's own axis order so that it does not depend on the layout of the files.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from mls_tutorial.score.checks import (
    Pieces,
    as_case,
    check_case,
    check_piece,
    permutation,
    sum_tolerance_for,
)
from mls_tutorial.score.layouts import ScoreInputError


def fit_temperature_on_cases(
    pairs: Iterable,
    *,
    background: int = 0,
    max_voxels: int = 2_000_000,
    n_cases: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Fit ``T*`` on these (validation) cases only (see the module docstring).

    Returns ``temperature``, ``n_voxels`` (of the subsample) and ``cases`` (their names).
    """
    from tqdm.auto import tqdm

    from mls_tutorial.train.temperature import optimal_temperature

    if n_cases is None and isinstance(pairs, Sequence):
        n_cases = len(pairs)
    budget = max_voxels // max(1, n_cases or 1)
    rng = np.random.default_rng(seed)
    zs, ys, names, k = [], [], [], None
    for i, item in enumerate(tqdm(pairs, desc="fit T", unit="case", disable=not progress)):
        case = as_case(item, i)
        p, y, k = check_case(case, k)
        perm = permutation(k, background)
        inv = None if perm is None else torch.from_numpy(np.argsort(perm))
        frac = min(1.0, budget / max(1, y.size))
        keep_all = None if frac >= 1 else rng.random(y.shape, dtype=np.float32) < frac
        tiny, tol = float(np.finfo(p.dtype).tiny), sum_tolerance_for(p.dtype, k)
        pieces = Pieces(p, y)
        for index, pc, yc in pieces:
            check_piece(case.name, pc, yc, k, tol)
            if perm is not None:
                pc, yc = pc[perm], inv[yc]
            if keep_all is not None:
                keep = pieces.take(keep_all, index)
                pc, yc = pc[:, keep], yc[keep]
            zs.append(pc.double().clamp_min(tiny).log_().T.float())
            ys.append(yc)
        names.append(case.name)
        del case, p, y, keep_all
    if not names:
        raise ScoreInputError("no validation case to fit the temperature on")
    z, y = torch.cat(zs), torch.cat(ys)
    if z.shape[0] == 0:
        raise ScoreInputError("the validation cases hold no voxels")
    return {"temperature": optimal_temperature(z, y), "n_voxels": int(z.shape[0]), "cases": names}
