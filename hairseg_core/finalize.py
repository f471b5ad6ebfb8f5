"""The sweep's final stage: best model → Table 5 → webcam export → registry promotion.

1. The best trial's best checkpoint is loaded (``weights_only=True``).
2. The test split is evaluated as Baseline, +CRF, +Matting, +CRF+Matting (the paper's
   Table 5) with Acc, Acc_class, mIoU, fwIoU, boundary F and ms/image each.
3. The model is exported to TorchScript and ONNX with a parity check and a metadata file
   (``exports/<sweep>/model.{ts,onnx,json}``), everything the webcam app needs.
4. The model is registered as ``hairseg``; alias ``champion`` moves to it only when it beats
   the current champion, re-evaluated *now on the same test images*, by ``promote_margin``.

All MLflow calls go through ``hairseg_core.tracking``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from hairseg_core.config import FinalizeSettings, TrainConfig
from hairseg_core.data import build_dataset
from hairseg_core.data.memory import MaterializedSplit
from hairseg_core.evaluate import ModelPredictor, evaluate_predictor
from hairseg_core.metrics import SegmentationMetrics
from hairseg_core.postprocess.pipeline import build_table5_variants
from hairseg_core.report import format_table
from hairseg_core.train import model_from_checkpoint
from hairseg_core.visualize import overlay

TABLE_METRICS = ("acc", "acc_class", "miou", "fwiou", "boundary_f")


@dataclass
class FinalizeResult:
    table: list[dict[str, Any]]
    export: dict[str, Any]
    decision: dict[str, Any]
    model_version: str | None
    finalize_run_id: str | None = None
    notes: list[str] = field(default_factory=list)


def _split_dataset(train_config: dict[str, Any], split: str) -> Any:
    """``split`` of the data a trial with ``train_config`` trained on (raw samples, no transform)."""
    cfg = TrainConfig(**train_config)
    return build_dataset(cfg.dataset, split, root=cfg.data_root, **cfg.dataset_options)


def check_test_split(train_config: dict[str, Any], split: str) -> int:
    """How many images the final stage will evaluate; raises when the split is missing or empty.

    Run before a sweep starts: learning that the test split does not exist after hours of
    training is too late.
    """
    count = len(_split_dataset(train_config, split))
    if count == 0:
        cfg = TrainConfig(**train_config)
        raise ValueError(f"split {split!r} of dataset {cfg.dataset!r} ({cfg.data_root}) has no images")
    return count


def load_test_split(train_config: dict[str, Any], split: str, max_images: int | None) -> MaterializedSplit:
    """The test images of the data the best trial trained on (raw, at their own resolution)."""
    dataset = _split_dataset(train_config, split)
    if max_images is not None and len(dataset) > max_images:
        dataset = [dataset[i] for i in range(max_images)]
    return MaterializedSplit.from_dataset(dataset, desc=f"loading {split}")


def postprocessing_table(
    predictor: ModelPredictor, test: MaterializedSplit, settings: FinalizeSettings, progress: bool = True
) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """Table 5: each variant's metrics and ms/image; plus example panels (image | variants).

    The network runs once per image; each variant's time is the network's plus its own.
    """
    processors = build_table5_variants(settings.crf, settings.matting)
    metrics = {name: SegmentationMetrics(num_classes=2) for name in processors}
    seconds = dict.fromkeys(processors, 0.0)
    panels = []
    for i in tqdm(range(len(test)), desc="post-processing table", disable=not progress, leave=False):
        image, mask = test.images[i], test.masks[i]
        start = time.perf_counter()
        probs = predictor.probabilities(image)
        net = time.perf_counter() - start
        outputs = {}
        for name, proc in processors.items():
            start = time.perf_counter()
            hair = proc(image, probs)
            seconds[name] += net + time.perf_counter() - start
            metrics[name].update((hair >= 0.5).astype(np.int64), mask.astype(np.int64))
            outputs[name] = hair
        if i < 4:
            gap = np.full((image.shape[0], 4, 3), 255, np.uint8)
            tiles = [image] + [t for name in processors for t in (gap, overlay(image, outputs[name]))]
            panels.append(np.concatenate(tiles, axis=1))
    rows = []
    for name in processors:
        scores = metrics[name].compute()
        row = {"method": name, **{k: float(scores[k]) for k in TABLE_METRICS}}
        row["ms_per_image"] = 1000.0 * seconds[name] / len(test)
        rows.append(row)
    return rows, panels


def decide_promotion(
    new_score: float, champion_score: float | None, margin: float, metric: str = "miou"
) -> tuple[bool, str]:
    """Promote when there is no champion, or the new model beats it by more than ``margin``."""
    if champion_score is None:
        return True, "no current champion: the first registered model becomes champion"
    if new_score > champion_score + margin:
        return True, (
            f"test {metric} {new_score:.4f} beats the champion's {champion_score:.4f} by more than {margin:.4f}"
        )
    return False, (
        f"test {metric} {new_score:.4f} does not beat the champion's {champion_score:.4f} by more than "
        f"{margin:.4f}: champion kept"
    )


def finalize(
    checkpoint_path: str | Path,
    train_config: dict[str, Any],
    settings: FinalizeSettings,
    tracker: Any,
    parent_run_id: str | None,
    sweep: str,
    dry_run: bool = False,
    progress: bool = True,
) -> FinalizeResult:
    """Run the whole final stage for one checkpoint; see the module docstring."""
    from hairseg_core.export import export_all

    model = model_from_checkpoint(checkpoint_path)
    predictor = ModelPredictor(model)
    test = load_test_split(train_config, settings.test_split, settings.max_test_images)
    print(f"final stage: {len(test)} {settings.test_split} images, checkpoint {checkpoint_path}")

    table, panels = postprocessing_table(predictor, test, settings, progress=progress)
    print()
    print(format_table(table, title="post-processing on the test split (paper Table 5)"))
    baseline = table[0]

    export_dir = Path(settings.export_dir) / sweep
    export = export_all(
        model,
        export_dir,
        input_size=settings.export_size,
        metrics={k: baseline[k] for k in TABLE_METRICS},
        sample_image=test.images[0],
    )
    (export_dir / "postprocessing.json").write_text(json.dumps(table, indent=2))
    print(f"\nexported webcam model to {export_dir}/ (model.onnx, model.ts, model.json)")

    run_id = tracker.start_finalize(
        sweep, parent_run_id, params={"checkpoint": str(checkpoint_path), **settings.model_dump()}
    )
    tracker.log_table(run_id, table, "table5/postprocessing.json")
    tracker.log_metrics(
        run_id,
        {f"test_{r['method'].replace('+', '_')}_{k}": r[k] for r in table for k in (*TABLE_METRICS, "ms_per_image")},
        step=0,
    )
    from hairseg_core.visualize import metrics_bar_figure

    tracker.log_figure(
        run_id,
        metrics_bar_figure(table, ["miou", "fwiou", "boundary_f"], "method", "test split: post-processing"),
        "table5/postprocessing.png",
    )
    for i, panel in enumerate(panels):
        tracker.log_image(run_id, panel, f"table5/examples_{i}.png")
    tracker.log_artifacts(run_id, export_dir, "export")

    # -- registry: evaluate the current champion on the very same images, then decide
    champion = tracker.champion(settings.registered_model)
    champion_score = None
    notes = []
    if champion is not None:
        champ_model = tracker.load_model(f"models:/{settings.registered_model}@champion")
        champ_scores = evaluate_predictor(ModelPredictor(champ_model), _as_dataset(test))
        champion_score = champ_scores[settings.promote_metric]
        notes.append(
            f"champion v{champion.version} re-evaluated on the same {len(test)} images: "
            f"{settings.promote_metric} {champion_score:.4f}"
        )
    new_score = baseline[settings.promote_metric]
    promote, reason = decide_promotion(new_score, champion_score, settings.promote_margin, settings.promote_metric)
    decision = {
        "promote": promote,
        "reason": reason,
        "new_score": new_score,
        "champion_score": champion_score,
        "champion_version": str(champion.version) if champion else None,
        "dry_run": dry_run,
    }
    version = None
    if dry_run:
        print(f"\n[dry run] would {'promote' if promote else 'not promote'}: {reason}")
    else:
        version = tracker.register_model(
            run_id,
            model,
            settings.registered_model,
            tags={
                "hairseg.sweep": sweep,
                "hairseg.parent_run_id": parent_run_id or "",
                "hairseg.test_split": settings.test_split,
                "hairseg.test_images": len(test),
                "hairseg.export_dir": str(export_dir.resolve()),
                "hairseg.export_run_id": run_id,
                **{f"test_{k}": f"{baseline[k]:.6f}" for k in TABLE_METRICS},
            },
        )
        if promote:
            tracker.set_champion(settings.registered_model, version)
        tracker.set_tags(
            run_id, {"hairseg.model_version": version, "hairseg.promoted": promote, "hairseg.promotion_reason": reason}
        )
        print(
            f"\nregistered {settings.registered_model} v{version}: "
            f"{'promoted to @champion' if promote else 'not promoted'} ({reason})"
        )
    for note in notes:
        print(note)
    tracker.log_dict(run_id, {"decision": decision, "export": _jsonable(export)}, "finalize.json")
    tracker.end_run(run_id, "FINISHED")
    return FinalizeResult(
        table=table, export=export, decision=decision, model_version=version, finalize_run_id=run_id, notes=notes
    )


def _as_dataset(split: MaterializedSplit) -> list[dict[str, Any]]:
    return [{"image": i, "mask": m, "name": n} for i, m, n in zip(split.images, split.masks, split.names, strict=True)]


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else str(o)))
