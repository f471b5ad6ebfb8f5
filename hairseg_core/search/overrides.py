"""``--set KEY=VALUE`` overrides: the one parser behind ``hairseg train --set`` and ``sweep.py --set``.

Values are YAML scalars (``epochs=1`` → 1, ``flip=true`` → True, ``lr=0.001`` → 0.001), so an override
means what the same line means in a config file. Both commands take the same syntax; they differ only
in where a bare key lands: a single run's config is flat, while a search space holds training
settings under ``fixed:``, so the sweep passes ``bare_prefix="fixed"`` and ``epochs=1`` means
``fixed.epochs`` there, next to dotted keys such as ``scheduler.grace_period=1``.
"""

from __future__ import annotations

from typing import Any

import yaml


def parse_set(pairs: list[str], bare_prefix: str | None = None) -> dict[str, Any]:
    """``["epochs=1", "scheduler.grace_period=1"]`` → ``{"epochs": 1, "scheduler.grace_period": 1}``.

    With ``bare_prefix`` a key without a dot is put under it (``fixed.epochs``); dotted keys are kept.
    Raises ``ValueError`` naming the pair when one is not ``KEY=VALUE``, so each command reports it its way.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
        if bare_prefix is not None and "." not in key:
            key = f"{bare_prefix}.{key}"
        out[key] = yaml.safe_load(value)
    return out
