"""`python -m pellucid` runs the command line, as the `pellucid` console script does."""

import sys

from pellucid.cli import main

sys.exit(main())
