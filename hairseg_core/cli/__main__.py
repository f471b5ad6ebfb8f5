"""``python -m hairseg_core.cli ...``: the ``hairseg`` console script."""

import sys

from hairseg_core.cli import main

sys.exit(main())
