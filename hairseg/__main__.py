"""``python -m hairseg sweep|finalize|webcam|train|...``: the same command as ``hairseg ...``."""

import sys

from hairseg_core.cli import main

sys.exit(main())
