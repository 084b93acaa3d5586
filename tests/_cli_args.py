"""Command-line arguments for a tiny synthetic task, shared by the CLI and torchrun tests."""

SYNTHETIC_DATA = [
    "--data",
    "synthetic",
    "--data-param",
    "n_train=8",
    "--data-param",
    "size=32",
    "--data-param",
    "slices=2",
]
