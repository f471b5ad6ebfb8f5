"""Inference at the scale a model was trained for: the rule, the predictors, and a real-data check.

A model trained on short sides of ``base_size`` px only recognises hair at that object scale; the
predictors resize the short side to it, run the network, and resize the probabilities back to the
image's own H x W, so metrics stay at full resolution.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from sweep_helpers import tiny_train_config
from torch import nn

from hairseg_core import evaluate
from hairseg_core.artifact import ModelMetadata, load_model
from hairseg_core.deploy.inference import LETTERBOX, HairPredictor, load_predictor
from hairseg_core.final.export import save_checkpoint
from hairseg_core.models import build_model
from hairseg_core.scaling import (
    MULTI_SCALES,
    attach_train_scale,
    inference_scale,
    model_train_scale,
    parse_scale,
    resolve_scale,
    short_side_hw,
)
from hairseg_core.train.trainer import Trainer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SHARED = Path(__file__).resolve().parents[2] / "shared"
CELEB = SHARED / "data" / "celeb1k"
IMAGENET_MOBILENET_V2 = SHARED / "weights" / "mobilenet_v2-b0353104.pth"


class Recorder(nn.Module):
    """Records each input shape; hair logit = (input height / 100) everywhere, so the output says its scale."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        hair = torch.full_like(x[:, :1], x.shape[2] / 100.0)
        return torch.cat([torch.zeros_like(hair), hair], dim=1)


