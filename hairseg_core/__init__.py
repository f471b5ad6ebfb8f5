"""hairseg_core: DeepLabv3+ hair segmentation, training, post-processing and export.

The library is importable without Ray or MLflow; only ``hairseg_core.search`` and
``hairseg_core.track`` touch those, so a plain script can train one model.
"""

__version__ = "0.1.0"
