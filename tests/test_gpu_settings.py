"""``auto`` AMP / channels-last / cudnn benchmark: the choice, the sweep's cache, and the CPU path unchanged.

The probe's logic runs here with an injected timing function (what a GPU would measure is the only thing
injected: the cache is real files, the claim/wait protocol real, the Trainer real); the GPU timing itself is
``benchmarks/gpu_train.py``'s job on a GPU machine (``--dry-run`` below checks its code paths on the CPU
with pydantic, albumentations, Ray, MLflow and Optuna unimportable, as on that machine).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from sweep_helpers import tiny_train_config

from hairseg_core.train.gpu_settings import (
    KNOBS,
    GpuSettings,
    ProbeKey,
    SettingsCache,
    candidates,
    choose,
    combo_name,
    resolve_gpu_settings,
    resolve_settings,
)
from hairseg_core.train.gpu_table import GpuTable, parse_lines

ROOT = Path(__file__).resolve().parent.parent
AUTO = {"amp": "auto", "channels_last": "auto", "cudnn_benchmark": "auto"}

#: What an H200 measured for ResNet-101 at 257 px, batch 8 (images/s, benchmarks/README.md): fp32 fastest.
RESNET_B8 = {"fp32": 162.8, "cl": 146.2, "amp": 124.5, "amp+cl": 102.7}


def _key(**changes: object) -> ProbeKey:
    fields = dict(
        gpu="NVIDIA H200",
        torch="2.11",
        backbone="resnet101",
        output_stride=16,
        aspp_channels=256,
        decoder_channels=256,
        crop=257,
        batch=8,
        fixed="",
    )
    fields.update(changes)
    return ProbeKey(**fields)  # type: ignore[arg-type]


class Timer:
    """Timings a GPU would report, by combination name; counts its calls."""

    def __init__(self, rates: dict[str, float | None], default: float = 100.0) -> None:
        self.rates = rates
        self.default = default
        self.calls: list[str] = []

    def __call__(self, combo: dict[str, bool]) -> tuple[float | None, float | None]:
        name = combo_name(combo)
        self.calls.append(name)
        return self.rates.get(name, self.default), 1.0


def test_choice_is_the_fastest_unless_within_noise_of_fewer_settings() -> None:
    combos = candidates(AUTO)
    assert len(combos) == 8 and {combo_name(c) for c in combos} >= {"fp32", "amp+cl+bench"}
    # ResNet-101 at 512 px, batch 16 on an H200: AMP + channels-last wins clearly
    rates = {"fp32": 166.0, "amp": 244.0, "cl": 206.0, "amp+cl": 340.0, "amp+cl+bench": 246.0}
    assert combo_name(choose(rates, combos)) == "amp+cl"
    # MobileNetV2 at 193 px, batch 32: fp32 1623, channels-last 1622: a tie keeps the fewer settings
    assert combo_name(choose({"fp32": 1623.2, "cl": 1621.8, "amp": 1290.9}, combos)) == "fp32"
    # a combination that ran out of memory (None) is never picked; all failing is an error
    assert combo_name(choose({"fp32": None, "amp": 50.0}, combos)) == "amp"
    with pytest.raises(RuntimeError, match="every combination failed"):
        choose({}, combos)


def test_only_auto_settings_are_searched() -> None:
    combos = candidates({"amp": True, "channels_last": "auto", "cudnn_benchmark": False})
    assert combos == [
        {"amp": True, "channels_last": False, "cudnn_benchmark": False},
        {"amp": True, "channels_last": True, "cudnn_benchmark": False},
    ]
    fixed = resolve_settings({"amp": False, "channels_last": True, "cudnn_benchmark": False}, "cuda", "NVIDIA H200")
    assert (fixed.combo(), fixed.source) == ({"amp": False, "channels_last": True, "cudnn_benchmark": False}, "fixed")


def test_auto_on_a_cpu_is_todays_cpu_behaviour() -> None:
    """AMP was always off on a CPU (autocast/GradScaler are CUDA-only here); auto means off for all three."""
    for requested, expected in [
        (AUTO, (False, False, False)),
        ({"amp": True, "channels_last": False, "cudnn_benchmark": False}, (False, False, False)),  # the defaults
        ({"amp": True, "channels_last": True, "cudnn_benchmark": "auto"}, (False, True, False)),  # laptop.yaml
    ]:
        settings = resolve_settings(requested, "cpu")
        assert (settings.amp, settings.channels_last, settings.cudnn_benchmark) == expected
        assert settings.source == "cpu" and settings.device == "cpu"
    cfg = tiny_train_config(Path("/nonexistent"), **AUTO)  # never read: on a CPU nothing is probed
    assert resolve_gpu_settings(cfg, torch.device("cpu")).source == "cpu"


def test_trainer_with_auto_on_a_cpu_trains_exactly_like_the_defaults(tmp_path: Path) -> None:
    """The CPU path's results are unchanged: same losses, same weights, bit for bit."""
    from hairseg_core.train.trainer import Trainer

    histories, states = [], []
    for knobs in ({}, AUTO):
        trainer = Trainer(tiny_train_config(tmp_path, epochs=1, max_steps_per_epoch=2, **knobs))
        assert not trainer.amp and not trainer.channels_last
        histories.append([{k: v for k, v in r.items() if k != "epoch_seconds"} for r in trainer.fit()])
        states.append(trainer.model.state_dict())
        assert trainer.state_dict()["gpu_settings"]["source"] == "cpu"
    assert histories[0] == histories[1]
    for name, value in states[0].items():
        assert torch.equal(value, states[1][name]), name
    # a checkpoint keeps the settings it trained with; one from before they were stored still loads
    path = trainer.save_checkpoint(tmp_path / "ckpt.pt")
    assert Trainer.from_checkpoint(path).gpu_settings.source == "checkpoint"
    state = torch.load(path, weights_only=True)
    del state["gpu_settings"]
    del state["train_config"]["cudnn_benchmark"]  # a setting the checkpoint's code did not have yet
    torch.save(state, tmp_path / "old.pt")
    assert Trainer.from_checkpoint(tmp_path / "old.pt").gpu_settings.source == "cpu"


