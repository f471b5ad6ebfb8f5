"""What the webcam-app tests share: the app script loaded as a module, and a model whose output is known."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def load_webcam_app() -> ModuleType:
    """``pipelines/webcam.py`` as a module (it is a script, not part of the package); loaded once."""
    name = "hairseg_webcam_app"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "pipelines" / "webcam.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class DarkPixelsAreHair(nn.Module):
    """Hair logit = -sharpness * mean normalised intensity: dark → prob ≈ 1, light → prob ≈ 0."""

    def __init__(self, sharpness: float = 10.0) -> None:
        super().__init__()
        self.sharpness = sharpness
        self.config = {"backbone": "dark_pixel_rule", "output_stride": 1, "num_classes": 2}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hair = -self.sharpness * x.mean(dim=1, keepdim=True)
        return torch.cat([torch.zeros_like(hair), hair], dim=1)
