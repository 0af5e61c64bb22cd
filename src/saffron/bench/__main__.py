"""``python -m saffron.bench``: the same as ``saffron bench``."""

import sys

from ..cli import main

sys.exit(main(["bench", *sys.argv[1:]]))