def test_first_trial_probes_and_later_trials_reuse_the_stored_choice(tmp_path: Path) -> None:
    cache = SettingsCache(str(tmp_path / "gpu_settings"))
    first = Timer(RESNET_B8)
    settings = resolve_settings(AUTO, "cuda", "NVIDIA H200", _key(), cache, first)
    assert settings.source == "probe" and combo_name(settings.combo()) == "fp32"
    assert sorted(first.calls) == sorted(combo_name(c) for c in candidates(AUTO))
    stored = list((tmp_path / "gpu_settings").glob("*.json"))
    assert [p.name for p in stored] == [_key().slug() + ".json"], "one small JSON per configuration"
    record = json.loads(stored[0].read_text())
    assert record["choice"] == {"amp": False, "channels_last": False, "cudnn_benchmark": False}
    assert record["images_per_s"]["fp32"] == 162.8 and record["key"]["backbone"] == "resnet101"
    assert not list((tmp_path / "gpu_settings").glob("*.probing")), "the claim is released"

    later = Timer({}, default=1e9)  # would pick amp+cl+bench if it were asked
    again = resolve_settings(AUTO, "cuda", "NVIDIA H200", _key(), SettingsCache(str(tmp_path / "gpu_settings")), later)
    assert again.source == "cache" and again.combo() == settings.combo() and later.calls == []
    tags = again.tags()
    assert tags["hairseg.amp"] == "false" and tags["hairseg.gpu_settings_source"] == "cache"
    assert json.loads(tags["hairseg.gpu_probe_images_per_s"])["fp32"] == 162.8

    # another GPU model, crop or batch is another configuration: probed again
    other = Timer({"amp+cl": 500.0})
    moved = resolve_settings(AUTO, "cuda", "NVIDIA A10G", _key(gpu="NVIDIA A10G"), cache, other)
    assert moved.source == "probe" and combo_name(moved.combo()) == "amp+cl" and other.calls


