"""How a pooled training set is drawn from its sources: in proportion to size, or by explicit weights.

Plain concatenation lets the largest source dominate (celebamask4k's 3 491 images are 71 % of a
celeb1k + figaro1k + celebamask4k pool). ``sources[].weight`` gives each training source a share of the
draws instead: a source with weight 2 is drawn twice as often as one with weight 1, whatever their sizes,
and the images of one source stay equally likely among themselves. The shares are printed before a sweep
starts (:func:`source_shares`) and the trainer draws with :func:`sample_weights`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from hairseg_core.config import DataSource


def source_shares(sources: Sequence[DataSource], sizes: Mapping[str, int]) -> dict[str, float]:
    """Each training source's share of the training draws (sums to 1), given its number of images.

    Without weights a source's share is its share of the images; with weights (then set on every
    training source, :class:`~hairseg_core.config.TrainConfig` checks it) it is its share of the weights.
    """
    train = [s for s in sources if s.train]
    missing = [s.name for s in train if s.name not in sizes]
    if missing:
        raise KeyError(f"no image count for training source(s) {missing}")
    if any(s.weight is not None for s in train):
        total = sum(float(s.weight or 0.0) for s in train)
        return {s.name: float(s.weight or 0.0) / total for s in train}
    total = sum(sizes[s.name] for s in train)
    return {s.name: (sizes[s.name] / total if total else 0.0) for s in train}


def describe_shares(sources: Sequence[DataSource], sizes: Mapping[str, int]) -> str:
    """``celeb1k 742 img 15 %, ...; drawn in proportion to size`` (or ``by sources[].weight``)."""
    shares = source_shares(sources, sizes)
    how = "by sources[].weight" if any(s.weight is not None for s in sources if s.train) else "in proportion to size"
    parts = ", ".join(f"{name} {sizes[name]} img {100 * share:.0f} %" for name, share in shares.items())
    return f"training draws: {parts} ({how})"


def sample_weights(sources: Sequence[DataSource], parts: Sequence[tuple[str, int]]) -> np.ndarray | None:
    """Per-image draw weights of a pooled training split whose parts are ``(source name, images)`` in order.

    ``None`` when no source sets a weight: the trainer then shuffles the pool (every image equally likely),
    exactly as before weights existed, so old sweeps train the same.
    """
    by_name = {s.name: s for s in sources}
    if not any(by_name[name].weight is not None for name, _ in parts if name in by_name):
        return None
    sizes = dict(parts)
    shares = source_shares([by_name[name] for name, _ in parts], sizes)
    return np.concatenate([np.full(n, shares[name] / n if n else 0.0) for name, n in parts])


def train_part_sizes(split: object, sources: Sequence[DataSource]) -> list[tuple[str, int]]:
    """``(source name, images)`` of a pooled training split, in pool order (a single source: its one part)."""
    parts = getattr(split, "parts", None)
    if parts is not None:
        return [(name, len(part)) for name, part in parts]
    name = next((s.name for s in sources if s.train), "data")
    return [(name, len(split))]  # type: ignore[arg-type]
