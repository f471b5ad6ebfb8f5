"""The paper's Tables 1–6 as data, for the reproduction report's "vs the paper" section.

Transcribed from *Deep Hair Segmentation, Matting and Application* (Sun, Zhou, Wang;
``../shared/paper.md``). Percentages are kept as fractions (90.15 % → 0.9015) so they line up
with this project's metrics; losses are as printed. Keys are the paper's column names.

Conditions the paper's numbers were obtained under (§4, §5.2, §5.3), which the report states
next to any comparison because a sweep almost never matches them:

* data: LFW parts, 250×250, 1,500 train / 500 val / 927 test (Table 6 adds CelebHair 218×178);
* resolution: base_size = crop_size = 257;
* budget: Table 1 20 epochs with a frozen backbone, batch 32 (Xception 16), one V100; Tables 2–5
  the best of 80 epochs, ResNet-101, Adam 1e-4 backbone / 1e-3 head, no weight decay.
"""

from __future__ import annotations

from typing import Any

PAPER = "Sun, Zhou, Wang: Deep Hair Segmentation, Matting and Application (CS231n)"

PAPER_CONDITIONS = (
    "LFW parts (250×250 portraits; 1,500 train / 500 val / 927 test), base/crop size 257, "
    "DeepLabv3+ on one V100; Table 1: 20 epochs with a frozen pretrained backbone, batch 32; "
    "Tables 2–5: ResNet-101, best of 80 epochs, Adam 1e-4 backbone / 1e-3 head"
)

#: Table 1: DeepLabv3+ with different backbones (val set, best of 20 epochs, frozen backbone).
TABLE1_BACKBONES: dict[str, dict[str, float]] = {
    "MobileNet": {
        "acc": 0.9573,
        "acc_class": 0.8834,
        "fwiou": 0.9228,
        "miou": 0.8049,
        "loss": 0.05751,
        "s_epoch": 27.05,
    },
    "ResNet101": {
        "acc": 0.9698,
        "acc_class": 0.8992,
        "fwiou": 0.9430,
        "miou": 0.8507,
        "loss": 0.04279,
        "s_epoch": 44.30,
    },
    "DRN": {"acc": 0.9593, "acc_class": 0.8767, "fwiou": 0.9254, "miou": 0.8087, "loss": 0.0547, "s_epoch": 57.15},
    "Xception": {"acc": 0.9347, "acc_class": 0.8230, "fwiou": 0.8874, "miou": 0.7243, "loss": 0.3906, "s_epoch": 35.55},
}

#: Table 2: effects of data augmentation (random scale crop, Gaussian blur); val mIoU and loss.
TABLE2_AUGMENTATION: dict[str, dict[str, float]] = {
    "Baseline": {"miou": 0.8903, "loss": 0.03561},
    "Baseline+RSC": {"miou": 0.9008, "loss": 0.0324},
    "Baseline+RSC+GB": {"miou": 0.9015, "loss": 0.03064},
}

#: Table 3: effects of mixup; val mIoU and loss.
TABLE3_MIXUP: dict[str, dict[str, float]] = {
    "No mixup": {"miou": 0.9015, "loss": 0.03064},
    "Mixup α = 0.2": {"miou": 0.9021, "loss": 0.02792},
    "Mixup α = 0.4": {"miou": 0.9032, "loss": 0.02855},
}

#: Table 4: effects of the loss function (CE, focal γ=2 α=0.5, CE + gradient consistency).
TABLE4_LOSS: dict[str, dict[str, float]] = {
    "CE": {"miou": 0.9015, "acc": 0.9802},
    "FL": {"miou": 0.8931, "acc": 0.9781},
    "CE+GC": {"miou": 0.9000, "acc": 0.9798},
}

#: Table 5: effects of matting and CRF (test set).
TABLE5_POSTPROCESSING: dict[str, dict[str, float]] = {
    "Baseline": {"miou": 0.9002, "acc": 0.9804},
    "+CRF": {"miou": 0.8949, "acc": 0.9797},
    "+Matting": {"miou": 0.8701, "acc": 0.9740},
    "+CRF+Matting": {"miou": 0.8604, "acc": 0.9725},
}

#: Table 6: quantitative evaluation on different datasets ("val" and "test" rows per metric).
TABLE6_DATASETS: dict[str, dict[str, dict[str, float]]] = {
    "LFW": {
        "val": {"acc": 0.9802, "acc_class": 0.9460, "fwiou": 0.9624, "miou": 0.9015, "loss": 0.03064},
        "test": {"acc": 0.9804, "acc_class": 0.9420, "fwiou": 0.9626, "miou": 0.9002, "loss": 0.05463},
    },
    "CelebA": {
        "val": {"acc": 0.9662, "acc_class": 0.9587, "fwiou": 0.9350, "miou": 0.9221, "loss": 0.04761},
        "test": {"acc": 0.9692, "acc_class": 0.9607, "fwiou": 0.9409, "miou": 0.9233, "loss": 0.04204},
    },
    "LFW+CelebA": {
        "val": {"acc": 0.9732, "acc_class": 0.9588, "fwiou": 0.9485, "miou": 0.9202, "loss": 0.08247},
        "test": {"acc": 0.9764, "acc_class": 0.9569, "fwiou": 0.9550, "miou": 0.9162, "loss": 0.09932},
    },
}

#: This project's backbone names → the paper's Table 1 columns.
BACKBONE_TO_PAPER = {
    "mobilenet_v2": "MobileNet",
    "mobilenet_v3_large": "MobileNet",
    "resnet101": "ResNet101",
    "drn_d_54": "DRN",
    "xception": "Xception",
}

#: Table 5 variants of ``hairseg_core.postprocess.pipeline`` → the paper's column names.
VARIANT_TO_PAPER = {"baseline": "Baseline", "crf": "+CRF", "matting": "+Matting", "crf+matting": "+CRF+Matting"}


def augmentation_label(rsc: Any, blur: Any) -> str | None:
    """Table 2's column for a trial's ``rsc`` / ``blur`` settings (None: GB without RSC, not in the paper)."""
    rsc, blur = _truthy(rsc), _truthy(blur)
    if not rsc and not blur:
        return "Baseline"
    if rsc and not blur:
        return "Baseline+RSC"
    if rsc and blur:
        return "Baseline+RSC+GB"
    return None


def mixup_label(mixup: Any, alpha: Any) -> str | None:
    """Table 3's column for a trial's ``mixup`` / ``mixup_alpha`` (None: an α the paper did not run)."""
    if not _truthy(mixup):
        return "No mixup"
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        return None
    return {0.2: "Mixup α = 0.2", 0.4: "Mixup α = 0.4"}.get(round(value, 3))


def loss_label(loss: Any, gc_weight: Any, lovasz_weight: Any = 0) -> str | None:
    """Table 4's column for a trial's ``loss`` / ``gc_weight`` (None: focal + GC or a Lovász term, not in
    the paper)."""
    try:
        gc = float(gc_weight or 0)
        lovasz = float(lovasz_weight or 0)
    except (TypeError, ValueError):
        gc, lovasz = 0.0, 0.0
    if lovasz > 0:
        return None
    if str(loss) == "ce":
        return "CE+GC" if gc > 0 else "CE"
    if str(loss) == "focal" and gc == 0:
        return "FL"
    return None


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in {"true", "1", "yes"}
