"""``mls-tutorial nnunet``: the trainer folder for ``nnUNet_extTrainer``, and the MNI export.

mls-tutorial nnunet path            the folder (stdout) and the line to paste (stderr)
mls-tutorial nnunet path --check    also fails unless nnUNet_extTrainer names the folder
mls-tutorial nnunet export-mni OUT  the bundled MNI task as nnU-Net raw dataset OUT
"""

from __future__ import annotations

import sys

from mls_tutorial.nnunet import ENV_VAR, env_has_folder, trainer_folder

__all__ = ["add_arguments", "run"]


def add_arguments(p) -> None:
    """The ``nnunet`` subparser's own subcommands (``p`` from ``sub.add_parser("nnunet")``)."""
    sub = p.add_subparsers(
        dest="nnunet_command", metavar="ACTION", required=True, help="path or export-mni"
    )
    q = sub.add_parser("path", help=f"print the folder to put in {ENV_VAR}")
    q.add_argument(
        "--check",
        action="store_true",
        help=f"exit with an error unless {ENV_VAR} already names the folder",
    )
    q = sub.add_parser(
        "export-mni",
        help="write the bundled MNI task as an nnU-Net raw dataset",
        description="Write the course's MNI brain task (train, val, test subjects) as an "
        "nnU-Net v2 raw dataset: dataset.json, imagesTr/labelsTr (train + val subjects), "
        "imagesTs/labelsTs (test), splits_final.json (fold 0 = the course's split).",
    )
    q.add_argument("out", help="new folder named DatasetNNN_Name, e.g. $nnUNet_raw/Dataset501_MNI")
    q.add_argument("--seed", type=int, default=0, help="the data's seed (the course's: 0)")


def _path(args) -> int:
    folder = trainer_folder()
    line = f"export {ENV_VAR}={folder}"
    if args.check and not env_has_folder():
        raise ValueError(
            f"{ENV_VAR} does not name the trainer folder, so nnU-Net cannot find "
            f"nnUNetTrainerMbLS & co.; run: {line}"
        )
    print(folder)
    state = "already names it" if env_has_folder() else "does not name it yet"
    print(f"# {ENV_VAR} {state}; paste:\n{line}", file=sys.stderr)
    return 0


def _export(args) -> int:
    from pathlib import Path

    from mls_tutorial.nnunet.export import export_mni

    out = Path(args.out)
    dataset = export_mni(out, seed=args.seed)
    name = out.name
    print(f"wrote {out}: {dataset['numTraining']} training cases, dataset.json, splits_final.json")
    print(
        "next (nnUNet_raw must be the folder holding it):\n"
        f"  nnUNetv2_plan_and_preprocess -d {name[7:10]} -c 2d\n"
        f"  cp {out / 'splits_final.json'} $nnUNet_preprocessed/{name}/\n"
        f"  nnUNetv2_train {name[7:10]} 2d 0 -tr nnUNetTrainerMbLS"
    )
    return 0


def run(args) -> int:
    """Dispatch ``args.nnunet_command``."""
    return {"path": _path, "export-mni": _export}[args.nnunet_command](args)
