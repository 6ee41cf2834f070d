"""``python -m simulator``: the same as ``bmsctl sim``."""

import sys

from simulator.cli import main

sys.exit(main())
