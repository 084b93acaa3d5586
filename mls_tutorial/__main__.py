"""``python -m mls_tutorial`` (and ``torchrun -m mls_tutorial``) runs the CLI."""

from mls_tutorial.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
