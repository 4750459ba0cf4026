"""What the module's self-test (DISARegistrationTest, also run by the pytest suite) registers:
synthetic volumes (smooth random blobs placed at a chosen RAS origin) and a known perturbation
of the sample case."""
from __future__ import annotations

import numpy as np

__all__ = ["synthetic_volume_array", "add_volume_node", "perturb_about_center"]


def synthetic_volume_array(shape=(28, 30, 32), seed: int = 0) -> np.ndarray:
    """A smooth random volume (sum of 12 Gaussian blobs), float32, indexed [z, y, x]."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    volume = np.zeros(shape, np.float32)
    for _ in range(12):
        c = rng.uniform(0.25, 0.75, 3) * np.array(shape)
        s = rng.uniform(3.0, 7.0)
        volume += rng.uniform(0.5, 1.5) * np.exp(-((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) / (2 * s * s))
    return volume


def add_volume_node(scene, name: str, array: np.ndarray, origin_ras):
    """A new scalar volume node holding ``array`` on a 1 mm axis-aligned grid at ``origin_ras``."""
    from disa.spatial import Image
    from disa.spatial.frames import ras_to_lps_points

    from . import mrml_bridge as bridge

    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    image = Image.from_array(array, spacing=(1.0, 1.0, 1.0), origin=ras_to_lps_points(origin_ras))
    return bridge.update_volume_node_from_image(node, image)


def perturb_about_center(scene, fixedNode, movingNode, degrees=8.0, axis=(0.6, 0.0, 0.8), shift=(8.0, -6.0, 6.0)):
    """Place ``movingNode`` under a new transform that rotates it by ``degrees`` about ``axis``
    through the fixed volume's centre and shifts it by ``shift`` (RAS mm); returns that node."""
    import vtk

    bounds = [0.0] * 6
    fixedNode.GetRASBounds(bounds)
    centre = np.array(bounds).reshape(3, 2).mean(axis=1)
    perturbation = vtk.vtkTransform()
    perturbation.PostMultiply()
    perturbation.Translate(*(-centre))
    perturbation.RotateWXYZ(degrees, *axis)
    perturbation.Translate(*(centre + np.asarray(shift, dtype=float)))
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "perturbation")
    node.SetMatrixTransformToParent(perturbation.GetMatrix())
    movingNode.SetAndObserveTransformNodeID(node.GetID())
    return node
