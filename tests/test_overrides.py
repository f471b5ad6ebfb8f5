"""The one ``--set KEY=VALUE`` parser: YAML values, the sweep's ``fixed.`` default, and bad pairs."""

from __future__ import annotations

import pytest

from hairseg_core.search.overrides import parse_set


def test_values_are_yaml_and_keys_are_kept_for_a_single_run() -> None:
    assert parse_set(["epochs=1", " lr=0.001", "flip=true", "backbone=mobilenet_v2", "note="]) == {
        "epochs": 1,
        "lr": 0.001,
        "flip": True,
        "backbone": "mobilenet_v2",
        "note": None,
    }


def test_a_sweep_puts_bare_keys_under_fixed_and_keeps_dotted_ones() -> None:
    pairs = ["epochs=1", "scheduler.grace_period=1", "finalize.max_test_images=4", "a=b=c"]
    assert parse_set(pairs, bare_prefix="fixed") == {
        "fixed.epochs": 1,
        "scheduler.grace_period": 1,
        "finalize.max_test_images": 4,
        "fixed.a": "b=c",
    }


@pytest.mark.parametrize("pair", ["epochs", "=3", " =3"])
def test_a_pair_without_key_or_equals_sign_is_refused_by_name(pair: str) -> None:
    with pytest.raises(ValueError, match="expected KEY=VALUE, got " + repr(pair).replace("[", r"\[")):
        parse_set(["epochs=1", pair])
