"""`python -m vidqa`: the same command line as `vidqa`."""

import sys

from vidqa.cli import main

sys.exit(main())
