"""``python -m tinyslm.cli`` = ``tiny-slm``."""

import sys

from tinyslm.cli import main

sys.exit(main())
