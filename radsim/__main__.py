"""`python -m radsim ...`: the `radsim` command line."""

import sys

from radsim.cli.main import main

sys.exit(main())
