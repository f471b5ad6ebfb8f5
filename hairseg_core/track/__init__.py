"""Tracking: the only MLflow glue — runs, the model registry, the UI view, the login server."""
