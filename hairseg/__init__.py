"""``python -m hairseg ...``: the ``hairseg`` console script (:mod:`hairseg_core.cli`) by module name.

The library is ``hairseg_core``; this package only gives the front door the project's name.
"""
