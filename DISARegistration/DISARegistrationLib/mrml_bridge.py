"""MRML nodes <-> DISA engine types: where node geometry meets the engine.

Slicer stores node geometry and transforms in RAS; the engine works in LPS (as ITK does).
Volumes, transforms and markups cross between the two here; the flips themselves come from
``disa.spatial.frames`` and the ITK <-> Slicer transform convention from
``disa.transforms.itk_io``.

Frames:
- A volume node's *local* frame is the one its IJKToRAS matrix maps into. If the node sits
  under a (linear) parent transform, its world position differs; :func:`image_from_volume_node`
  uses the local geometry only, and callers compose with :func:`local_to_world_lps` when they
  need world coordinates. Non-linear parents are refused, since no matrix can describe them.
- Transform matrices passed in and out are ITK resampling matrices: 4x4 float64, fixed-space
  LPS point -> moving-space LPS point. Slicer's "to parent" RAS matrix is the inverse of that,
  expressed in RAS.
- Markups positions are world positions (all parent transforms applied), in LPS.

Functions that read nodes never modify them. Only node methods, ``vtk`` and the engine are
used: no Qt, no ``slicer.app``, so the slicer-core wheel is enough to run it.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import torch
import vtk
from vtk.util import numpy_support

from disa.errors import InputError
from disa.spatial import Image
from disa.spatial.frames import (lps_to_ras_matrix, lps_to_ras_output, lps_to_ras_points, ras_to_lps_matrix,
                                 ras_to_lps_output, ras_to_lps_points)
from disa.transforms.itk_io import itk_to_slicer_to_parent_ras, slicer_to_parent_ras_to_itk

__all__ = [
    "image_from_volume_node",
    "update_volume_node_from_image",
    "local_to_world_lps",
    "set_linear_transform_node_from_itk",
    "itk_matrix_from_transform_node",
    "set_registration_references",
    "set_grid_transform_node_from_displacement",
    "set_composite_transform_node_from_itk",
    "landmarks_from_markups",
    "markup_labels",
    "markups_from_points",
]


# helpers ----------------------------------------------------------------------------------------
def _node_name(node) -> str:
    try:
        return f"'{node.GetName()}'"
    except AttributeError:
        return repr(node)


def _array_from_vtk_matrix(m: "vtk.vtkMatrix4x4") -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def _vtk_matrix_from_array(a: np.ndarray) -> "vtk.vtkMatrix4x4":
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(a[r, c]))
    return m


def _require(node, class_name: str, what: str) -> None:
    """InputError unless ``node`` is an instance of the MRML class ``class_name``."""
    if node is None:
        raise InputError(f"no {what} was given")
    if not (hasattr(node, "IsA") and node.IsA(class_name)):
        got = node.GetClassName() if hasattr(node, "GetClassName") else type(node).__name__
        raise InputError(f"{what} {_node_name(node)} is a {got}; a {class_name} is needed")


def local_to_world_lps(node) -> np.ndarray:
    """4x4 LPS matrix from ``node``'s local frame to world (identity without a parent transform).

    Raises InputError if a parent transform is non-linear (harden or remove it first).
    """
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise InputError(
            f"{_node_name(node)} is under the non-linear transform {_node_name(parent)}; "
            "harden that transform or remove it before registering")
    m = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(m)
    return ras_to_lps_matrix(_array_from_vtk_matrix(m))


# volumes ----------------------------------------------------------------------------------------
def image_from_volume_node(node, name: str = "volume") -> Image:
    """A copy of ``node``'s voxels and local geometry as an engine :class:`Image` (LPS, float32).

    The node's own IJKToRAS geometry is used; a linear parent transform is ignored (compose
    with :func:`local_to_world_lps` where world coordinates matter) and a non-linear one raises
    InputError. Vector volumes give one channel per component.
    """
    _require(node, "vtkMRMLVolumeNode", name)
    local_to_world_lps(node)  # refuses non-linear parents; the matrix itself is the caller's job
    image_data = node.GetImageData()
    if image_data is None or image_data.GetPointData() is None or \
            image_data.GetPointData().GetScalars() is None:
        raise InputError(f"{name} {_node_name(node)} holds no image data (is it loaded?)")
    scalars = image_data.GetPointData().GetScalars()
    nx, ny, nz = image_data.GetDimensions()
    comps = int(scalars.GetNumberOfComponents())
    if nx * ny * nz == 0:
        raise InputError(f"{name} {_node_name(node)} is empty")
    # vtk_to_numpy views the node's memory: copy so the engine can never write into the node.
    arr = numpy_support.vtk_to_numpy(scalars).reshape(nz, ny, nx, comps)
    data = np.array(np.moveaxis(arr, -1, 0), dtype=np.float32, order="C", copy=True)

    ijk_to_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    index_to_lps = ras_to_lps_output(_array_from_vtk_matrix(ijk_to_ras))
    # MRML indexes voxels from the extent's start; the engine's index 0 is the first voxel.
    start = np.array(image_data.GetExtent()[0::2], dtype=np.float64)
    origin = index_to_lps[:3, :3] @ start + index_to_lps[:3, 3]
    spacing = np.array(node.GetSpacing(), dtype=np.float64)
    direction_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASDirectionMatrix(direction_ras)
    direction = ras_to_lps_output(_array_from_vtk_matrix(direction_ras)[:3, :3])
    return Image(torch.from_numpy(data), spacing, origin, direction)


def update_volume_node_from_image(node, image: Image):
    """Write ``image`` (voxels as float32, geometry converted to RAS) into ``node``; returns it.

    One channel fills a scalar volume node; several need a vtkMRMLVectorVolumeNode. The node's
    parent transform is left as it is. The image mask is not stored.
    """
    _require(node, "vtkMRMLVolumeNode", "output volume")
    channels = image.channels
    if channels != 1 and not node.IsA("vtkMRMLVectorVolumeNode"):
        raise InputError(f"the image has {channels} channels; output volume {_node_name(node)} "
                         "must be a vector volume node to hold them")
    arr = image.data.detach().cpu().numpy().astype(np.float32)  # (C, Z, Y, X)
    nz, ny, nx = arr.shape[1:]
    flat = np.ascontiguousarray(np.moveaxis(arr, 0, -1)).reshape(-1, channels)
    vtk_array = numpy_support.numpy_to_vtk(flat if channels > 1 else flat[:, 0], deep=True,
                                           array_type=vtk.VTK_FLOAT)
    vtk_array.SetNumberOfComponents(channels)
    vtk_array.SetName("ImageScalars")
    image_data = vtk.vtkImageData()
    image_data.SetDimensions(int(nx), int(ny), int(nz))
    image_data.GetPointData().SetScalars(vtk_array)

    was_modifying = node.StartModify()
    try:
        node.SetIJKToRASMatrix(_vtk_matrix_from_array(lps_to_ras_output(image.index_to_world())))
        node.SetAndObserveImageData(image_data)
        if node.GetScene() is not None and node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
    finally:
        node.EndModify(was_modifying)
    return node


# transforms -------------------------------------------------------------------------------------
def _check_linear_transform_node(node, what: str) -> None:
    _require(node, "vtkMRMLTransformNode", what)
    for nonlinear in ("vtkMRMLGridTransformNode", "vtkMRMLBSplineTransformNode"):
        if node.IsA(nonlinear):
            raise InputError(f"{what} {_node_name(node)} is a {nonlinear}; choose a linear "
                             "transform node")


def set_linear_transform_node_from_itk(node, matrix_lps_fixed_to_moving) -> None:
    """Store an ITK resampling matrix (fixed LPS -> moving LPS) in a linear transform node.

    The node receives Slicer's "to parent" RAS matrix, the inverse partner, so that the moving
    volume placed under the node lands on the fixed volume; saving the node to .h5/.tfm writes
    the same ITK transform as ``disa.transforms.itk_io.write_itk_transform(matrix)``.
    """
    _check_linear_transform_node(node, "output transform")
    try:
        to_parent = itk_to_slicer_to_parent_ras(matrix_lps_fixed_to_moving)
    except np.linalg.LinAlgError as exc:
        raise InputError("the transform matrix is singular and cannot be shown in Slicer") from exc
    node.SetMatrixTransformToParent(_vtk_matrix_from_array(to_parent))


def itk_matrix_from_transform_node(node, world: bool = False) -> np.ndarray:
    """The ITK resampling matrix (fixed LPS -> moving LPS) equivalent to a linear transform node.

    ``world=False`` uses the node's own "to parent" transform, as Slicer writes it to an ITK
    file; ``world=True`` includes the node's parent transforms too.
    """
    _require(node, "vtkMRMLTransformNode", "transform")
    linear = node.IsTransformToWorldLinear() if world else node.IsLinear()
    if not linear:
        raise InputError(f"transform {_node_name(node)} is not linear (grid or B-spline); "
                         "a linear transform is needed here")
    m = vtk.vtkMatrix4x4()
    if world:
        node.GetMatrixTransformToWorld(m)
    else:
        node.GetMatrixTransformToParent(m)
    try:
        return slicer_to_parent_ras_to_itk(_array_from_vtk_matrix(m))
    except np.linalg.LinAlgError as exc:
        raise InputError(f"transform {_node_name(node)} is singular") from exc


def set_grid_transform_node_from_displacement(node, field: Image) -> None:
    """Store a dense displacement field in a grid transform node (vtkOrientedGridTransform).

    ``field`` is a 3-channel Image on a fixed-space grid: the LPS displacement d(p) in mm such
    that fixed point p maps to moving point p + d(p) -- the resampling direction, as ITK's
    displacement field transforms store it. The node receives that mapping as its "from parent"
    transform in RAS (Slicer derives "to parent" by inverting it on demand), so, like a linear
    result, the moving volume placed under the node lands on the fixed volume and saving the node
    writes an ITK displacement field with the same mapping. Trilinear interpolation between grid
    points, as the engine's ``grid_sample``.
    """
    _require(node, "vtkMRMLGridTransformNode", "output grid transform")
    node.SetAndObserveTransformFromParent(_grid_transform(field))


def set_composite_transform_node_from_itk(node, matrix_lps_fixed_to_moving, field: Image, before_lps=None) -> None:
    """Store ``p -> matrix (q + d(q))`` with ``q = before_lps p`` (identity if None) in a transform
    node as one composite "from parent" transform: linear, grid, linear (RAS).

    ``d`` is the displacement field ``field`` (as :func:`set_grid_transform_node_from_displacement`),
    e.g. the compression of the probe-pressure model, applied before its rigid part. Any transform
    node holds it (also a vtkMRMLLinearTransformNode, which then is no longer linear); the moving
    volume under the node lands on the fixed volume, and saving the node writes an ITK composite
    transform (affine + displacement field) with the same mapping.
    """
    _require(node, "vtkMRMLTransformNode", "output transform")
    general = vtk.vtkGeneralTransform()
    general.PostMultiply()  # concatenated in the order points go through them
    if before_lps is not None:
        general.Concatenate(_vtk_linear_transform(before_lps))
    general.Concatenate(_grid_transform(field))
    general.Concatenate(_vtk_linear_transform(matrix_lps_fixed_to_moving))
    node.SetAndObserveTransformFromParent(general)


def _vtk_linear_transform(matrix_lps) -> "vtk.vtkTransform":
    transform = vtk.vtkTransform()
    transform.SetMatrix(_vtk_matrix_from_array(lps_to_ras_matrix(np.asarray(matrix_lps, dtype=np.float64))))
    return transform


def _grid_transform(field: Image):
    """A vtkOrientedGridTransform (RAS) of a 3-channel LPS displacement field Image."""
    import slicer  # vtkOrientedGridTransform comes with Slicer (vtkAddon), also in slicer-core

    if field.channels != 3:
        raise InputError(f"a displacement field needs 3 channels (x, y, z), got {field.channels}")
    arr = field.data.detach().cpu().numpy().astype(np.float64)  # (3, Z, Y, X), LPS
    if not np.all(np.isfinite(arr)):
        raise InputError("the displacement field contains NaN or infinite values")
    nz, ny, nx = arr.shape[1:]
    ras = lps_to_ras_points(np.moveaxis(arr, 0, -1).reshape(-1, 3))  # displacement vectors
    vectors = numpy_support.numpy_to_vtk(np.ascontiguousarray(ras), deep=True, array_type=vtk.VTK_DOUBLE)
    vectors.SetNumberOfComponents(3)
    grid = vtk.vtkImageData()
    grid.SetDimensions(int(nx), int(ny), int(nz))
    # vtkOrientedGridTransform places voxel ijk at origin + direction @ (spacing * ijk).
    grid.SetOrigin(*lps_to_ras_points(field.origin))
    grid.SetSpacing(*field.spacing)
    grid.GetPointData().SetScalars(vectors)
    direction = np.eye(4)
    direction[:3, :3] = lps_to_ras_output(field.direction)
    transform = slicer.vtkOrientedGridTransform()
    transform.SetDisplacementGridData(grid)
    transform.SetGridDirectionMatrix(_vtk_matrix_from_array(direction))
    transform.SetInterpolationModeToLinear()
    return transform


def set_registration_references(transform_node, fixed_node, moving_node) -> None:
    """Record which volumes a registration result relates, with Slicer's own reference roles
    (the Transforms module and other registration extensions read them)."""
    transform_node.SetNodeReferenceID(transform_node.GetFixedNodeReferenceRole(),
                                      fixed_node.GetID() if fixed_node is not None else None)
    transform_node.SetNodeReferenceID(transform_node.GetMovingNodeReferenceRole(),
                                      moving_node.GetID() if moving_node is not None else None)


# markups ----------------------------------------------------------------------------------------
def landmarks_from_markups(node) -> np.ndarray:
    """(N, 3) world positions of the control points of a markups node, in LPS mm.

    Raises InputError if a control point has no position yet (placed later or skipped), since
    landmarks are paired by order and a gap would shift every pair after it.
    """
    _require(node, "vtkMRMLMarkupsNode", "landmarks")
    n = node.GetNumberOfControlPoints()
    points = np.zeros((n, 3), dtype=np.float64)
    defined = getattr(node, "PositionDefined", 2)
    for i in range(n):
        if node.GetNthControlPointPositionStatus(i) != defined:
            raise InputError(f"control point {i + 1} ('{node.GetNthControlPointLabel(i)}') of "
                             f"{_node_name(node)} has no position; place or delete it")
        pos = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(i, pos)
        points[i] = pos
    return ras_to_lps_points(points)


def markup_labels(node) -> List[str]:
    """Control point labels of a markups node, in order."""
    _require(node, "vtkMRMLMarkupsNode", "landmarks")
    return [node.GetNthControlPointLabel(i) for i in range(node.GetNumberOfControlPoints())]


def markups_from_points(node, points_lps, labels: Optional[Sequence[str]] = None):
    """Replace the control points of ``node`` by ``points_lps`` ((N, 3) world LPS mm); returns it.

    Points are placed in world coordinates, so a node under a transform shows them where they
    belong. ``labels`` (one per point) default to the node's own numbering.
    """
    _require(node, "vtkMRMLMarkupsNode", "output markups")
    pts = np.asarray(points_lps, dtype=np.float64)
    if pts.ndim == 1 and pts.size == 3:
        pts = pts[None]
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise InputError(f"points must be an (N, 3) array, got shape {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise InputError("points contain NaN or infinite coordinates")
    if labels is not None and len(labels) != len(pts):
        raise InputError(f"{len(labels)} labels given for {len(pts)} points")
    ras = lps_to_ras_points(pts)
    was_modifying = node.StartModify()
    try:
        node.RemoveAllControlPoints()
        for i, p in enumerate(ras):
            label = "" if labels is None else str(labels[i])
            node.AddControlPointWorld(vtk.vtkVector3d(float(p[0]), float(p[1]), float(p[2])), label)
    finally:
        node.EndModify(was_modifying)
    return node