class Pixelwise(nn.Module):
    """Hair logit from each pixel's own colour: equivariant to flips, so mirrored inputs must agree."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hair = 3.0 * (x[:, :1] - x[:, 2:3])
        return torch.cat([torch.zeros_like(hair), hair], dim=1)


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + np.exp(-v))


# ------------------------------------------------------------------------------------------- the rule


def test_inference_scale_is_the_training_short_side(tmp_path: Path) -> None:
    assert inference_scale({"base_size": 193, "crop_size": 129, "eval_size": 257}) == 193
    assert inference_scale(tiny_train_config(tmp_path, base_size=97, crop_size=65)) == 97
    with pytest.raises(ValueError, match="base_size"):
        inference_scale({"crop_size": 129})


def test_parse_and_resolve_scale() -> None:
    assert parse_scale("auto") == "auto" and parse_scale(" Native ") == "native"
    assert parse_scale("129") == 129 and parse_scale(129) == 129 and parse_scale(None) is None
    for bad in ("big", "4", "-3"):
        with pytest.raises(ValueError):
            parse_scale(bad)
    assert resolve_scale("auto", 193) == 193
    assert resolve_scale("auto", None) is None  # nothing recorded: native, as such models were measured
    assert resolve_scale("native", 193) is None and resolve_scale(None, 193) is None
    assert resolve_scale(257, 193) == 257


def test_short_side_keeps_the_aspect_ratio() -> None:
    assert short_side_hw(512, 512, 193) == (193, 193)
    assert short_side_hw(120, 160, 64) == (64, 85)  # landscape: height is the short side
    assert short_side_hw(300, 200, 100) == (150, 100)  # portrait: width is


# ----------------------------------------------------------------------------------------- predictors


def test_model_predictor_runs_at_the_short_side_and_returns_full_size() -> None:
    net = Recorder()
    predictor = HairPredictor.from_model(net, scale=100)
    probs = predictor.probabilities(_image(300, 200))  # portrait, not square
    assert net.shapes == [(1, 3, 150, 100)]
    assert probs.shape == (2, 300, 200) and probs.dtype == np.float32
    np.testing.assert_allclose(probs[1], _sigmoid(1.5), atol=1e-6)
    assert predictor(_image(120, 160)).shape == (120, 160)
    assert net.shapes[-1] == (1, 3, 100, 133)
    assert predictor.inference_scale == 100


def test_native_keeps_the_image_size() -> None:
    net = Recorder()
    predictor = HairPredictor.from_model(attach_train_scale(net, 64), scale="native")
    assert predictor.scale is None and predictor.inference_scale == "native"
    assert predictor.probabilities(_image(90, 70)).shape == (2, 90, 70)
    assert net.shapes == [(1, 3, 90, 70)]


def test_auto_uses_the_scale_attached_to_the_model() -> None:
    net = attach_train_scale(Recorder(), 64)
    assert HairPredictor.from_model(net).scale == 64
    assert HairPredictor.from_model(Recorder()).scale is None  # a bare module: its own resolution


def test_multi_scale_averages_probabilities() -> None:
    net = Recorder()
    probs = HairPredictor.from_model(net, scale=100, scales=MULTI_SCALES).probabilities(_image(100, 160))
    assert [s[2] for s in net.shapes] == [75, 100, 125]  # landscape: the short side is the height
    assert probs.shape == (2, 100, 160)
    expected = np.mean([_sigmoid(s / 100.0) for s in (75, 100, 125)])
    np.testing.assert_allclose(probs[1], expected, atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-6)


def test_flip_is_undone_before_averaging() -> None:
    image = _image(64, 96, seed=3)  # random, so anything left mirrored would disagree
    plain = HairPredictor.from_model(Pixelwise(), scale="native").probabilities(image)
    flipped = HairPredictor.from_model(Pixelwise(), scale="native", flip=True).probabilities(image)
    np.testing.assert_allclose(flipped, plain, atol=1e-6)
    assert float(plain[1].std()) > 0.1
    net = Recorder()
    HairPredictor.from_model(net, scale=32, flip=True)(image)
    assert net.shapes == [(2, 3, 32, 48)]  # one batch: the image and its mirror


class _RecordingRunner:
    """A back-end (numpy in, probabilities out) that records its input shapes."""

    name = "fake"

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.shapes.append(batch.shape)
        out = np.empty((batch.shape[0], 2, *batch.shape[2:]), np.float32)
        out[:, 0], out[:, 1] = 0.75, 0.25
        return out


def test_hair_predictor_short_side_letterbox_and_native() -> None:
    metadata = ModelMetadata(input_size=128, train_scale=64)
    runner = _RecordingRunner()
    frame = _image(120, 160)
    assert HairPredictor(runner, metadata, scale=64)(frame).shape == (120, 160)
    assert runner.shapes[-1] == (1, 3, 64, 85)
    assert HairPredictor(runner, metadata)(frame).shape == (120, 160)  # the app's default
    assert runner.shapes[-1] == (1, 3, 128, 128)
    assert HairPredictor(runner, metadata, scale=None)(frame).shape == (120, 160)
    assert runner.shapes[-1] == (1, 3, 120, 160)
    HairPredictor(runner, metadata, scale=64, scales=(0.5, 1.0), flip=True)(frame)
    assert runner.shapes[-2:] == [(2, 3, 32, 43), (2, 3, 64, 85)]
    assert HairPredictor(runner, metadata, scale=64).inference_scale == 64
    assert HairPredictor(runner, metadata).inference_scale == f"{LETTERBOX}-128"
    assert HairPredictor(runner, metadata, scale="auto").scale == 64
    assert HairPredictor(runner, ModelMetadata(input_size=128), scale="auto").scale == 128  # older model.json
    with pytest.raises(ValueError, match="letterbox"):
        HairPredictor(runner, metadata, scales=MULTI_SCALES)


def test_checkpoints_carry_their_scale_to_every_loader(tmp_path: Path) -> None:
    """Training checkpoint → load_model / evaluate / inference; export checkpoint → inference."""
    ckpt = Trainer(tiny_train_config(tmp_path, base_size=81, crop_size=65)).save_checkpoint(tmp_path / "c.pt")
    model = load_model(ckpt, "eager")
    assert model_train_scale(model) == 81
    assert load_predictor(ckpt, scale="auto").scale == 81
    assert load_predictor(ckpt, scale="native").scale is None
    assert load_predictor(ckpt, scale=97).scale == 97
    eager = load_predictor(ckpt)  # the webcam app on a bare training checkpoint
    assert eager.metadata.train_scale == 81 and eager.input_size == 81

    exported = save_checkpoint(model, tmp_path / "export" / "model.pt")
    assert torch.load(exported, weights_only=True)["train_scale"] == 81
    predictor = load_predictor(exported, scale="auto")  # export checkpoint → inference back-end, scale "auto"
    assert predictor.inference_scale == 81
    frame = _image(70, 100)
    reference = HairPredictor.from_model(model, scale=81)(frame)
    np.testing.assert_allclose(predictor(frame), reference, atol=1e-5)


def test_export_checkpoint_without_scale_reads_as_unknown(tmp_path: Path) -> None:
    net = build_model(backbone="mobilenet_v2", pretrained="none", aspp_channels=16, decoder_channels=16)
    path = save_checkpoint(net, tmp_path / "model.pt")
    assert torch.load(path, weights_only=True)["train_scale"] is None
    predictor = load_predictor(path)
    assert predictor.metadata.train_scale is None and predictor.input_size == 257  # the old default


# ------------------------------------------------------------------------------------------ real data


@pytest.mark.slow
@pytest.mark.skipif(
    not (CELEB / "test").is_dir() or not IMAGENET_MOBILENET_V2.is_file(), reason="../shared data/weights absent"
)
def test_real_model_scores_higher_at_its_trained_scale(tmp_path: Path) -> None:
    """ImageNet MobileNetV2 DeepLabv3+ fine-tuned 40 steps at 129 px on celeb1k (512 px photos): run at 129 px
    it beats the same network run at 512 px by a wide margin (measured: ~0.84 against ~0.71 mIoU)."""
    from hairseg_core.config import TrainConfig
    from hairseg_core.data import build_dataset
    from hairseg_core.data.memory import MaterializedSplit
    from hairseg_core.train.trainer import TrialData

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        train_set = build_dataset("folder", "train", root=str(CELEB))
        test_set = build_dataset("folder", "test", root=str(CELEB))
        data = TrialData(
            train=MaterializedSplit.from_dataset([train_set[i] for i in range(320)]),
            val=MaterializedSplit.from_dataset([test_set[i] for i in range(8)]),
        )
        cfg = TrainConfig(
            dataset="folder",
            data_root=str(CELEB),
            backbone="mobilenet_v2",
            pretrained=str(IMAGENET_MOBILENET_V2),
            aspp_channels=64,
            decoder_channels=64,
            base_size=129,
            crop_size=129,
            batch_size=8,
            epochs=1,
            max_steps_per_epoch=40,
            optimizer="adamw",
            lr_backbone=3e-4,
            lr_head=3e-3,
            precise_bn_batches=4,
            num_workers=0,
            device="cpu",
            seed=0,
        )
        trainer = Trainer(cfg, data=data)
        trainer.run_epoch()
        ckpt = trainer.save_checkpoint(tmp_path / "checkpoint.pt")
        trained_seconds = time.perf_counter() - start

        evaluation = [test_set[i] for i in range(20, 36)]  # 16 images the training never saw
        scores = {}
        for scale in ("native", "auto"):
            predictor = load_predictor(ckpt, scale=scale)
            scores[scale] = evaluate.evaluate_predictor(predictor, evaluation)
            probs = predictor.probabilities(evaluation[0]["image"])
            assert probs.shape == (2, 512, 512), "probabilities must come back at the native size"
    finally:
        torch.set_num_threads(threads)
    assert predictor.scale == 129
    # ~20 s of fine-tuning on one idle core; not asserted, a shared machine can make it several times slower
    print(
        f"fine-tuned in {trained_seconds:.0f} s; mIoU native {scores['native']['miou']:.3f}, "
        f"at 129 px {scores['auto']['miou']:.3f}"
    )
    assert scores["auto"]["miou"] > scores["native"]["miou"] + 0.05, scores
    assert scores["auto"]["miou"] > 0.75, scores
