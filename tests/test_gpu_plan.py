"""Before Tune starts: a space no trial of which could ever be placed fails in seconds; a GPU share whose
trials would not fit the GPU's memory is refused; the sweep's cost is estimated from the measured rates.

The checks take the cluster as data (``ClusterView``: what the entry point reads from Ray), so every cluster
shape is tested here without one; the command itself is run once, on this CPU-only machine, as a user would.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hairseg_core.config import load_search_space
from hairseg_core.search.cost_estimate import (
    DataSize,
    actual_cost,
    asha_epochs,
    compare_lines,
    count_images,
    estimate_cost,
)
from hairseg_core.search.gpu_plan import (
    CPU_HINT,
    ClusterConfigUnreadable,
    ClusterView,
    NodeShape,
    PlacementError,
    check_gpu_memory,
    check_placement,
    node_types_from_file,
    trial_shapes,
)
from hairseg_core.train.gpu_table import default_table, gpu_memory_gib

ROOT = Path(__file__).resolve().parent.parent
SPACES = ROOT / "search_spaces"

LAPTOP = ClusterView("local", (NodeShape("this machine", {"CPU": 2.0, "GPU": 0.0}),))
H200 = ClusterView(
    "local",
    (NodeShape("gpu box", {"CPU": 16.0, "GPU": 1.0, "accelerator_type:H200": 1.0}),),
    torch_gpus=1,
    torch_gpu_name="NVIDIA H200",
    torch_gpu_memory_gib=139.8,
)
#: cluster.yaml as it starts: a head without CPUs for trials, GPU workers only once trials are pending
AWS = ClusterView(
    "auto",
    (NodeShape("head", {"CPU": 0.0}),),
    node_types=(NodeShape("gpu_worker_spot", {"CPU": 4.0, "GPU": 1.0, "accelerator_type:A10G": 1.0}, 8),),
    node_types_source="cluster.yaml",
)
CPU_CLUSTER = ClusterView("10.0.0.1:6379", (NodeShape("head", {"CPU": 8.0}), NodeShape("w", {"CPU": 32.0})))


def space(name: str, **overrides: object):
    return load_search_space(SPACES / f"{name}.yaml", dict(overrides))


@pytest.mark.parametrize("name", ["webcam", "figaro", "paper"])
def test_gpu_space_on_a_machine_without_gpu_fails_with_one_line_saying_how_to_run_on_cpu(name: str) -> None:
    with pytest.raises(PlacementError) as err:
        check_placement(space(name), LAPTOP, f"search_spaces/{name}.yaml")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"error: search_spaces/{name}.yaml: resources.gpu=")
    assert "0 GPU" in message and "no trial could ever start" in message and message.endswith(CPU_HINT)
    # the advice works: the same space on CPU passes
    assert check_placement(space(name, **{"resources.gpu": 0, "fixed.device": "cpu"}), LAPTOP, name) == []


def test_gpus_live_or_from_an_autoscaler_let_the_sweep_start() -> None:
    assert check_placement(space("paper"), H200, "paper") == []
    assert check_placement(space("paper"), AWS, "paper") == []  # no GPU yet, the autoscaler can add 8
    with pytest.raises(PlacementError, match="--cluster-config"):
        check_placement(space("paper"), CPU_CLUSTER, "paper")  # a CPU-only cluster, nothing known to scale
    # GPUs exist but no node has the CPUs a trial asks for beside its GPU
    with pytest.raises(PlacementError, match="no node offers both .* gpu_worker_spot, has 1 GPU and 4 CPU"):
        check_placement(space("paper", **{"resources.cpu": 8}), AWS, "paper")


def test_device_and_gpu_request_that_contradict_each_other() -> None:
    with pytest.raises(PlacementError, match="device: cuda but resources.gpu is 0"):
        check_placement(space("default", **{"fixed.device": "cuda"}), H200, "default")
    warnings = check_placement(space("webcam", **{"fixed.device": "cpu"}), H200, "webcam")
    assert warnings and "does not use" in warnings[0]


def test_local_gpu_that_torch_cannot_use_is_refused() -> None:
    broken = ClusterView(
        "local",
        (NodeShape("gpu box", {"CPU": 8.0, "GPU": 1.0}),),
        torch_problem="torch 2.14.1 (CUDA 13.0): torch.cuda.is_available() is False",
    )
    with pytest.raises(PlacementError, match="torch cannot use any .*is_available\\(\\) is False.*device=cpu"):
        check_placement(space("paper"), broken, "paper")


def test_memory_guard_refuses_a_share_whose_trials_do_not_fit() -> None:
    shared = space("webcam", **{"resources.gpu": 0.25})
    check = check_gpu_memory(shared, AWS, "search_spaces/webcam.yaml")
    assert check.error is not None and "\n" not in check.error
    for part in ("resources.gpu=0.25", "4 trial(s)", "mobilenet_v2", "batch 32", "22 GiB", "A10G", "0.3333"):
        assert part in check.error, (part, check.error)
    # the shipped share fits the same GPU; a big GPU takes the smaller share
    assert check_gpu_memory(space("webcam"), AWS, "webcam").error is None
    assert check_gpu_memory(shared, H200, "webcam").error is None
    assert check_gpu_memory(space("figaro"), AWS, "figaro").error is None
    # a declared memory wins over the accelerator table; unknown memory is a note, not a refusal
    tight = space("figaro", **{"resources.gpu_memory_gib": 8})
    assert "figaro" in (check_gpu_memory(tight, AWS, "figaro").error or "")
    unknown = ClusterView("auto", (), (NodeShape("w", {"CPU": 8.0, "GPU": 1.0}, 2),), "x.yaml")
    assert "resources.gpu_memory_gib" in check_gpu_memory(space("figaro"), unknown, "figaro").notes[0]
    # stride 8 was never measured: not guessed
    notes = check_gpu_memory(space("paper"), AWS, "paper").notes
    assert any("OS8 never measured" in n for n in notes)


def test_trial_shapes_follow_backbone_dependent_batches() -> None:
    shapes = trial_shapes(space("paper"))
    assert {(s.backbone, s.batch) for s in shapes if s.output_stride == 16} == {
        ("resnet101", 8),
        ("resnet101", 16),
        ("mobilenet_v2", 16),
        ("mobilenet_v2", 32),
        ("xception", 8),
        ("xception", 16),
        ("drn_d_54", 8),
        ("drn_d_54", 16),
    }


def test_the_table_reads_the_h200_file_as_measured() -> None:
    table = default_table()
    assert table.sources == ["gpu-h200-20261204.jsonl"]
    fastest = table.train_rate("resnet101", 512, 16)
    assert fastest.measured and fastest.value == pytest.approx(339.7)  # AMP + channels-last
    fp32 = table.train_rate("resnet101", 512, 16, settings={"amp": False, "channels_last": False})
    assert fp32.value == pytest.approx(165.5)
    assert table.peak_gib("resnet101", 512, 16, amp=True).value == pytest.approx(8.523)
    assert table.peak_gib("resnet101", 512, 16).value == pytest.approx(15.605)  # fp32: auto may pick it
    scaled = table.peak_gib("mobilenet_v2", 225, 32)
    assert not scaled.measured and "scaled from" in scaled.basis
    assert scaled.value == pytest.approx(3.074 * (225 * 225 * 32) / (257 * 257 * 16))
    assert "proxy" in table.train_rate("resnet50", 257, 8).basis
    assert table.peak_gib("resnet101", 257, 8, output_stride=8) is None
    assert table.share_speedup("mobilenet_v2", 193, 8, 4).value == pytest.approx(1070.6 / 423.5)
    assert not table.share_speedup("resnet101", 512, 16, 2).measured
    assert gpu_memory_gib("A10G") == 22.0 and gpu_memory_gib("NVIDIA A100-SXM4-80GB") == 79.1
    assert gpu_memory_gib("Tesla T4") == 14.6 and gpu_memory_gib("no such GPU") is None


def test_asha_expected_epochs() -> None:
    assert asha_epochs(20, 3, 3) == pytest.approx(3 + 6 / 3 + 11 / 9)  # rungs at 3 and 9
    assert asha_epochs(4, 1, 2) == pytest.approx(1 + 1 / 2 + 2 / 4)
    assert asha_epochs(10, 1, 2, scheduler="fifo") == 10


def test_estimate_is_computed_from_the_measured_rate(tmp_path: Path) -> None:
    raw = space("default").model_dump()
    raw.update(num_samples=4, max_concurrent_trials=None, scheduler={"type": "fifo"}, params={})
    raw["fixed"].update(backbone="mobilenet_v2", aspp_channels=128, decoder_channels=128, crop_size=193)
    raw["fixed"].update(base_size=193, batch_size=8, epochs=2, max_steps_per_epoch=None, precise_bn_batches=0)
    raw["fixed"].update(amp=False, channels_last=False, device="auto")
    raw["resources"] = {"cpu": 1, "gpu": 1}
    from hairseg_core.config import search_space_from_dict

    one = search_space_from_dict(raw)
    estimate = estimate_cost(one, H200, DataSize(train=84, val=12, source="test"))
    # 10 steps x 8 images at 423.8 img/s (measured, fp32), 12 val images forward at 3x that rate
    epoch_s = 80 / 423.8 + 12 / (3 * 423.8)
    assert estimate.wall_hours_upper == pytest.approx(4 * 2 * epoch_s / 3600)  # one GPU: one trial at a time
    assert estimate.gpu_hours_expected == pytest.approx(4 * 2 * epoch_s / 3600)
    assert estimate.train_images_upper == 4 * 2 * 80
    assert "measured" in estimate.text() and estimate.metrics()["estimate_concurrency"] == 1
    lines = compare_lines(estimate, actual_cost([60.0, 60.0], wall_seconds=180.0, gpu_share=1.0))
    assert "took 3 min" in lines[0] and "GPU-hours held: 0.03" in lines[1]


def test_estimate_on_cpu_says_so_and_counts_the_workload_only() -> None:
    laptop = space("laptop")
    data = count_images(laptop) if (ROOT.parent / "shared" / "data" / "celeb1k").is_dir() else DataSize(742, 153, "t")
    estimate = estimate_cost(laptop, LAPTOP, data)
    text = "\n".join(estimate.lines())
    assert text.startswith("cost estimate (CPU run)") and "no time estimate on CPU" in text
    cfg = laptop.trial_config({})
    per_epoch = cfg.max_steps_per_epoch * cfg.batch_size  # the laptop study caps its epochs
    upper = laptop.num_samples * cfg.epochs * per_epoch
    assert estimate.gpu_hours_upper is None and estimate.train_images_upper == upper
    sched = laptop.scheduler
    expected = asha_epochs(cfg.epochs, sched.grace_period, sched.reduction_factor, sched.type)
    assert estimate.train_images_expected == pytest.approx(laptop.num_samples * expected * per_epoch)
    # an ASHA space of the same shape: fewer expected than at most
    asha = space("webcam_laptop")
    shaped = estimate_cost(asha, LAPTOP, data)
    assert shaped.train_images_expected is not None and shaped.train_images_upper is not None
    assert shaped.train_images_expected < shaped.train_images_upper


def test_estimate_on_an_autoscaling_cluster_spreads_trials_over_its_gpus() -> None:
    estimate = estimate_cost(space("paper"), AWS, DataSize(2927, 500, "test"))
    assert estimate.concurrency == 8  # 8 workers x 1 GPU, one trial each
    assert estimate.gpu_hours_expected < estimate.gpu_hours_upper
    assert estimate.wall_hours_expected < estimate.wall_hours_upper
    assert any("A10G" in note and "H200" in note for note in estimate.notes)
    assert estimate.tags()["hairseg.estimate.cluster_gpus"] == "A10G"
    figaro = estimate_cost(space("figaro"), AWS, DataSize(673, 75, "test"))
    assert figaro.concurrency == 16  # 4 CPUs per worker, 2 per trial: two of the four 0.25 shares


def test_node_types_of_the_shipped_cluster_files() -> None:
    for path in ("cluster.yaml", "cluster/gcp.yaml", "cluster/kuberay-rayjob.yaml"):
        types = node_types_from_file(ROOT / path)
        gpu = [t for t in types if t.gpus >= 1]
        assert gpu and gpu[0].count == 8, (path, types)
    with pytest.raises(ClusterConfigUnreadable, match="neither"):
        node_types_from_file(SPACES / "paper.yaml")


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the sweep would start instead of failing")
def test_sweep_asking_for_a_gpu_on_this_cpu_machine_exits_2_in_seconds(tmp_path: Path) -> None:
    """The issue's command, as a user runs it from the repository root: one line naming the GPU, exit 2,
    before Ray starts (and before the weights and the data are read)."""
    start = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "pipelines/sweep.py",
            "--space",
            "search_spaces/webcam.yaml",
            "--num-samples",
            "1",
            "--set",
            "dataset=folder",
            "data_root=../shared/data/celeb1k",
            "params.backbone.choices=[mobilenet_v2]",
            "--tracking-uri",
            f"sqlite:///{tmp_path}/mlruns.db",
            "--storage",
            str(tmp_path / "ray_results"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert time.monotonic() - start < 120
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "GPU" in errors[0] and CPU_HINT in errors[0], proc.stderr[-3000:]
    assert "search_spaces/webcam.yaml" in errors[0] and "resources.gpu=0.5" in errors[0]
    assert "Traceback" not in proc.stderr and "Started a local Ray" not in proc.stderr + proc.stdout
