"""`python -m dlsn ...`: the `dlsn` command line."""
import sys

from .sr.cli import main

if __name__ == "__main__":
    sys.exit(main())
