"""Export (TorchScript / ONNX), parity with eager PyTorch, metadata and the inference back-ends."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hairseg_core.artifact import (
    CheckpointError,
    MetadataError,
    ModelMetadata,
    ProbabilityModel,
    load_model,
    normalize_image,
    read_metadata,
)
from hairseg_core.builders import UnknownNameError
from hairseg_core.deploy.inference import (
    HairPredictor,
    InferenceError,
    Letterbox,
    Preprocessor,
    load_predictor,
    unletterbox,
)
from hairseg_core.deploy.latency import measure_latency
from hairseg_core.final.export import (
    ExportError,
    ExportParityError,
    export_all,
    export_onnx,
    export_torchscript,
    parity_check,
    synthetic_portrait,
)
from hairseg_core.models import build_model
from hairseg_core.scaling import attach_train_scale, model_train_scale

INPUT_SIZE = 257


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    net = build_model(
        backbone="mobilenet_v2", output_stride=16, pretrained="none", aspp_channels=32, decoder_channels=32
    )
    # A freshly initialised network in eval mode has identity BatchNorm statistics, so its activations shrink
    # block after block and every probability is ~0.5, where export errors would vanish in the softmax.
    # Give it trained-like statistics (one pass in train mode over image-like inputs) and a wider
    # classifier, so the probabilities spread over (0, 1) and the parity tolerance actually bites.
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # cumulative average of the batches below
    batch = torch.cat([normalize_image(synthetic_portrait(129, 129, seed=s)) for s in range(4)])
    with torch.no_grad():
        net.train()(batch)
        net.classifier.weight.normal_(0.0, 0.15)
    return attach_train_scale(net.eval(), INPUT_SIZE)  # as if trained with base_size 257


@pytest.fixture(scope="module")
def exported(model: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("export")
    return export_all(  # no input_size: the trained scale attached to the model
        model,
        out,
        metrics={"mIoU": 0.91, "Acc": 0.97},
        sample_image=synthetic_portrait(200, 150, seed=3),
        latency_repeats=2,
    )


def test_export_all_writes_every_artefact(exported: dict) -> None:
    for key in ("onnx", "torchscript", "checkpoint", "metadata"):
        assert exported[key].is_file(), key
    assert exported["onnx_exporter"] in {"dynamo", "torchscript"}
    assert exported["onnx_opset"] == 18
    assert set(exported["parity"]) == {"model.ts", "model.onnx"}
    assert all(v < 1e-4 for v in exported["parity"].values())
    assert set(exported["latency_ms"]) == {"eager", "torchscript", "onnx"}
    assert all(v > 0 for v in exported["latency_ms"].values())
    assert exported["input_size"] == exported["train_scale"] == INPUT_SIZE
    assert torch.load(exported["checkpoint"], weights_only=True)["train_scale"] == INPUT_SIZE


def test_export_all_needs_a_size_or_a_trained_scale(tmp_path) -> None:
    bare = build_model(backbone="mobilenet_v2", pretrained="none", aspp_channels=16, decoder_channels=16)
    with pytest.raises(ValueError, match="input_size"):
        export_all(bare, tmp_path / "x")
    assert not (tmp_path / "x").exists()  # refused before writing anything


@pytest.mark.parametrize("height,width", [(257, 257), (193, 241)])
def test_parity_on_image_like_input(model: nn.Module, exported: dict, height: int, width: int) -> None:
    image = synthetic_portrait(height, width, seed=height)
    with torch.no_grad():
        hair = ProbabilityModel(model)(normalize_image(image))[0, 1]
    assert hair.shape == (height, width)
    assert float(hair.std()) > 0.05, "probabilities too flat for a meaningful parity check"
    diffs = parity_check(model, [exported["torchscript"], exported["onnx"]], image)
    assert set(diffs) == {"model.ts", "model.onnx"}
    assert max(diffs.values()) < 1e-4


def test_parity_check_detects_a_different_model(model: nn.Module, exported: dict) -> None:
    changed = build_model(backbone="mobilenet_v2", pretrained="none", aspp_channels=32, decoder_channels=32)
    changed.load_state_dict(model.state_dict())
    with torch.no_grad():
        changed.classifier.bias[1] += 0.05  # a small logit shift, as a stale export would show
    with pytest.raises(ExportParityError, match="model.onnx"):
        parity_check(changed.eval(), [exported["onnx"]], synthetic_portrait(96, 128))


def test_onnx_runs_at_dynamic_batch_and_size(exported: dict) -> None:
    session = load_model(exported["onnx"])  # the .onnx suffix: an onnxruntime session
    name = session.get_inputs()[0].name
    assert [isinstance(d, str) for d in session.get_inputs()[0].shape] == [True, False, True, True]
    for batch, height, width in [(1, 224, 224), (3, 257, 257), (2, 193, 241)]:
        x = np.random.default_rng(0).normal(size=(batch, 3, height, width)).astype(np.float32)
        probs = session.run(None, {name: x})[0]
        assert probs.shape == (batch, 2, height, width)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


class _ShapeBaking(nn.Module):
    """Upsamples to a Python int read from the shape: a trace freezes it, a dynamic export cannot hold."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, stride=4, padding=1)
        self.config = {"backbone": "shape_baking"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.conv(x), size=(int(x.shape[2]), int(x.shape[3])), mode="bilinear")


