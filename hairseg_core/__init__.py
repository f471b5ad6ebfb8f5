"""hairseg_core: DeepLabv3+ hair segmentation, training, post-processing and export.

The library is importable without Ray or MLflow; only ``hairseg_core.sweep`` and
``hairseg_core.tracking`` touch those, so a plain script can train one model.
"""

__version__ = "0.1.0"
