"""`python -m radsim.measure.campaign`: the campaign on a bare GPU machine (torch and numpy only)."""

import sys

from radsim.measure.campaign.run import main

sys.exit(main())
