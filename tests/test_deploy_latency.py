"""The driver's latency for the Pareto pick: one quiet, interleaved measurement per architecture."""

from __future__ import annotations

from hairseg_core.config import FinalizeSettings, TrainConfig
from hairseg_core.search.deploy_latency import architecture_key, measure_deploy_latency


def _cfg(**over) -> TrainConfig:
    base = dict(
        backbone="mobilenet_v2", pretrained="none", aspp_channels=16, decoder_channels=16, base_size=97, crop_size=97
    )
    return TrainConfig(**{**base, **over})


def test_identical_architectures_share_one_measurement_and_learning_settings_do_not_matter() -> None:
    settings = FinalizeSettings(latency_repeats=20)
    configs = {
        "a": _cfg(lr_head=1e-3),
        "b": _cfg(lr_head=5e-3, mixup=True),  # same network, other training: same latency
        "c": _cfg(aspp_channels=32, decoder_channels=32),
    }
    assert architecture_key(configs["a"], settings) == architecture_key(configs["b"], settings)
    assert architecture_key(configs["a"], settings) != architecture_key(configs["c"], settings)
    measured = measure_deploy_latency(configs, settings)
    assert measured["a"] is measured["b"]
    assert measured["a"] is not measured["c"]
    for latency in measured.values():
        assert latency.latency_ms > 0 and latency.latency_p90_ms >= latency.latency_ms
        assert latency.input_size == 97 and latency.form == "onnx fp32"


def test_int8_and_export_size_are_part_of_what_is_timed() -> None:
    settings = FinalizeSettings(latency_repeats=20, quantize="int8", export_size=65)
    measured = measure_deploy_latency({"a": _cfg()}, settings)
    assert measured["a"].form == "onnx int8" and measured["a"].input_size == 65
    assert architecture_key(_cfg(), settings) != architecture_key(_cfg(), FinalizeSettings(export_size=65))
    assert measure_deploy_latency({}, settings) == {}
