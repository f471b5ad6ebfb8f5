"""Steps ``decision`` and ``promotion``: does the new model replace ``@champion``, and moving the alias once.

The current champion is re-evaluated *now on the same test images* at its own trained scale, and the new
model must beat it by ``promote_margin`` with confidence: the lower bound of the paired bootstrap interval
of the difference (``hairseg_core.final.bootstrap``, resampling test images) must clear it.
"""

from __future__ import annotations

from typing import Any

from hairseg_core.data.splits import sample_dicts
from hairseg_core.deploy.inference import HairPredictor
from hairseg_core.evaluate import evaluate_predictor
from hairseg_core.final.bootstrap import PairedComparison, PerImageCounts, paired_bootstrap
from hairseg_core.final.record import FinalRecord
from hairseg_core.final.state import FinalStage
from hairseg_core.scaling import describe_scale, model_train_scale
from hairseg_core.track.runs import Tracker
from hairseg_core.track.tags import TAG_INFERENCE_SCALE, TAG_PROMOTION


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


def promotion_tags(comparison: PairedComparison | None, prefix: str = TAG_PROMOTION) -> dict[str, Any]:
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


def short_decision(decision: dict[str, Any]) -> dict[str, Any]:
    """What a model version's ``hairseg.decision`` tag keeps of a decision."""
    keys = ("promote", "reason", "new_score", "champion_score", "champion_version", "margin")
    return {k: decision.get(k) for k in keys}


def decision_line(decision: dict[str, Any]) -> str:
    return f"{'promote' if decision['promote'] else 'keep the champion'}: {decision['reason']}"


def decide(stage: FinalStage) -> None:
    """Step ``decision``: against the current champion on the very same images, decided once and recorded,
    so a resumed stage never compares the model with itself after it was promoted (a dry run records nothing)."""
    decided = stage.record.get("decision")
    if decided is None:
        decision, comparison, notes = _decide(stage)
        tags = promotion_tags(comparison)
        if not stage.dry_run:
            stage.record.mark("decision", decision=decision, tags=tags, notes=notes)
    else:
        decision, tags, notes = decided["decision"], decided["tags"], decided["notes"]
        print(f"\npromotion decision (recorded {decided['at']}): {decision_line(decision)}")
    stage.decision, stage.tags_of_decision, stage.notes = decision, tags, notes


def _decide(stage: FinalStage) -> tuple[dict[str, Any], PairedComparison | None, list[str]]:
    """Evaluate the current champion on the same images and decide whether the new model replaces it."""
    settings = stage.settings
    champion = stage.tracker.champion(settings.registered_model)
    champion_score = None
    champion_scale: int | None = None
    comparison: PairedComparison | None = None
    notes = []
    if champion is not None:
        champion_score, champion_scale, comparison = _compare_with_champion(stage, champion)
        where = f"{champion_scale} px" if champion_scale else "native resolution (it records no trained scale)"
        notes.append(
            f"champion v{champion.version} re-evaluated on the same {len(stage.test)} images, network at {where}: "
            f"{settings.promote_metric} {champion_score:.4f}"
        )
    promote, reason = decide_paired_promotion(comparison, settings.promote_margin)
    decision = {
        "promote": promote,
        "reason": reason,
        "new_score": stage.table[0][settings.promote_metric],
        "champion_score": champion_score,
        "champion_version": str(champion.version) if champion else None,
        "inference_scale": stage.scale,
        "champion_inference_scale": describe_scale(champion_scale) if champion else None,
        "dry_run": stage.dry_run,
        "margin": settings.promote_margin,
        "bootstrap": comparison.as_dict() if comparison is not None else None,
    }
    print(f"\npromotion decision: {decision_line(decision)}")
    return decision, comparison, notes


def _compare_with_champion(stage: FinalStage, champion: Any) -> tuple[float, int | None, PairedComparison]:
    """The champion's score at its own scale on the stage's test images, and the paired bootstrap against it."""
    settings = stage.settings
    model = stage.tracker.load_model(f"models:/{settings.registered_model}/{champion.version}")
    scale = champion_inference_scale(champion, model)
    counts = PerImageCounts()
    scores = evaluate_predictor(
        HairPredictor.from_model(model, scale=scale), sample_dicts(stage.test), per_image=counts
    )
    comparison = paired_bootstrap(
        stage.counts[stage.table[0]["method"]],
        counts,
        settings.promote_metric,
        confidence=settings.promote_confidence,
        seed=settings.bootstrap_seed,
        weights=stage.weights,
    )
    return scores[settings.promote_metric], scale, comparison


def promote(tracker: Tracker, name: str, version: str, decision: dict[str, Any], record: FinalRecord) -> bool:
    """Step ``promotion``: move ``@champion`` to ``version`` if decided so; returns whether the alias is on it.

    The alias moves at most once: only when the decision says so, the alias is not already on this
    version, and the champion the decision was made against is still the champion (a decision against a
    champion that another sweep has replaced meanwhile is stale, and the alias stays where it is).
    """
    promoted = record.get("promotion")
    if promoted is not None:
        return bool(promoted.get("promoted"))
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
    return on_it
