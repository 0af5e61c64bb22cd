"""``python -m saffron.cli``: the same as ``saffron``."""

import sys

from . import main

sys.exit(main())
