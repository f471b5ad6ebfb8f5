"""The sweep's final stage: best model → Table 5 → webcam export → registry promotion.

1. The best trial's best checkpoint is loaded (``weights_only=True``).
2. The test split is evaluated as Baseline, +CRF, +Matting, +CRF+Matting (the paper's
   Table 5) with Acc, Acc_class, mIoU, fwIoU, boundary F and ms/image each. The network runs
   at the scale it was trained at (short side = ``base_size``, ``hairseg_core.scaling``); its
   probabilities are resized back to the full image, where CRF, matting and the metrics work.
3. The model is exported to TorchScript and ONNX with a parity check and a metadata file
   (``exports/<sweep>/model.{ts,onnx,json}``), everything the webcam app needs; the letterbox
   size defaults to the trained scale and ``model.json`` records it.
4. The model is registered as ``hairseg``; alias ``champion`` moves to it only when it beats
   the current champion, re-evaluated *now on the same test images* at the champion's own
   trained scale, by ``promote_margin`` with confidence: the lower bound of the paired bootstrap
   interval of the difference (``hairseg_core.final.bootstrap``, resampling test images) must clear it.
   Table 5 carries each variant's mIoU interval from the same resamples.

All MLflow calls go through ``hairseg_core.track.runs``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from hairseg_core.artifact import load_model
from hairseg_core.config import DataSource, FinalizeSettings, TrainConfig
from hairseg_core.data.input_path import source_dataset
from hairseg_core.data.splits import LazySplit, RawSplit, sample_dicts
from hairseg_core.deploy.inference import HairPredictor, load_predictor
from hairseg_core.deploy.temporal import DEFAULT_SMOOTHER, video_stability
from hairseg_core.evaluate import evaluate_predictor
from hairseg_core.final.bootstrap import (
    PairedComparison,
    PerImageCounts,
    bootstrap_weights,
    metric_interval,
    paired_bootstrap,
)
from hairseg_core.final.export import export_all
from hairseg_core.final.record import FinalRecord, checkpoint_digest, pause_point
from hairseg_core.postprocess.pipeline import build_table5_variants
from hairseg_core.scaling import describe_scale, model_train_scale
from hairseg_core.text_table import format_table
from hairseg_core.track.runs import TAG_CHECKPOINT_DIGEST
from hairseg_core.train.metrics import SegmentationMetrics
from hairseg_core.visualize import metrics_bar_figure, overlay

TABLE_METRICS = ("acc", "acc_class", "miou", "fwiou", "boundary_f")

#: Model-version / run tag holding the short side (px, or "native") the network was evaluated at.
TAG_INFERENCE_SCALE = "hairseg.inference_scale"


@dataclass
class FinalizeResult:
    table: list[dict[str, Any]]
    export: dict[str, Any]
    decision: dict[str, Any]
    model_version: str | None
    finalize_run_id: str | None = None
    notes: list[str] = field(default_factory=list)
    inference_scale: int | None = None


def test_sources(train_config: dict[str, Any]) -> list[DataSource]:
    """The data sources whose test split the final stage evaluates; the first one gets Table 5."""
    sources = [s for s in TrainConfig(**train_config).data_sources if s.test]
    if not sources:
        raise ValueError("no data source has test: true; the final stage has nothing to evaluate")
    return sources


def _split_dataset(source: DataSource, split: str) -> Any:
    """``split`` of one data source (raw samples at their own resolution, no transform)."""
    return source_dataset(source, split)


def check_test_split(train_config: dict[str, Any], split: str) -> dict[str, int]:
    """Decode every test image the final stage will read; return the image count per source.

    Run before a sweep starts: a missing split or a corrupt test image found after hours of
    training is too late, so each image and mask is decoded now (``DataError`` names the file).
    """
    counts = {}
    for source in test_sources(train_config):
        dataset = _split_dataset(source, split)
        if len(dataset) == 0:
            raise ValueError(
                f"split {split!r} of dataset {source.dataset!r} ({source.name}: {source.data_root}) has no images"
            )
        for i in range(len(dataset)):
            dataset[i]  # decodes image and mask, checks their sizes  # noqa: B018
        counts[source.name] = len(dataset)
    return counts


def load_test_split(
    train_config: dict[str, Any], split: str, max_images: int | None, source: DataSource | None = None
) -> LazySplit:
    """The test images of one source (default: the first test source), raw, at their own resolution.

    Decoded when read, never held: the final stage reads each image a few times (Table 5, the champion,
    the export check), which costs milliseconds, while holding a 3,000-image test split of full-resolution
    photos would cost gigabytes of the driver's memory.
    """
    source = source or test_sources(train_config)[0]
    return LazySplit(_split_dataset(source, split), limit=max_images)


def other_sources_table(
    predictor: HairPredictor, train_config: dict[str, Any], settings: FinalizeSettings, progress: bool = True
) -> list[dict[str, Any]]:
    """The network alone (no CRF / matting) on the test split of every further test source."""
    rows = []
    for source in test_sources(train_config)[1:]:
        test = load_test_split(train_config, settings.test_split, settings.max_test_images, source)
        scores = evaluate_predictor(predictor, _as_dataset(test), progress=progress, desc=f"testing {source.name}")
        rows.append({"source": source.name, "images": len(test), **{k: float(scores[k]) for k in TABLE_METRICS}})
    return rows


def postprocessing_table(
    predictor: HairPredictor,
    test: RawSplit,
    settings: FinalizeSettings,
    progress: bool = True,
    per_image: dict[str, PerImageCounts] | None = None,
) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """Table 5: each variant's metrics and ms/image; plus example panels (image | variants).

    The network runs once per image, at the predictor's scale; CRF and matting get the probabilities
    resized back to the full image, which they refine against the full-resolution photo. Each
    variant's time is the network's plus its own. ``per_image``, when given, is filled with each
    variant's per-image counts (``{variant: PerImageCounts}``) for the bootstrap intervals.
    """
    processors = build_table5_variants(settings.crf, settings.matting)
    metrics = {name: SegmentationMetrics(num_classes=2) for name in processors}
    seconds = dict.fromkeys(processors, 0.0)
    panels = []
    for i in tqdm(range(len(test)), desc="post-processing table", disable=not progress, leave=False):
        image, mask = test.sample(i)
        start = time.perf_counter()
        probs = predictor.probabilities(image)
        net = time.perf_counter() - start
        outputs = {}
        for name, proc in processors.items():
            start = time.perf_counter()
            hair = proc(image, probs)
            seconds[name] += net + time.perf_counter() - start
            pred, target = (hair >= 0.5).astype(np.int64), mask.astype(np.int64)
            if per_image is None:
                metrics[name].update(pred, target)
            else:
                per_image.setdefault(name, PerImageCounts()).record(metrics[name], pred, target, test.names[i])
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


def add_intervals(
    table: list[dict[str, Any]],
    counts: dict[str, PerImageCounts],
    weights: np.ndarray,
    confidence: float,
    metric: str = "miou",
) -> None:
    """Put ``<metric>_lo`` / ``<metric>_hi`` (bootstrap percentile interval) into each Table 5 row.

    All variants use the same resamples (``weights``), so overlapping intervals mean the same thing
    in every row; with 40 test images a CRF "gain" of 0.003 usually sits well inside them.
    """
    for row in table:
        estimate = metric_interval(counts[row["method"]], weights, metric, confidence)
        row[f"{metric}_lo"], row[f"{metric}_hi"] = estimate.lo, estimate.hi


def decide_paired_promotion(comparison: PairedComparison | None, margin: float) -> tuple[bool, str]:
    """Promote when there is no champion, or the paired bootstrap interval's lower bound is above ``margin``.

    A point estimate above the margin is not enough: on a few dozen test images, two equally good
    models differ by noise, and promoting on noise makes the champion flip back and forth.
    """
    if comparison is None:
        return True, "no current champion: the first registered model becomes champion"
    if comparison.beats(margin):
        return True, f"{comparison.describe()}: lower bound above the margin {margin:+.4f}, promoted"
    return False, f"{comparison.describe()}: lower bound not above the margin {margin:+.4f}, champion kept"


def promotion_tags(comparison: PairedComparison | None, prefix: str = "hairseg.promotion") -> dict[str, Any]:
    """The interval behind a decision, as tags for the model version and the final-stage run."""
    if comparison is None:
        return {f"{prefix}.basis": "first model: no champion to compare with"}
    return {
        f"{prefix}.basis": "paired bootstrap over test images",
        f"{prefix}.metric": comparison.metric,
        f"{prefix}.diff": f"{comparison.diff:.6f}",
        f"{prefix}.diff_mean": f"{comparison.diff_mean:.6f}",
        f"{prefix}.ci_lo": f"{comparison.lo:.6f}",
        f"{prefix}.ci_hi": f"{comparison.hi:.6f}",
        f"{prefix}.confidence": comparison.confidence,
        f"{prefix}.resamples": comparison.resamples,
        f"{prefix}.images": comparison.n_images,
        f"{prefix}.seed": comparison.seed,
        f"{prefix}.champion_score": f"{comparison.champion_score:.6f}",
    }


def finalize(
    checkpoint_path: str | Path,
    train_config: dict[str, Any],
    settings: FinalizeSettings,
    tracker: Any,
    parent_run_id: str | None,
    sweep: str,
    dry_run: bool = False,
    progress: bool = True,
    record: FinalRecord | None = None,
) -> FinalizeResult:
    """Run the whole final stage for one checkpoint; see the module docstring.

    Idempotent per (``sweep``, checkpoint): each step is recorded in ``record`` (``hairseg_core.final.record``;
    in memory when None) and skipped when a later call finds it done, and a model version registered for
    this sweep and checkpoint (found by its tags) is never registered again. A repeat after the stage ended
    changes nothing and prints the recorded decision with its interval. A dry run reads and records nothing.
    """
    digest = checkpoint_digest(checkpoint_path)
    if dry_run or record is None or record.digest != digest:
        record = FinalRecord(None, digest)
    if not dry_run:
        found = (record.get("registration") or {}).get("version") or tracker.find_model_version(
            settings.registered_model, sweep, digest
        )
        if found is not None:
            return _after_registration(str(found), record, settings, tracker, sweep, digest)

    model = load_model(checkpoint_path, "eager")
    scale = model_train_scale(model)
    primary = test_sources(train_config)[0]
    test = load_test_split(train_config, settings.test_split, settings.max_test_images, primary)
    print(
        f"final stage: {len(test)} {primary.name} {settings.test_split} images, checkpoint {checkpoint_path}, "
        f"network at short side {scale} px (its training base_size), metrics at native resolution"
    )
    evaluated = record.get("table5")
    decided = record.get("decision")
    panels: list[np.ndarray] = []
    if evaluated is None or decided is None:
        predictor = HairPredictor.from_model(model, scale=scale)
        counts: dict[str, PerImageCounts] = {}
        table, panels = postprocessing_table(predictor, test, settings, progress=progress, per_image=counts)
        # one set of resamples for Table 5's intervals and the promotion decision
        weights = bootstrap_weights(len(test), settings.bootstrap_resamples, settings.bootstrap_seed)
        add_intervals(table, counts, weights, settings.promote_confidence)
        # every source's test split, network alone: the first source's row is Table 5's baseline
        per_source = [{"source": primary.name, "images": len(test), **{k: table[0][k] for k in TABLE_METRICS}}]
        per_source += other_sources_table(predictor, train_config, settings, progress=progress)
        record.mark("table5", table=_jsonable(table), per_source=_jsonable(per_source), images=len(test))
    else:
        table, per_source, weights = evaluated["table"], evaluated["per_source"], None
        print(f"Table 5 of this checkpoint was evaluated at {evaluated['at']}; continuing after it")
    print()
    title = (
        f"post-processing on the test split (paper Table 5), network at {scale} px, metrics at native size; "
        f"miou_lo/miou_hi: {settings.promote_confidence:.0%} bootstrap interval "
        f"({settings.bootstrap_resamples} resamples)"
    )
    print(format_table(table, title=title))
    baseline = table[0]
    if len(per_source) > 1:
        print()
        print(format_table(per_source, title=f"test split of every data source, network at {scale} px, native size"))

    # -- registry decision: the current champion on the very same images, decided once and recorded, so a
    # resumed stage never compares the model with itself after it was promoted
    if decided is None:
        decision, comparison, notes = _decide(tracker, settings, test, table, counts, weights, scale, dry_run)
        if not dry_run:
            record.mark("decision", decision=decision, tags=promotion_tags(comparison), notes=notes)
        tags_of_decision = promotion_tags(comparison)
    else:
        decision, tags_of_decision, notes = decided["decision"], decided["tags"], decided["notes"]
        print(f"\npromotion decision (recorded {decided['at']}): {_decision_line(decision)}")

    export_dir = Path(settings.export_dir) / sweep
    exported = record.get("export")
    if exported is not None and (export_dir / "model.onnx").is_file():
        export = exported["export"]
    else:
        export = export_atomically(
            export_dir,
            lambda out: export_all(
                model,
                out,
                input_size=settings.export_size,  # None: the trained scale
                metrics={k: baseline[k] for k in TABLE_METRICS},
                sample_image=test.sample(0)[0],
                train_scale=scale,
            ),
            table,
        )
        record.mark("export", export=_jsonable(export))
    print(
        f"\nexported webcam model to {export_dir}/ (model.onnx, model.ts, model.json): letterbox "
        f"{export['input_size']} px, trained at {scale} px"
    )

    run_id = (record.get("finalize_run") or {}).get("run_id")
    if run_id is not None:
        tracker.reopen_finalize(sweep, run_id)
    else:
        run_id = tracker.start_finalize(
            sweep,
            parent_run_id,
            params={"checkpoint": str(checkpoint_path), "inference_scale": scale, **settings.model_dump()},
        )
        if not dry_run:
            record.mark("finalize_run", run_id=run_id)
    if record.get("logged") is None:
        _log_stage(tracker, run_id, table, per_source, panels, export_dir, test, scale, decision, tags_of_decision)
        if not dry_run:
            record.mark("logged")

    version = None
    if dry_run:
        print(f"\n[dry run] would {'promote' if decision['promote'] else 'not promote'}: {decision['reason']}")
    else:
        version = tracker.register_model(
            run_id,
            export_dir,  # the ONNX model with its state-dict checkpoint: nothing pickled
            settings.registered_model,
            tags={
                "hairseg.sweep": sweep,
                TAG_CHECKPOINT_DIGEST: digest,
                TAG_DECISION: json.dumps(_short_decision(decision)),
                "hairseg.parent_run_id": parent_run_id or "",
                "hairseg.test_split": settings.test_split,
                "hairseg.test_images": len(test),
                "hairseg.export_dir": str(export_dir.resolve()),
                "hairseg.export_run_id": run_id,
                TAG_INFERENCE_SCALE: scale,
                "hairseg.metric_resolution": "native",
                **{f"test_{k}": f"{baseline[k]:.6f}" for k in TABLE_METRICS},
                "hairseg.test_source": primary.name,
                **{f"test_{r['source']}_{k}": f"{r[k]:.6f}" for r in per_source for k in TABLE_METRICS},
                **tags_of_decision,
            },
        )
        record.mark("registration", version=version)
        return _after_registration(version, record, settings, tracker, sweep, digest, export=export, notes=notes)
    for note in notes:
        print(note)
    tracker.log_dict(run_id, {"decision": decision, "export": _jsonable(export)}, "finalize.json")
    tracker.end_run(run_id, "FINISHED")
    return FinalizeResult(
        table=table,
        export=export,
        decision=decision,
        model_version=version,
        finalize_run_id=run_id,
        notes=notes,
        inference_scale=scale,
    )


#: Model-version tag: the promotion decision (promote, reason with its interval, the champion it was made
#: against) as JSON, so a repeated final stage prints it again without recomputing it.
TAG_DECISION = "hairseg.decision"


def _short_decision(decision: dict[str, Any]) -> dict[str, Any]:
    keys = ("promote", "reason", "new_score", "champion_score", "champion_version", "margin")
    return {k: decision.get(k) for k in keys}


def _decision_line(decision: dict[str, Any]) -> str:
    return f"{'promote' if decision['promote'] else 'keep the champion'}: {decision['reason']}"


def _decide(
    tracker: Any,
    settings: FinalizeSettings,
    test: RawSplit,
    table: list[dict[str, Any]],
    counts: dict[str, PerImageCounts],
    weights: Any,
    scale: int | None,
    dry_run: bool,
) -> tuple[dict[str, Any], PairedComparison | None, list[str]]:
    """Evaluate the current champion on the same images and decide whether the new model replaces it."""
    champion = tracker.champion(settings.registered_model)
    champion_score = None
    champion_scale: int | None = None
    comparison: PairedComparison | None = None
    notes = []
    if champion is not None:
        champ_model = tracker.load_model(f"models:/{settings.registered_model}/{champion.version}")
        champion_scale = champion_inference_scale(champion, champ_model)
        champ_counts = PerImageCounts()
        champ_scores = evaluate_predictor(
            HairPredictor.from_model(champ_model, scale=champion_scale), _as_dataset(test), per_image=champ_counts
        )
        champion_score = champ_scores[settings.promote_metric]
        comparison = paired_bootstrap(
            counts[table[0]["method"]],
            champ_counts,
            settings.promote_metric,
            confidence=settings.promote_confidence,
            seed=settings.bootstrap_seed,
            weights=weights,
        )
        where = f"{champion_scale} px" if champion_scale else "native resolution (it records no trained scale)"
        notes.append(
            f"champion v{champion.version} re-evaluated on the same {len(test)} images, network at {where}: "
            f"{settings.promote_metric} {champion_score:.4f}"
        )
    promote, reason = decide_paired_promotion(comparison, settings.promote_margin)
    decision = {
        "promote": promote,
        "reason": reason,
        "new_score": table[0][settings.promote_metric],
        "champion_score": champion_score,
        "champion_version": str(champion.version) if champion else None,
        "inference_scale": scale,
        "champion_inference_scale": describe_scale(champion_scale) if champion else None,
        "dry_run": dry_run,
        "margin": settings.promote_margin,
        "bootstrap": comparison.as_dict() if comparison is not None else None,
    }
    print(f"\npromotion decision: {_decision_line(decision)}")
    return decision, comparison, notes


def _log_stage(
    tracker: Any,
    run_id: str,
    table: list[dict[str, Any]],
    per_source: list[dict[str, Any]],
    panels: list[np.ndarray],
    export_dir: Path,
    test: RawSplit,
    scale: int | None,
    decision: dict[str, Any],
    tags_of_decision: dict[str, Any],
) -> None:
    """Table 5, the per-source table, the examples, the exports and the decision onto the final-stage run."""
    tracker.set_tags(run_id, {TAG_INFERENCE_SCALE: scale, "hairseg.metric_resolution": "native"})
    tracker.log_table(run_id, table, "table5/postprocessing.json")
    if len(per_source) > 1:
        tracker.log_table(run_id, per_source, "test/per_source.json")
        tracker.log_metrics(
            run_id, {f"test_{r['source']}_{k}": r[k] for r in per_source for k in TABLE_METRICS}, step=0
        )
    tracker.log_metrics(
        run_id,
        {
            f"test_{r['method'].replace('+', '_')}_{k}": r[k]
            for r in table
            for k in (*TABLE_METRICS, "ms_per_image", "miou_lo", "miou_hi")
        },
        step=0,
    )
    tracker.log_figure(
        run_id,
        metrics_bar_figure(table, ["miou", "fwiou", "boundary_f"], "method", "test split: post-processing"),
        "table5/postprocessing.png",
    )
    for i, panel in enumerate(panels):
        tracker.log_image(run_id, panel, f"table5/examples_{i}.png")
    tracker.log_artifacts(run_id, export_dir, "export")
    # flicker of the export as the webcam app runs it: shake videos of a few test images (hairseg_core.deploy.temporal)
    stability = video_stability(load_predictor(export_dir), [test.sample(i) for i in range(min(3, len(test)))])
    print(
        f"video flicker of the export on shake videos ({DEFAULT_SMOOTHER} smoothing / none): "
        f"{stability['flicker']:.2%} / {stability['flicker_none']:.2%} of pixels, boundary band "
        f"{stability['flicker_boundary']:.2%} / {stability['flicker_boundary_none']:.2%}"
    )
    tracker.log_metrics(run_id, {k: v for k, v in stability.items() if np.isfinite(v)}, step=0)
    tracker.set_tags(run_id, tags_of_decision)
    bootstrap = decision.get("bootstrap")
    if bootstrap:
        tracker.log_metrics(
            run_id,
            {
                "promotion_diff": bootstrap["diff"],
                "promotion_diff_mean": bootstrap["diff_mean"],
                "promotion_ci_lo": bootstrap["lo"],
                "promotion_ci_hi": bootstrap["hi"],
                "promotion_images": bootstrap["n_images"],
            },
            step=0,
        )


def _after_registration(
    version: str,
    record: FinalRecord,
    settings: FinalizeSettings,
    tracker: Any,
    sweep: str,
    digest: str,
    export: dict[str, Any] | None = None,
    notes: list[str] | None = None,
) -> FinalizeResult:
    """Promotion and the run's closing, for a version registered now or by an earlier attempt.

    ``@champion`` moves at most once: only when the decision says so, the alias is not already on this
    version, and the champion the decision was made against is still the champion (a decision against a
    champion that another sweep has replaced meanwhile is stale, and the alias stays where it is).
    """
    name = settings.registered_model
    mv = tracker.get_model_version(name, version)
    repeat = export is None  # found, not registered by this call
    decided = record.get("decision")
    if decided is not None:
        decision, when = decided["decision"], decided["at"]
    else:
        decision, when = json.loads(mv.tags.get(TAG_DECISION) or "{}"), "on the model version"
    if not decision:  # a version registered before decisions were recorded on it
        decision = {"promote": False, "reason": "no recorded decision: the alias is left where it is"}
    run_id = (record.get("finalize_run") or {}).get("run_id") or mv.tags.get("hairseg.export_run_id")
    if repeat:
        print(
            f"final stage of sweep {sweep} on checkpoint {digest[:12]} was done before: {name} v{version} "
            f"(found by its tags; nothing registered again)"
        )
        print(f"promotion decision (recorded {when}): {_decision_line(decision)}")
    promoted = record.get("promotion")
    if promoted is not None:
        on_it = bool(promoted.get("promoted"))
    else:
        champion = tracker.champion(name)
        current = str(champion.version) if champion is not None else None
        on_it = current == version
        if decision["promote"] and not on_it:
            if current == decision.get("champion_version"):
                tracker.set_champion(name, version)
                on_it = True
            else:
                print(
                    f"not promoted after all: @champion moved to v{current} since the decision (made against "
                    f"{decision.get('champion_version') or 'no champion'}); rerun the final stage to compare again"
                )
        record.mark("promotion", promoted=on_it)
    if record.get("finished") is None and run_id:
        tracker.set_tags(
            run_id,
            {
                "hairseg.model_version": version,
                "hairseg.promoted": on_it,
                "hairseg.promotion_reason": decision["reason"],
            },
        )
        if export is not None:
            tracker.log_dict(run_id, {"decision": decision, "export": _jsonable(export)}, "finalize.json")
        if tracker.get_run(run_id).info.status != "FINISHED":
            tracker.end_run(run_id, "FINISHED")
        record.mark("finished")
    print(
        f"\nregistered {name} v{version}: {'promoted to @champion' if on_it else 'not promoted'} ({decision['reason']})"
    )
    for note in notes or []:
        print(note)
    table = (record.get("table5") or {}).get("table", [])
    return FinalizeResult(
        table=table,
        export=export or (record.get("export") or {}).get("export", {}),
        decision=decision,
        model_version=version,
        finalize_run_id=run_id,
        notes=notes or [],
        inference_scale=(decision.get("inference_scale") if isinstance(decision, dict) else None),
    )


def export_atomically(export_dir: Path, write: Any, table: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write the export into a temporary folder beside ``export_dir``, then swap it in.

    A reader (the webcam app, the next step) sees the old folder or the new one, never a half-written mix;
    a kill leaves at most a ``.<sweep>.tmp-*`` folder, which the next export removes.
    """
    export_dir = Path(export_dir)
    export_dir.parent.mkdir(parents=True, exist_ok=True)
    for leftover in export_dir.parent.glob(f".{export_dir.name}.*-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{export_dir.name}.tmp-", dir=export_dir.parent))
    try:
        export = write(tmp)
        if table is not None:
            (tmp / "postprocessing.json").write_text(json.dumps(table, indent=2))
        if export_dir.is_dir() and (export_dir / "report.html").is_file() and not (tmp / "report.html").exists():
            shutil.copy2(export_dir / "report.html", tmp / "report.html")  # the report is rebuilt later
        pause_point("export_written")
        old = None
        if export_dir.exists():
            old = export_dir.parent / f".{export_dir.name}.old-{os.getpid()}"
            os.replace(export_dir, old)
        os.replace(tmp, export_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return export


def champion_inference_scale(version: Any, model: Any) -> int | None:
    """The scale to re-evaluate a registered champion at: its ``hairseg.inference_scale`` tag, else the
    scale ``Tracker.load_model`` attached from its checkpoint; None (native, as it was measured then) for
    versions from before either.

    The champion must be measured the way it would be deployed, at its own trained scale, not at the
    challenger's: the two may have been trained at different sizes.
    """
    tag = (getattr(version, "tags", None) or {}).get(TAG_INFERENCE_SCALE)
    if tag not in (None, "", "native"):
        try:
            return int(tag)
        except ValueError:
            pass
    return model_train_scale(model)


def _as_dataset(split: RawSplit) -> Sequence[dict[str, Any]]:
    return sample_dicts(split)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else str(o)))
