"""`python -m imgfeat ...`: the same command line as the `imgfeat` script."""

import sys

from .cli import main

sys.exit(main())