def test_a_trial_waits_for_a_concurrent_probe_instead_of_timing_the_same_gpu(tmp_path: Path) -> None:
    folder = str(tmp_path / "gpu_settings")
    prober = SettingsCache(folder)
    assert prober.claim(_key()) and not SettingsCache(folder).claim(_key())

    def finish_meanwhile(seconds: float) -> None:  # the other trial stores its result while this one waits
        prober.put(_key(), {"choice": {"amp": True, "channels_last": True, "cudnn_benchmark": False}, "seconds": 3.0})

    waiting = SettingsCache(folder, sleep=finish_meanwhile)
    idle = Timer({})
    settings = resolve_settings(AUTO, "cuda", "NVIDIA H200", _key(), waiting, idle)
    assert settings.source == "cache" and combo_name(settings.combo()) == "amp+cl" and idle.calls == []


def test_a_stale_claim_is_taken_over(tmp_path: Path) -> None:
    folder = str(tmp_path / "gpu_settings")
    assert SettingsCache(folder, clock=lambda: time.time() - 3600).claim(_key())  # its trial died an hour ago
    timer = Timer(RESNET_B8)
    settings = resolve_settings(AUTO, "cuda", "NVIDIA H200", _key(), SettingsCache(folder, stale_s=60), timer)
    assert settings.source == "probe" and timer.calls


def test_the_first_stored_choice_wins_a_race(tmp_path: Path) -> None:
    a, b = SettingsCache(str(tmp_path)), SettingsCache(str(tmp_path))
    a.put(_key(), {"choice": {"amp": False, "channels_last": False, "cudnn_benchmark": False}})
    kept = b.put(_key(), {"choice": {"amp": True, "channels_last": True, "cudnn_benchmark": True}})
    assert kept["choice"]["amp"] is False
    # the loser of a race trains with the stored choice and records it as the cache's
    timer = Timer({"amp+cl+bench": 999.0})

    class LateCache(SettingsCache):
        def get(self, key: ProbeKey) -> dict | None:  # the race: empty when looked up, taken when written
            return None if not timer.calls else super().get(key)

    settings = resolve_settings(AUTO, "cuda", "NVIDIA H200", _key(), LateCache(str(tmp_path)), timer)
    assert settings.source == "cache" and settings.combo() == {k: False for k in KNOBS}


def test_object_store_paths_go_through_pyarrow(tmp_path: Path) -> None:
    """s3:// and gs:// storage use pyarrow.fs as Tune does; file:// takes the same code path here."""
    cache = SettingsCache(f"file://{tmp_path}/bucket/gpu_settings")
    timer = Timer(RESNET_B8)
    assert resolve_settings(AUTO, "cuda", "NVIDIA H200", _key(), cache, timer).source == "probe"
    assert (tmp_path / "bucket" / "gpu_settings" / (_key().slug() + ".json")).is_file()
    assert resolve_settings(AUTO, "cuda", "NVIDIA H200", _key(), cache, Timer({})).source == "cache"


def test_settings_survive_a_checkpoint_round_trip() -> None:
    settings = GpuSettings(True, False, True, "probe", "NVIDIA H200", "k", 4.2, {"amp": 1.0, "fp32": None})
    assert GpuSettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings


def test_benchmark_dry_run_needs_none_of_the_cluster_packages(tmp_path: Path) -> None:
    """``benchmarks/gpu_train.py`` runs where pydantic, albumentations, Ray, MLflow and Optuna are missing (the
    GPU machine), its worker processes included, and writes lines the measurement table reads."""
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\nfor name in ('pydantic', 'albumentations', 'ray', 'mlflow', 'optuna'):\n"
        "    sys.modules[name] = None\n"
    )
    out = tmp_path / "gpu.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(ROOT)])}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_train.py"), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert not [r for r in rows if "error" in r], [r for r in rows if "error" in r]
    parts = [r["part"] for r in rows]
    assert parts.count("settings") == 8 and parts.count("share") == 1 and parts.count("probe") == 1
    probe = next(r for r in rows if r["part"] == "probe")
    assert probe["pick_source"] == "probe" and probe["cache_hit_source"] == "cache"
    assert probe["pick"] in probe["probe_images_per_s"] and probe["best"]
    share = next(r for r in rows if r["part"] == "share")
    assert share["processes"] == 2 and len(share["per_process_images_per_s"]) == 2
    assert rows[-1]["part"] == "summary"
    single, shared = parse_lines(out.read_text().splitlines(), out)
    table = GpuTable(tuple(single), tuple(shared))
    assert len(single) == 8 and len(shared) == 1
    assert table.train_rate("mobilenet_v2", 49, 2, head=8).measured