def test_exports_reject_a_model_that_bakes_in_its_input_size(tmp_path) -> None:
    with pytest.warns(torch.jit.TracerWarning), pytest.raises(ExportError, match="check"):
        export_torchscript(_ShapeBaking(), tmp_path / "m.ts", example_size=96)
    with pytest.raises(ExportError):
        export_onnx(_ShapeBaking(), tmp_path / "m.onnx", example_size=96)


def test_onnx_opset17_uses_the_torchscript_exporter(model: nn.Module, tmp_path) -> None:
    info = export_onnx(model, tmp_path / "m17.onnx", opset=17, example_size=129)
    assert (info.exporter, info.opset) == ("torchscript", 17)
    assert "opset" in (info.fallback_reason or "")
    diffs = parity_check(model, [info.path], synthetic_portrait(150, 170))
    assert diffs["m17.onnx"] < 1e-4


def test_metadata_round_trip(exported: dict) -> None:
    metadata = read_metadata(exported["dir"])
    assert metadata.input_size == INPUT_SIZE and metadata.train_scale == INPUT_SIZE
    assert metadata.model_config["backbone"] == "mobilenet_v2"
    assert metadata.model_config["aspp_channels"] == 32
    assert metadata.class_names == ("background", "hair") and metadata.hair_channel == 1
    assert metadata.mean == (0.485, 0.456, 0.406) and metadata.std == (0.229, 0.224, 0.225)
    assert metadata.metrics == {"mIoU": 0.91, "Acc": 0.97}
    assert metadata.onnx_opset == 18 and metadata.torch_version == torch.__version__
    assert metadata.created_at.endswith("+00:00")
    assert metadata.files["onnx"] == "model.onnx"
    raw = json.loads(exported["metadata"].read_text())
    assert raw["model"]["output_stride"] == 16 and raw["preprocess"]["mode"] == "letterbox"
    assert raw["input"]["train_scale"] == INPUT_SIZE
    assert ModelMetadata.from_dict(metadata.to_dict()) == metadata
    del raw["input"]["train_scale"]  # a model.json from before the scale was recorded still reads
    assert ModelMetadata.from_dict(raw).train_scale is None


