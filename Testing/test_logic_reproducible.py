"""One engine, one answer, through the Slicer logic (DISARegistrationLib/logic.py on a real
slicer-core scene): the same inputs and seed give a bit-identical matrix from
RegistrationLogic.register, registerAsync and the engine's register(); two registrations running
at once each give their solo result; the defaults, the precision and the weights file are the
engine's."""
from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the 'slicer' package here is not slicer-core", allow_module_level=True)

from DISARegistrationLib import mrml_bridge as mb  # noqa: E402
from DISARegistrationLib.logic import RegistrationLogic  # noqa: E402
from DISARegistrationLib.self_test_data import add_volume_node, synthetic_volume_array  # noqa: E402
from disa.errors import InputError  # noqa: E402
from disa.features.descriptors import cpu_bfloat16_supported  # noqa: E402
from disa.features.weights import DEFAULT_WEIGHTS  # noqa: E402
from disa.registration import register  # noqa: E402
from disa.registration.defaults import DEFAULTS  # noqa: E402

#: A global search (seeded) on two small levels: logic names, then the engine's for the same run.
#: One thread (the logics below too): a busy 2-core machine runs it much faster than two.
SEARCH = dict(search="global", resolution=2.0, maxEvaluations=15, search_samples=16, search_starts=2)
ENGINE_SEARCH = dict(search="global", spacings=[4.0, 2.0], max_evals=15, search_samples=16, search_starts=2,
                     device="cpu", threads=1)



@pytest.fixture(scope="module")
def pair():
    """A smooth volume and a copy 3 mm / 2 mm / 1.5 mm away, in one scene."""
    scene = slicer.vtkMRMLScene()
    array = synthetic_volume_array((30, 32, 34), seed=4)
    fixed = add_volume_node(scene, "fixed", array, (0.0, 0.0, 0.0))
    moving = add_volume_node(scene, "moving", array, (3.0, -2.0, 1.5))
    return scene, fixed, moving


def node_matrix(node) -> np.ndarray:
    return mb.itk_matrix_from_transform_node(node)


def engine_matrix(fixed, moving, **settings) -> np.ndarray:
    """The engine's register() on the very arrays the logic passes it (no parents: initial = identity)."""
    return register(mb.image_from_volume_node(fixed), mb.image_from_volume_node(moving), **ENGINE_SEARCH,
                    **settings).matrix


@pytest.mark.parametrize("metric", [DEFAULTS.metric, "mi", "disa"])
def test_logic_async_and_engine_give_the_same_bits(pair, metric):
    if metric == "disa" and not DEFAULT_WEIGHTS.exists():
        pytest.skip(f"DISA weights not shipped: {DEFAULT_WEIGHTS}")
    scene, fixed, moving = pair
    logic = RegistrationLogic(scene, device="cpu", threads=1)
    out = logic.register(fixed, moving, metric=metric, seed=5, **SEARCH)
    result = logic.lastResult
    job = logic.registerAsync(fixed, moving, metric=metric, seed=5, **SEARCH)
    out_async = job.finish()
    assert out_async is not out and job.elapsed > 0
    expected = engine_matrix(fixed, moving, metric=metric, seed=5)
    assert np.array_equal(result.matrix, expected), np.abs(result.matrix - expected).max()
    assert np.array_equal(logic.lastResult.matrix, expected)
    assert np.array_equal(node_matrix(out_async), node_matrix(out))
    assert result.metric == metric and result.precision == "float32"


def test_two_registrations_at_once_each_give_their_solo_result(pair):
    scene, fixed, moving = pair
    runs = {"mi": dict(metric="mi", seed=1),
            "disa" if DEFAULT_WEIGHTS.exists() else "mind": dict(metric="disa" if DEFAULT_WEIGHTS.exists() else "mind",
                                                                 seed=2)}
    logic = RegistrationLogic(scene, device="cpu", threads=1)
    solo = {key: node_matrix(logic.register(fixed, moving, **settings, **SEARCH)) for key, settings in runs.items()}
    jobs = {key: logic.registerAsync(fixed, moving, **settings, **SEARCH) for key, settings in runs.items()}
    together = {key: node_matrix(job.finish()) for key, job in jobs.items()}
    a, b = jobs.values()
    assert min(a._ended, b._ended) > max(a._started, b._started), "the two jobs did not overlap"
    for key in runs:
        assert np.array_equal(together[key], solo[key]), key


def test_defaults_are_the_engines(pair):
    import inspect

    signature = inspect.signature(RegistrationLogic.register).parameters
    for logic_name, engine_name in (("metric", "metric"), ("transform", "transform"), ("search", "search"),
                                    ("searchPreset", "search_preset"), ("searchRotation", "search_rotation"),
                                    ("searchTranslation", "search_translation"), ("seed", "seed"),
                                    ("precision", "precision")):
        assert signature[logic_name].default == getattr(DEFAULTS, engine_name), logic_name
    assert inspect.signature(RegistrationLogic.similarityMap).parameters["metric"].default == DEFAULTS.metric
    logic = RegistrationLogic(pair[0])
    assert logic.device == DEFAULTS.device and logic.threads == DEFAULTS.threads


def test_precision_and_weights_are_passed_through(pair, tmp_path):
    scene, fixed, moving = pair
    logic = RegistrationLogic(scene, device="cpu", threads=1)
    ids = sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))
    with pytest.raises(InputError, match="precision"):
        logic.register(fixed, moving, precision="float8", **SEARCH)
    with pytest.raises(InputError, match="unknown similarity"):
        logic.registerAsync(fixed, moving, metric="dissa", **SEARCH)  # refused before a worker starts
    with pytest.raises(InputError, match="disa"):
        logic.register(fixed, moving, metric="mind", weightsPath=str(DEFAULT_WEIGHTS), **SEARCH)
    missing = tmp_path / "elsewhere.pt"
    with pytest.raises(InputError, match="elsewhere.pt"):
        logic.register(fixed, moving, metric="disa", weightsPath=str(missing), **SEARCH)
    with pytest.raises(InputError, match="elsewhere.pt"):
        logic.similarityMap(fixed, moving, [0.0, 0.0, 0.0], metric="disa", weightsPath=str(missing))
    assert sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())) == ids  # nothing written
    if not DEFAULT_WEIGHTS.exists():
        pytest.skip(f"DISA weights not shipped: {DEFAULT_WEIGHTS}")
    # A copy of the weights with its model card is checked and used like the shipped file.
    copy = tmp_path / "copy.pt"
    copy.write_bytes(DEFAULT_WEIGHTS.read_bytes())
    (tmp_path / "copy.json").write_bytes(DEFAULT_WEIGHTS.with_suffix(".json").read_bytes())
    logic.register(fixed, moving, metric="disa", weightsPath=str(copy), seed=5, **SEARCH)
    assert np.array_equal(logic.lastResult.matrix, engine_matrix(fixed, moving, metric="disa", seed=5))
    if cpu_bfloat16_supported():
        logic.register(fixed, moving, metric="disa", precision="bfloat16", seed=5, **SEARCH)
        assert logic.lastResult.precision == "bfloat16"
    else:  # no bfloat16 convolution on this CPU: one clear line, nothing written
        with pytest.raises(InputError, match="bfloat16 descriptors need a CPU with AVX-512"):
            logic.register(fixed, moving, metric="disa", precision="bfloat16", seed=5, **SEARCH)
