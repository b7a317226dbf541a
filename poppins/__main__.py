"""``python -m poppins ...``: see ``python -m poppins --help``."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