def test_exports_evaluate_at_the_trained_scale(model: nn.Module, exported: dict, tmp_path) -> None:
    """scale="auto" resizes the short side to model.json's train_scale, at any aspect ratio, like eager."""
    frame = synthetic_portrait(120, 200, seed=11)
    reference = HairPredictor.from_model(model, scale=INPUT_SIZE)(frame)
    native = HairPredictor.from_model(model, scale="native")(frame)
    assert np.abs(reference - native).max() > 0.05  # the scale matters for this model
    for backend in ("onnx", "torchscript", "eager"):
        predictor = load_predictor(exported["dir"], backend, scale="auto")
        assert predictor.inference_scale == INPUT_SIZE
        prob = predictor(frame)
        assert prob.shape == (120, 200)
        np.testing.assert_allclose(prob, reference, atol=1e-4, err_msg=backend)
    np.testing.assert_allclose(load_predictor(exported["onnx"], scale="native")(frame), native, atol=1e-4)

    legacy = tmp_path / "legacy"  # model.json without train_scale: "auto" means the exported size
    legacy.mkdir()
    (legacy / "model.onnx").write_bytes(exported["onnx"].read_bytes())
    raw = json.loads(exported["metadata"].read_text())
    del raw["input"]["train_scale"]
    raw["input"]["size"] = 193
    (legacy / "model.json").write_text(json.dumps(raw))
    assert load_predictor(legacy, scale="auto").inference_scale == 193


def test_metadata_errors_name_file_and_key(exported: dict, tmp_path) -> None:
    raw = json.loads(exported["metadata"].read_text())
    del raw["normalization"]["std"]
    bad = tmp_path / "model.json"
    bad.write_text(json.dumps(raw))
    with pytest.raises(MetadataError, match=r"model\.json.*normalization\.std"):
        read_metadata(bad)
    bad.write_text(json.dumps({**raw, "format": "something-else"}))
    with pytest.raises(MetadataError, match="format"):
        read_metadata(tmp_path)
    with pytest.raises(MetadataError, match="not found"):
        read_metadata(tmp_path / "missing")


def test_letterbox_maps_back_onto_the_frame() -> None:
    box = Letterbox.fit(120, 160, 128)
    assert (box.resized_hw, box.top, box.left) == ((96, 128), 16, 0)
    frame = np.zeros((120, 160, 3), np.uint8)
    frame[:, 100:] = 255  # right part white
    frame[:30, :] = 255  # top band white
    metadata = ModelMetadata(input_size=128)
    batch, box = Preprocessor(metadata)(frame)
    assert batch.shape == (1, 3, 128, 128)
    assert np.all(batch[0, :, :16] == 0) and np.all(batch[0, :, -16:] == 0)  # padding = normalised mean
    white = (batch[0, 0] > 0).astype(np.float32)  # a "probability" that is 1 where the frame was white
    mapped = unletterbox(white, box)
    assert mapped.shape == (120, 160)
    expected = frame[..., 0] > 127
    agree = np.mean((mapped > 0.5) == expected)
    assert agree > 0.98


@pytest.mark.parametrize("backend", ["onnx", "torchscript", "eager"])
def test_load_predictor_backends_give_frame_sized_probabilities(exported: dict, backend: str) -> None:
    frame = synthetic_portrait(120, 160, seed=5)
    from_dir = load_predictor(exported["dir"], backend)
    prob = from_dir(frame)
    assert prob.shape == (120, 160) and prob.dtype == np.float32
    assert 0.0 <= prob.min() and prob.max() <= 1.0
    assert prob.std() > 0.01
    file_key = {"onnx": "onnx", "torchscript": "torchscript", "eager": "checkpoint"}[backend]
    from_file = load_predictor(exported[file_key])
    assert from_file.backend == backend and from_file.input_size == INPUT_SIZE
    np.testing.assert_allclose(from_file(frame), prob, atol=1e-5)
    reference = load_predictor(exported["dir"], "eager")(frame)
    np.testing.assert_allclose(prob, reference, atol=1e-4)


