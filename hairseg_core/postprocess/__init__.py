"""Post-processing of segmentation output: dense CRF, trimaps and alpha matting (paper §3.4, §5.6).

``POSTPROCESSORS`` names the four pipelines of Table 5 (baseline, crf, matting, crf+matting);
``build_postprocessor(name, **params)`` returns a callable ``(image, probs) -> HxW float32``.
"""

from hairseg_core.postprocess.crf import DenseCRF, check_probs, check_rgb_image
from hairseg_core.postprocess.matting import MATTING, closed_form_matting, mishima_matting
from hairseg_core.postprocess.pipeline import POSTPROCESSORS, PostProcessor, build_postprocessor
from hairseg_core.postprocess.trimap import BACKGROUND, FOREGROUND, UNKNOWN, check_trimap, make_trimap

__all__ = [
    "BACKGROUND",
    "FOREGROUND",
    "MATTING",
    "POSTPROCESSORS",
    "UNKNOWN",
    "DenseCRF",
    "PostProcessor",
    "build_postprocessor",
    "check_probs",
    "check_rgb_image",
    "check_trimap",
    "closed_form_matting",
    "make_trimap",
    "mishima_matting",
]
