"""Write temperature-scaled probabilities in the input's own layout (``--write-calibrated DIR``).

For every reported case, ``softmax(log p / T)`` (``log p`` clipped at the smallest normal of p's
dtype, as ``score`` reads it; a region-based model: each sigmoid channel ``sigmoid(logit / T_r)``
with its region's own T, the argmax ``p_r > 0.5`` unchanged), computed in float64 slab by slab and stored as float32 in the
file layout it came in: nnU-Net (``CASE.npz`` with ``probabilities (C, Z, Y, X)``, compressed
as nnU-Net writes it, beside a copy of its ``CASE.pkl`` and of its argmax ``CASE.nii.gz``,
which temperature scaling does not change), NIfTI (same header and affine) or NumPy. The
folder's ``dataset.json`` is copied too. Everything goes into ``DIR`` as ``score`` writes
``OUT`` (``output``: staged, moved into place at the end, only its own earlier files
replaced), and ``DIR`` may not lie inside the input folder. Memory: the case and its scaled
copy, 2x one case.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mls_tutorial.score.layouts import CaseFiles, ScoreInputError, read_probabilities
from mls_tutorial.score.output import discard, previous_outputs, publish, stage_folder


def check_calibrated_dir(out: str | Path, pred: str | Path) -> Path:
    """``DIR`` resolved; refused when it is (or lies inside) the input folder ``pred``."""
    out, pred = Path(out).resolve(), Path(pred).resolve()
    if out == pred or out.is_relative_to(pred):
        raise ScoreInputError(
            f"--write-calibrated {out} lies inside the input folder {pred}: choose a folder "
            "outside it (score never writes into its input)"
        )
    return out


def _scaled(p: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` of ``p (C, *spatial)``, float32, in p's memory layout."""
    out = np.empty_like(p, dtype=np.float32)  # order "K": the file's own axis order
    tiny = float(np.finfo(p.dtype).tiny)
    axis = 1 + int(np.argmax(np.abs(np.asarray(p.strides[1:]))))
    step = max(1, (1 << 18) // max(1, p.size // p.shape[axis]))
    for lo in range(0, p.shape[axis], step):
        index = (slice(None),) * axis + (slice(lo, lo + step),)
        z = np.log(np.maximum(np.asarray(p[index], dtype=np.float64), tiny)) / temperature
        z -= z.max(0)
        np.exp(z, out=z)
        z /= z.sum(0)
        out[index] = z
    return out


def _scaled_sigmoid(p: np.ndarray, temperatures: Sequence[float]) -> np.ndarray:
    """Channel c of ``p (R, *spatial)`` (sigmoid, one per region) scaled by its own ``T_c``:
    ``softmax(log (1 - p_c, p_c) / T_c)[1] = sigmoid(logit_c / T_c)``, ``1 - p_c`` in p's dtype
    (as ``regions`` reads it)."""
    out = np.empty_like(p, dtype=np.float32)
    for c, t in enumerate(temperatures):
        pc = np.asarray(p[c])
        two = np.stack([np.subtract(1, pc, dtype=pc.dtype), pc])
        out[c] = _scaled(two, t)[1]
    return out


def _write_case(files: CaseFiles, temperature, stage: Path) -> None:
    p = read_probabilities(files.prediction, files.layout)  # (C, X, Y, Z), a view of the file
    if isinstance(temperature, Sequence):
        s = _scaled_sigmoid(p, temperature)
    else:
        s = _scaled(p, temperature)
    name, folder = files.prediction.name, files.prediction.parent
    if files.layout == "nnunet":
        np.savez_compressed(stage / name, probabilities=s.transpose(0, 3, 2, 1))
        for ext in (".pkl", ".nii.gz"):  # the properties and the (unchanged) argmax
            if (folder / f"{files.name}{ext}").is_file():
                shutil.copy2(folder / f"{files.name}{ext}", stage / f"{files.name}{ext}")
    elif files.layout == "numpy":
        np.save(stage / name, s)
    else:
        import nibabel as nib

        img = nib.load(str(files.prediction))
        data = np.moveaxis(s, 0, -1).reshape(img.shape)
        header = img.header.copy()
        header.set_data_dtype(np.float32)
        nib.save(nib.Nifti1Image(data, img.affine, header), stage / name)


def write_calibrated(
    cases: Sequence[CaseFiles],
    temperature: float | Sequence[float],
    out: str | Path,
    pred: str | Path,
    *,
    progress: bool = True,
) -> list[str]:
    """Write every case of ``cases`` scaled by ``temperature`` into ``out``; returns the files.
    A sequence of temperatures: a region-based model's sigmoid channels, one T each."""
    from tqdm.auto import tqdm

    out = check_calibrated_dir(out, pred)
    previous = previous_outputs(out, ())
    created = not out.exists()
    stage = stage_folder(out)
    try:
        for files in tqdm(cases, desc="write calibrated", unit="case", disable=not progress):
            _write_case(files, temperature, stage)
        if (Path(pred) / "dataset.json").is_file():
            shutil.copy2(Path(pred) / "dataset.json", stage / "dataset.json")
        return publish(stage, out, previous)
    except BaseException:
        discard(stage, out, created)
        raise
