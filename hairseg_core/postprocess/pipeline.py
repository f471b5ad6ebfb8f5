"""Named post-processing pipelines, the four columns of the paper's Table 5.

Each pipeline maps ``(image uint8 HxWx3 RGB, probs float32 [2,H,W] softmax)`` to a hair
probability / α matte (float32 HxW in [0, 1]); evaluation thresholds it at 0.5.

- ``baseline``: the network's hair probability, untouched;
- ``crf``: dense CRF, then its hair probability;
- ``matting``: trimap around the network's argmax mask, then α matting;
- ``crf+matting``: dense CRF, trimap around the CRF's argmax, then α matting.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hairseg_core.builders import Registry
from hairseg_core.postprocess.crf import DenseCRF, check_probs, check_rgb_image
from hairseg_core.postprocess.matting import MATTING
from hairseg_core.postprocess.trimap import UNKNOWN, make_trimap


@dataclass(frozen=True)
class PostProcessor:
    """Optional dense CRF followed by optional trimap + matting; plain data, so it pickles (Ray).

    A matting stage whose trimap has no known pixels (an image smaller than the band) leaves
    the probability as it is, since matting has nothing to propagate from.
    """

    name: str
    crf: DenseCRF | None = None
    matting: str | None = None
    trimap_width: int = 10
    matting_params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.matting is not None:
            method = MATTING.get(self.matting)  # fail at build time with the list of valid methods
            try:
                inspect.signature(method).bind(None, None, **self.matting_params)
            except TypeError as err:
                raise TypeError(
                    f"postprocessor {self.name!r}: bad matting_params for {self.matting!r}: {err}"
                ) from None
        if isinstance(self.trimap_width, bool) or not isinstance(self.trimap_width, int) or self.trimap_width < 0:
            raise ValueError(
                f"postprocessor {self.name!r}: trimap_width must be an int >= 0, got {self.trimap_width!r}"
            )

    def __call__(self, image: np.ndarray, probs: np.ndarray) -> np.ndarray:
        where = f"postprocessor {self.name!r}"
        image = check_rgb_image(image, where)
        probs = check_probs(probs, image.shape[:2], where)
        if probs.shape[0] != 2:
            raise ValueError(f"{where}: expected [2,H,W] (background, hair) softmax, got {probs.shape[0]} classes")
        if self.crf is not None:
            probs = self.crf(image, probs)
        hair = np.ascontiguousarray(probs[1], dtype=np.float32)
        if self.matting is None:
            return np.clip(hair, 0.0, 1.0)
        trimap = make_trimap(probs[1] > probs[0], width=self.trimap_width)
        if (trimap == UNKNOWN).all():
            return np.clip(hair, 0.0, 1.0)
        return MATTING.get(self.matting)(image, trimap, **dict(self.matting_params))


POSTPROCESSORS: Registry[PostProcessor] = Registry("postprocessor")


@POSTPROCESSORS.register("baseline")
def _baseline() -> PostProcessor:
    return PostProcessor(name="baseline")


@POSTPROCESSORS.register("crf")
def _crf(**crf_params: float) -> PostProcessor:
    """``crf_params`` are :class:`DenseCRF` fields (iterations, gaussian_sxy, ...)."""
    return PostProcessor(name="crf", crf=DenseCRF.from_params(**crf_params))


@POSTPROCESSORS.register("matting")
def _matting(
    method: str = "mishima", trimap_width: int = 10, matting_params: Mapping[str, Any] | None = None
) -> PostProcessor:
    return PostProcessor(
        name="matting", matting=method, trimap_width=trimap_width, matting_params=dict(matting_params or {})
    )


@POSTPROCESSORS.register("crf+matting")
def _crf_matting(
    method: str = "mishima",
    trimap_width: int = 10,
    matting_params: Mapping[str, Any] | None = None,
    **crf_params: float,
) -> PostProcessor:
    """Matting options as for ``matting``; any other keyword is a :class:`DenseCRF` field."""
    return PostProcessor(
        name="crf+matting",
        crf=DenseCRF.from_params(**crf_params),
        matting=method,
        trimap_width=trimap_width,
        matting_params=dict(matting_params or {}),
    )


def build_postprocessor(name: str, **params: Any) -> PostProcessor:
    """``build_postprocessor("crf+matting", iterations=10, method="closed_form", trimap_width=15)``."""
    return POSTPROCESSORS.build(name, **params)


#: The rows of the paper's Table 5, in order.
TABLE5_VARIANTS = ("baseline", "crf", "matting", "crf+matting")


def build_table5_variants(crf: dict[str, Any], matting: dict[str, Any]) -> dict[str, PostProcessor]:
    """Each Table 5 variant with its stage settings (CRF settings to the CRF stages, matting to matting)."""
    processors = {}
    for name in TABLE5_VARIANTS:
        params: dict[str, Any] = {}
        if "crf" in name:
            params.update(crf)
        if "matting" in name:
            params.update(matting)
        processors[name] = build_postprocessor(name, **params)
    return processors
