"""Tracking: the only MLflow glue, one module per job.

- ``tags``: every MLflow tag name hairseg writes or reads (the contract with existing stores).
- ``errors``, ``retry``, ``client``: what can fail, riding out outages, where the store is and whether it answers.
- ``experiment``: one experiment and the plain run writes; ``provenance``: the machine and code behind a run.
- ``runs`` (a sweep's parent and final-stage runs; ``Tracker``), ``trials``, ``retire``, ``registry``: each kind of run.
- ``view``: the UI's saved comparison view; ``summary``: a sweep's results onto its parent run.
- ``server``: the login-protected tracking server a cluster runs.
"""
