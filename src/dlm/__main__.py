"""`python -m dlm` is the `dlm` command."""

from dlm.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