def test_eager_channels_last_matches(exported: dict) -> None:
    frame = synthetic_portrait(90, 70, seed=7)
    plain = load_predictor(exported["checkpoint"])(frame)
    channels_last = load_predictor(exported["checkpoint"], channels_last=True)(frame)
    np.testing.assert_allclose(channels_last, plain, atol=1e-4)


def test_load_predictor_errors(exported: dict, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_predictor(tmp_path / "nope.onnx")
    odd = tmp_path / "model.bin"
    odd.write_bytes(b"x")
    with pytest.raises(InferenceError, match="unknown model file type"):
        load_predictor(odd)
    with pytest.raises(InferenceError, match="needs the 'onnx' back-end"):
        load_predictor(exported["onnx"], "eager")
    with pytest.raises(UnknownNameError, match="onnx"):
        load_predictor(exported["dir"], "tensorrt")
    broken = tmp_path / "broken.pt"
    torch.save({"model_state": {}}, broken)
    with pytest.raises(InferenceError, match="model_config"):
        load_predictor(broken)


def test_measure_latency_reports_median() -> None:
    calls = []
    stats = measure_latency(lambda: calls.append(1), repeats=7, warmup=2)
    assert len(calls) == 9 and stats.repeats == 7
    assert 0 <= stats.min_ms <= stats.median_ms <= stats.p90_ms
    with pytest.raises(ValueError):
        measure_latency(lambda: None, repeats=0)


def test_cli_evaluate_gives_the_same_scores_for_checkpoint_and_exports(
    exported: dict, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`hairseg evaluate` reads a checkpoint, model.onnx, model.ts or the export folder alike."""
    import cv2

    from hairseg_core import cli

    for split in ("test",):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "masks").mkdir(parents=True)
    for seed, (h, w) in enumerate([(180, 140), (150, 210), (129, 129)]):
        image = synthetic_portrait(h, w, seed=seed)
        mask = np.zeros((h, w), np.uint8)
        mask[: h // 3, w // 5 : 4 * w // 5] = 255  # a hair-like cap: scores need not be good, only equal
        cv2.imwrite(str(tmp_path / "test" / "images" / f"p{seed}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(tmp_path / "test" / "masks" / f"p{seed}.png"), mask)

    def evaluate(model_path, *options: str) -> dict:
        assert cli.main(["evaluate", "--model", str(model_path), "--data", str(tmp_path), *options]) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    scores = {}
    for key in ("checkpoint", "onnx", "torchscript", "dir"):
        scores[key] = evaluate(exported[key])
        assert set(scores[key]) == {
            *("acc", "acc_class", "miou", "fwiou", "boundary_f", "n_images", "ms_per_image"),
            *("inference_scale", "scales", "flip", "metric_resolution"),
        }
        assert scores[key]["n_images"] == 3
        assert scores[key]["inference_scale"] == INPUT_SIZE  # auto: the trained scale in model.pt / model.json
        assert scores[key]["metric_resolution"] == "native"
    for key in ("onnx", "torchscript", "dir"):
        for metric in ("acc", "miou", "fwiou"):
            assert scores[key][metric] == pytest.approx(scores["checkpoint"][metric], abs=2e-3), (key, metric)

    native = evaluate(exported["dir"], "--scale", "native")
    assert native["inference_scale"] == "native" and native["n_images"] == 3
    multi = evaluate(exported["dir"], "--scale", "129", "--multi-scale", "--flip")
    assert (multi["inference_scale"], multi["scales"], multi["flip"]) == (129, [0.75, 1.0, 1.25], True)
    assert cli.main(["evaluate", "--model", str(exported["dir"]), "--data", str(tmp_path), "--scale", "huge"]) == 2
    assert "scale must be" in capsys.readouterr().err


def test_load_model_reads_every_form_of_an_export(exported: dict, model: nn.Module) -> None:
    """``artifact.load_model``: one entry for the eager network, TorchScript and ONNX, by file or directory."""
    x = normalize_image(synthetic_portrait(65, 81))
    with torch.no_grad():
        want = torch.softmax(model.eval()(x), 1).numpy()
    eager = load_model(exported["dir"], "eager")  # the directory's model.pt
    assert model_train_scale(eager) == model_train_scale(model)
    with torch.no_grad():
        np.testing.assert_allclose(torch.softmax(eager(x), 1).numpy(), want, atol=1e-5)
        np.testing.assert_allclose(load_model(exported["torchscript"])(x).numpy(), want, atol=1e-4)
    session = load_model(exported["dir"])  # a directory defaults to ONNX
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, want, atol=1e-4)
    with pytest.raises(ValueError, match="unknown model form 'tflite'"):
        load_model(exported["dir"], "tflite")
    with pytest.raises(CheckpointError, match="not a hairseg checkpoint"):
        load_model(exported["checkpoint"], "state")  # an export's model.pt is not a training state


@pytest.fixture(scope="module")
def exported_int8(model: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("export-int8")
    portraits = [synthetic_portrait(160, 200, seed=s) for s in range(6)]
    return export_all(
        model,
        out,
        input_size=129,
        metrics={"miou": 0.91},
        sample_image=synthetic_portrait(200, 150, seed=3),
        latency_repeats=2,
        quantize="int8",
        calibration=portraits[:4],
        frames=portraits[4:],
    )


def test_int8_export_is_the_onnx_entry_with_the_same_contract(exported_int8: dict) -> None:
    """model.json points every reader at the int8 graph; input float32 NCHW, output softmax, fp32 kept."""
    import onnx

    out = exported_int8["dir"]
    meta = read_metadata(out)
    assert meta.files["onnx"] == "model.int8.onnx" and meta.files["onnx_fp32"] == "model.onnx"
    graph = onnx.load(str(out / "model.int8.onnx")).graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ, not a copy of the fp32 graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    session = load_model(out / "model.int8.onnx", "onnx")
    x = normalize_image(synthetic_portrait(129, 129, seed=7)).numpy()
    probs = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert probs.shape == (1, 2, 129, 129) and np.allclose(probs.sum(axis=1), 1.0, atol=2 / 255)  # uint8 steps
    fp32 = load_model(out / "model.onnx", "onnx").run(None, {session.get_inputs()[0].name: x})[0]
    # int8, not exact: close on average (a random-weight net calibrated on 4 synthetic images; real-data
    # accuracy of int8 is measured by the final stage, benchmarks/README.md)
    assert float(np.mean(np.abs(probs - fp32))) < 0.1
    # the app's loader takes the folder unchanged and runs the int8 graph
    predictor = load_predictor(out)
    assert predictor.runner.path.name == "model.int8.onnx"
    assert predictor(synthetic_portrait(120, 90, seed=1)).shape == (120, 90)


def test_int8_export_reports_agreement_and_frame_latency(exported_int8: dict) -> None:
    parity, latency, quant = exported_int8["parity"], exported_int8["latency_ms"], exported_int8["quantization"]
    assert parity["model.onnx"] < 1e-4  # the fp32 graph still passes the strict parity check
    assert 0.5 < quant["agreement"] <= 1.0  # random weights: p near 0.5, decisions flip
    assert 0.0 < quant["mean_abs_diff"] < 0.1 and quant["calibration_images"] == 4
    assert latency["onnx_int8"] > 0 and latency["frame_1_thread"] > 0
    meta = read_metadata(exported_int8["dir"])
    assert meta.latency_ms == latency and meta.quantization == quant


def test_quantize_rejects_unknown_modes_and_missing_calibration(model: nn.Module, tmp_path) -> None:
    with pytest.raises(ValueError, match="quantize must be one of"):
        export_all(model, tmp_path / "a", input_size=97, quantize="int4")
    from hairseg_core.deploy.quantize import QuantizationError

    with pytest.raises(QuantizationError, match="at least one image"):
        export_all(model, tmp_path / "b", input_size=97, quantize="int8", latency_repeats=2)
