"""The single-trial training loop: learning, exact resume, checkpoints, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sweep_helpers import tiny_train_config

from hairseg_core import cli
from hairseg_core.artifact import CheckpointError, load_model
from hairseg_core.train.trainer import Trainer, load_trial_data

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_resume_continues_identically(tmp_path: Path) -> None:
    """Epoch 3 after a save/restore at epoch 2 equals epoch 3 of an uninterrupted run."""
    torch.set_num_threads(1)  # bitwise-reproducible CPU kernels
    cfg = tiny_train_config(
        tmp_path,
        rsc=True,
        blur=True,
        mixup=True,
        mixup_alpha=0.4,
        loss="focal",
        gc_weight=0.5,
        lovasz_weight=0.5,
        precise_bn_batches=2,
    )
    data = load_trial_data(cfg)

    straight = Trainer(cfg, data=data)
    history = list(straight.fit())

    first = Trainer(cfg, data=data)
    first.run_epoch()
    first.run_epoch()
    ckpt = first.save_checkpoint(tmp_path / "ckpt" / "checkpoint.pt")
    del first
    # scramble global RNGs: the checkpoint must restore them, not luck
    torch.manual_seed(12345)
    np.random.seed(999)

    resumed = Trainer.from_checkpoint(ckpt, data=data)
    assert resumed.epoch == 2
    third = resumed.run_epoch()
    for key in ("train_loss", "val_loss", "val_miou", "val_fwiou", "val_acc", "val_boundary_f"):
        assert third[key] == pytest.approx(history[2][key], rel=1e-6, abs=1e-7), key
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for p_a, p_b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(p_a, p_b, rtol=1e-5, atol=1e-6)


def test_training_reduces_loss(tmp_path: Path) -> None:
    """A few dozen steps lower both training and validation loss (the mIoU check is the slow test)."""
    cfg = tiny_train_config(tmp_path, epochs=4, max_steps_per_epoch=4, lr_backbone=5e-3, lr_head=1e-2)
    history = list(Trainer(cfg).fit())
    assert history[-1]["train_loss"] < 0.8 * history[0]["train_loss"]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert all(0.0 <= h["val_miou"] <= 1.0 and h["epoch_seconds"] > 0 for h in history)


@pytest.mark.slow
def test_training_beats_constant_predictor(tmp_path: Path) -> None:
    """The default sweep's setting clearly beats predicting 'background' everywhere (mIoU)."""
    cfg = tiny_train_config(
        tmp_path,
        dataset_options={"size": 129, "n_train": 160, "n_val": 24, "n_test": 4},
        crop_size=129,
        base_size=129,
        batch_size=8,
        epochs=4,
        max_steps_per_epoch=20,
        aspp_channels=64,
        decoder_channels=64,
        lr_backbone=1e-3,
        lr_head=9e-3,
    )
    trainer = Trainer(cfg)
    history = list(trainer.fit())
    val = trainer.data.val
    hair = np.mean([(val.sample(i)[1] == 1).mean() for i in range(len(val))])
    constant_miou = (1.0 - hair) / 2  # IoU_bg = accuracy of 'all background', IoU_hair = 0
    best = max(h["val_miou"] for h in history)
    assert best > constant_miou + 0.1, (best, constant_miou)


def test_precise_bn_sets_running_stats_to_the_average_batch_statistics(tmp_path: Path) -> None:
    """Recalibration replaces stale running stats with the exact average of the batches' own statistics."""
    torch.manual_seed(0)
    trainer = Trainer(tiny_train_config(tmp_path, batch_size=4, precise_bn_batches=2))
    norms = [m for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:  # stale statistics, as after a short run from scratch
        m.running_mean.fill_(5.0)
        m.running_var.fill_(50.0)
    seen: dict[torch.nn.Module, list[torch.Tensor]] = {m: [] for m in norms}
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen[mod].append(args[0].detach())) for m in norms]
    assert trainer.recalibrate_batchnorm(2) == 2
    for h in hooks:
        h.remove()

    for m in norms:
        assert len(seen[m]) == 2
        means = torch.stack([x.mean(dim=(0, 2, 3)) for x in seen[m]])
        variances = torch.stack([x.var(dim=(0, 2, 3), unbiased=True) for x in seen[m]])
        assert torch.allclose(m.running_mean, means.mean(0), atol=1e-5)
        assert torch.allclose(m.running_var, variances.mean(0), rtol=1e-4, atol=1e-5)
        assert m.momentum == 0.1  # the training momentum is restored
    assert trainer.recalibrate_batchnorm(0) == 0


def test_checkpoint_round_trip_and_errors(tmp_path: Path) -> None:
    cfg = tiny_train_config(tmp_path, epochs=1)
    trainer = Trainer(cfg)
    trainer.run_epoch()
    trainer.extra["mlflow_run_id"] = "abc"
    path = trainer.save_checkpoint(tmp_path / "c" / "checkpoint.pt")
    state = load_model(path.parent, "state")  # a directory works too
    assert state["epoch"] == 1 and state["extra"]["mlflow_run_id"] == "abc"
    model = load_model(path)  # a .pt file: the eager network
    x = torch.randn(1, 3, 70, 90)
    torch.testing.assert_close(model(x), trainer.model.eval()(x))

    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.pt", "state")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt.pt: cannot read checkpoint"):
        load_model(corrupt, "state")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a hairseg checkpoint"):
        load_model(foreign, "state")
    other = Trainer(tiny_train_config(tmp_path, epochs=1, lr_head=1e-2))
    with pytest.raises(CheckpointError, match="lr_head"):
        other.load_state_dict(state)


def test_batch_larger_than_dataset_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="batch_size 64 exceeds the 16 training images"):
        Trainer(tiny_train_config(tmp_path, batch_size=64))


def test_cli_train_resume_and_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tiny_train_config(tmp_path, epochs=2)
    config_file = tmp_path / "train.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump()))
    out = tmp_path / "run"
    assert cli.main(["train", "--config", str(config_file), "--output", str(out), "--set", "epochs=1"]) == 0
    assert json.loads((out / "metrics.json").read_text())[0]["epoch"] == 1
    # the same output folder continues the run when the settings match
    assert cli.main(["train", "--config", str(config_file), "--output", str(out), "--set", "epochs=1"]) == 0
    assert "resuming" in capsys.readouterr().out
    # other settings in the same folder: refuse instead of silently mixing runs
    assert cli.main(["train", "--config", str(config_file), "--output", str(out)]) == 2

    split_dir = next((tmp_path / "cache").glob("synthetic-*")) / "test"
    capsys.readouterr()
    assert cli.main(["evaluate", "--model", str(out / "checkpoint.pt"), "--data", str(split_dir)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    scores = json.loads(line)
    assert set(scores) >= {"acc", "acc_class", "miou", "fwiou", "boundary_f", "n_images"}
    assert scores["n_images"] == 4 and 0.0 <= scores["miou"] <= 1.0

    assert cli.main(["evaluate", "--model", str(tmp_path / "nope.pt"), "--data", str(split_dir)]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("backbone: mobilenet_v2\nepoch: 3\n")
    assert cli.main(["train", "--config", str(bad), "--output", str(tmp_path / "r2")]) == 2
    assert "epoch: unknown key" in capsys.readouterr().err
