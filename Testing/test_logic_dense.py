"""Dense registration through the module's logic on a real MRML scene (slicer-core): a grid
transform node holding the whole mapping, the Jacobian volume, the same field as the engine, and
the output-node checks."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the 'slicer' package here is not slicer-core", allow_module_level=True)

MODULE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "DISARegistration")
if MODULE_DIR not in sys.path:
    sys.path.insert(0, MODULE_DIR)

from DISARegistrationLib import mrml_bridge as mb  # noqa: E402
from DISARegistrationLib import scene_io  # noqa: E402
from DISARegistrationLib.logic import RegistrationLogic  # noqa: E402
from disa.errors import InputError  # noqa: E402
from disa.registration import register  # noqa: E402
from disa.spatial.frames import lps_to_ras_points, ras_to_lps_points  # noqa: E402
from synthetic import deformed_pair, inner_points, mean_error, rotation  # noqa: E402

SETTINGS = dict(metric="mind", search="local", resolution=3.0, maxEvaluations=30, seed=0)
DENSE = dict(spacing=3.0, iterations=20)


@pytest.fixture(scope="module")
def dense_run():
    scene = scene_io.make_scene()
    fixed, moving, truth = deformed_pair(direction=rotation(0.2, -0.3, 0.4))
    nodes = {}
    for name, image in (("fixed", fixed), ("moving", moving)):
        nodes[name] = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        mb.update_volume_node_from_image(nodes[name], image)
    jacobian = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "jacobian")
    logic = RegistrationLogic(scene, device="cpu", threads=1)
    node = logic.register(nodes["fixed"], nodes["moving"], transform="deformable", jacobianVolumeNode=jacobian,
                          dense=DENSE, **SETTINGS)
    return dict(scene=scene, nodes=nodes, node=node, logic=logic, jacobian=jacobian, truth=truth,
                fixed=fixed, moving=moving)


def test_grid_node_holds_the_whole_dense_mapping(dense_run):
    node, result = dense_run["node"], dense_run["logic"].lastResult
    assert node.IsA("vtkMRMLGridTransformNode")
    assert result.field is not None and result.transform == "deformable"
    points = inner_points(dense_run["fixed"])[::7]
    from_parent = node.GetTransformFromParent()
    got = ras_to_lps_points(np.array([from_parent.TransformPoint(*p) for p in lps_to_ras_points(points)]))
    np.testing.assert_allclose(got, result.transform_points(points), atol=2e-3)
    # the dense result is closer to the known deformation than its own linear start
    linear_only = type(result)(**{**vars(result), "field": None})
    assert mean_error(result, dense_run["truth"], points) < 0.9 * mean_error(linear_only, dense_run["truth"], points)


def test_jacobian_volume_shows_no_folding(dense_run):
    image = mb.image_from_volume_node(dense_run["jacobian"], "jacobian")
    det = image.data.numpy()
    assert det.shape[1:] == dense_run["logic"].lastResult.field.shape
    assert 0.0 < det.min() and det.max() < 3.0 and abs(float(np.median(det)) - 1.0) < 0.2


def test_logic_gives_the_engine_field(dense_run):
    """One pipeline: the engine on the nodes' images with the same settings gives the same field."""
    nodes = dense_run["nodes"]
    fixed = mb.image_from_volume_node(nodes["fixed"], "fixed")
    moving = mb.image_from_volume_node(nodes["moving"], "moving")
    result = register(fixed, moving, metric="mind", transform="deformable", search="local", spacings=[6.0, 3.0],
                      max_evals=30, seed=0, threads=1, device="cpu", dense=DENSE)
    logic_result = dense_run["logic"].lastResult
    np.testing.assert_array_equal(result.matrix, logic_result.matrix)
    assert torch.equal(result.field.data, logic_result.field.data)


def test_output_node_must_suit_the_model(dense_run):
    scene, nodes, logic = dense_run["scene"], dense_run["nodes"], dense_run["logic"]
    linear = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "linear out")
    with pytest.raises(InputError, match="not a grid transform"):
        logic.register(nodes["fixed"], nodes["moving"], transform="deformable", outputTransformNode=linear,
                       dense=DENSE, **SETTINGS)
    jac = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "jac")
    with pytest.raises(InputError, match="Jacobian"):
        logic.register(nodes["fixed"], nodes["moving"], transform="rigid", jacobianVolumeNode=jac, **SETTINGS)
    with pytest.raises(InputError, match="dense settings"):
        logic.register(nodes["fixed"], nodes["moving"], transform="rigid", dense=DENSE, **SETTINGS)
