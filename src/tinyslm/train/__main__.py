"""``python -m tinyslm.train``: the command line lives in :mod:`tinyslm.cli.train` (nothing below the CLI
imports it), so say where instead of doing nothing."""

import sys

sys.exit("python -m tinyslm.train is now python -m tinyslm.cli.train (or tiny-slm-train); same arguments")
