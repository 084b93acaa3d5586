"""A tiny synthetic task's run config (4 iterations, 32x32), shared by the run-folder tests."""

DATA = {"n_train": 12, "size": 32, "slices": 3, "n_val": 1, "n_test": 2, "seed": 2}
BASE = {"data": "synthetic", "data_params": DATA, "iterations": 4, "batch_size": 4, "val_every": 2}
