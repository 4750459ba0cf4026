"""Metric expressions are parsed once: names in any case, weighted sums normalized, anything
malformed refused with the valid names; the pipeline picks the optimizer from the parsed name,
so ``LC2`` runs exactly what ``lc2`` runs."""
from __future__ import annotations

import numpy as np
import pytest

from disa.errors import InputError
from disa.registration import register
from disa.similarity import LC2, MIND, Combined, DISA, MutualInformation, make_similarity, parse_metric
from disa.similarity.spec import METRIC_NAMES


@pytest.mark.parametrize("text,canonical,base", [
    ("mind", "mind", "mind"), ("LC2", "lc2", "lc2"), (" Mind ", "mind", "mind"),
    ("0.5*LC2 + 0.5 * mind", "0.5*lc2+0.5*mind", "combined"), ("2*mind", "2*mind", "mind"),
    ("mind+MIND", "2*mind", "mind"), ("1e-1*ncc+lc2", "0.1*ncc+lc2", "combined"), ("1*mi", "mi", "mi"),
])
def test_expressions_are_normalized(text, canonical, base):
    spec = parse_metric(text)
    assert str(spec) == canonical and spec.base == base
    assert parse_metric(str(spec)) == spec  # the canonical text reads back to the same spec


@pytest.mark.parametrize("text", ["0.5*disa+", "*mind", "0.5**lc2", "", "  ", "lc3", "-1*mind", "0*mind",
                                  "nan*mind", "inf*lc2", "lc2-mind", "lc2*0.5", "0.5*", "mind++lc2", "mi nd"])
def test_malformed_expressions_are_refused_with_the_valid_names(text):
    with pytest.raises(InputError) as exc:
        parse_metric(text)
    message = str(exc.value)
    assert "\n" not in message and all(name in message for name in METRIC_NAMES)


def test_build_gives_the_measures_with_their_options(tmp_path):
    assert isinstance(make_similarity("LC2"), LC2) and isinstance(make_similarity("mind"), MIND)
    combined = parse_metric("0.25*mi+0.75*mind").build(seed=7)
    assert isinstance(combined, Combined) and [w for w, _ in combined.parts] == [0.25, 0.75]
    assert isinstance(combined.parts[0][1], MutualInformation) and combined.parts[0][1].seed == 7
    disa = parse_metric("disa").build(precision="bfloat16")
    assert isinstance(disa, DISA) and disa.precision == "bfloat16"
    with pytest.raises(InputError, match="disa measure only"):
        parse_metric("mind").build(weights=tmp_path / "w.pt")
    with pytest.raises(InputError, match="unknown precision"):
        parse_metric("disa").build(precision="int8")


def test_metric_names_in_any_case_run_the_same_registration():
    """``LC2`` once ran L-BFGS without its tolerances (the pipeline looked the raw string up):
    now it is BOBYQA, as ``lc2``, and gives the same matrix bit for bit."""
    from synthetic import textured_image

    fixed = textured_image(20, 2.5, seed=3)
    results = [register(fixed, fixed, metric=m, search="local", spacings=[5.0], max_evals=25,
                        threads=1) for m in ("lc2", "LC2")]
    assert results[0].metric == results[1].metric == "lc2"
    assert np.array_equal(results[0].matrix, results[1].matrix)
    assert "MAXFUN" in results[0].levels[0].message  # Py-BOBYQA's stopping message, not L-BFGS's


def test_a_weighted_sum_of_measures_that_crop_to_the_fixed_mask_registers():
    """MIND and LC² score the fixed mask's bounding box; their sum once failed with a size
    mismatch because the sum scored the whole fixed grid."""
    from synthetic import textured_image

    fixed = textured_image(24, 2.5, seed=4)
    fixed.data[:, :, :6] = 0.0  # a zero border (an ultrasound fan's outside): the mask is automatic
    result = register(fixed, fixed, metric="0.5*mind+0.5*LC2", search="local", spacings=[2.5], max_evals=10,
                      threads=1)
    assert result.metric == "0.5*mind+0.5*lc2" and np.isfinite(result.final_similarity)
    assert np.abs(result.matrix - np.eye(4)).max() < 0.5  # within a fifth of a voxel of the identity
