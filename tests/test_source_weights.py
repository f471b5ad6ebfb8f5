"""Per-source sampling weights of a pooled training set (``sources[].weight``): validation, shares, draws."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from sweep_helpers import tiny_train_config
from test_datasets import make_folder

from hairseg_core.config import ConfigError, DataSource, TrainConfig, search_space_from_dict
from hairseg_core.data.sampling import describe_shares, sample_weights, source_shares
from hairseg_core.train.trainer import Trainer, load_trial_data

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _sources(**weights: float | None) -> list[DataSource]:
    return [DataSource(name=name, data_root=f"/d/{name}", weight=w) for name, w in weights.items()]


def test_without_weights_the_pool_is_drawn_in_proportion_to_size() -> None:
    sources = _sources(celeb=None, figaro=None, mask4k=None)
    sizes = {"celeb": 742, "figaro": 673, "mask4k": 3491}
    shares = source_shares(sources, sizes)
    assert shares == pytest.approx({"celeb": 742 / 4906, "figaro": 673 / 4906, "mask4k": 3491 / 4906})
    assert sample_weights(sources, list(sizes.items())) is None  # the trainer shuffles, as it always did
    assert describe_shares(sources, sizes) == (
        "training draws: celeb 742 img 15 %, figaro 673 img 14 %, mask4k 3491 img 71 % (in proportion to size)"
    )


def test_weights_set_each_sources_share_whatever_its_size() -> None:
    sources = _sources(celeb=2.0, figaro=1.0, mask4k=1.0)
    parts = [("celeb", 4), ("figaro", 2), ("mask4k", 10)]
    shares = source_shares(sources, dict(parts))
    assert shares == pytest.approx({"celeb": 0.5, "figaro": 0.25, "mask4k": 0.25})
    weights = sample_weights(sources, parts)
    assert weights is not None and weights.shape == (16,)
    # equal within a source, and the per-source sums are the shares
    np.testing.assert_allclose([weights[:4].sum(), weights[4:6].sum(), weights[6:].sum()], [0.5, 0.25, 0.25])
    assert len(set(weights[6:])) == 1
    assert "by sources[].weight" in describe_shares(sources, dict(parts))


@pytest.mark.parametrize(
    ("sources", "expected"),
    [
        (
            [{"name": "a", "weight": 2.0}, {"name": "b"}],
            "sources: weight given on ['a'] but not on ['b']",
        ),
        (
            [{"name": "a"}, {"name": "b", "train": False, "weight": 1.0}],
            "sources: weight given on ['b'], which do not train (train: false)",
        ),
        ([{"name": "a", "weight": 0.0}, {"name": "b", "weight": 1.0}], "sources.0.weight"),
    ],
)
def test_bad_weights_fail_on_load_naming_the_source(sources: list[dict], expected: str) -> None:
    raw = {
        "name": "w",
        "fixed": {"sources": [{"dataset": "folder", "data_root": "/d", **s} for s in sources]},
        "params": {"lr_head": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
    }
    with pytest.raises(ConfigError) as info:
        search_space_from_dict(raw, source="space.yaml")
    assert expected in str(info.value) and "space.yaml" in str(info.value)


def test_the_trainer_draws_each_source_by_its_weight(tmp_path: Path) -> None:
    """A 20-image source weighted 1 against a 4-image one weighted 3: a quarter / three quarters of the draws."""
    big, small = tmp_path / "big", tmp_path / "small"
    make_folder(big, {"train": 20, "val": 2}, seed=1)
    make_folder(small, {"train": 4, "val": 2}, seed=2)
    cfg: TrainConfig = tiny_train_config(
        tmp_path,
        dataset="synthetic",
        data_root=None,
        dataset_options={},
        sources=[
            {"name": "big", "dataset": "folder", "data_root": str(big), "weight": 1.0},
            {"name": "small", "dataset": "folder", "data_root": str(small), "weight": 3.0, "val": False},
        ],
        crop_size=32,
        base_size=32,
        batch_size=4,
        epochs=1,
    )
    trainer = Trainer(cfg, data=load_trial_data(cfg))
    drawn: Counter[str] = Counter()
    for epoch in range(20):  # each epoch reseeds the loader's generator: reproducible, different per epoch
        trainer.loader_generator.manual_seed(epoch)
        for index in trainer.train_loader.sampler:
            drawn[trainer.data.train.names[index].split("/")[0]] += 1
    total = sum(drawn.values())
    assert total == 20 * 24  # an epoch is as long as the pool, drawn with replacement
    assert drawn["small"] / total == pytest.approx(0.75, abs=0.04)
    # the same seed draws the same indices (resume replays the epoch exactly)
    trainer.loader_generator.manual_seed(7)
    first = list(trainer.train_loader.sampler)
    trainer.loader_generator.manual_seed(7)
    assert list(trainer.train_loader.sampler) == first
    assert 0.0 <= trainer.run_epoch()["val_miou"] <= 1.0
