"""``python -m bertft``: the command line (see :mod:`bertft.cli`)."""

from bertft.cli import main

if __name__ == "__main__":
    main()
