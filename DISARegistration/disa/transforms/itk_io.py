"""Linear transforms to and from ITK transform files, and Slicer's "to parent" convention.

Frames and directions (the contract every caller relies on):
- An engine matrix ``m`` (4x4 float64) maps FIXED-space LPS points to MOVING-space LPS points:
  the resampling direction, which is what ITK transform files (``.tfm``/``.txt``/``.h5``) store.
- ITK writes a linear transform about a centre ``c``: ``x' = A (x - c) + c + t``. The matrix
  alone fixes how points move; ``c`` only changes how the same mapping is parameterized.
- 3D Slicer shows transforms in RAS and as "to parent" (moving -> fixed for a registration
  result), i.e. the INVERSE of the ITK resampling transform, with x and y negated. Slicer itself
  does exactly this conversion when it loads or saves an ITK file; the MRML bridge calls
  :func:`itk_to_slicer_to_parent_ras` / :func:`slicer_to_parent_ras_to_itk`, and the flip itself
  comes from :mod:`disa.spatial.frames`.
"""
from __future__ import annotations

import os
from typing import Callable, Optional, Sequence, Union

import numpy as np

from ..errors import InputError, existing_file, itk_error_summary
from ..spatial.frames import lps_to_ras_matrix, ras_to_lps_matrix

PathLike = Union[str, "os.PathLike[str]"]

#: Suffixes the writer accepts (text and HDF5 ITK transform files).
TEXT_SUFFIXES = (".tfm", ".txt")
HDF5_SUFFIXES = (".h5", ".hdf5")
WRITE_SUFFIXES = TEXT_SUFFIXES + HDF5_SUFFIXES

#: Largest deviation of R^T R from I (and of the last matrix row from [0 0 0 1]) accepted as exact.
ROTATION_TOLERANCE = 1e-4

_NON_LINEAR_MESSAGE = (
    "transform file '{path}' holds a non-linear transform ({what}); displacement-field and "
    "B-spline transforms are not linear and are not supported by this reader yet")


def _as_matrix(matrix, name: str = "matrix") -> np.ndarray:
    """A validated homogeneous 4x4 float64 copy (accepts numpy, lists, torch, a (1, 4, 4) batch)."""
    if hasattr(matrix, "detach"):  # torch tensor, without importing torch here
        matrix = matrix.detach().cpu().numpy()
    m = np.array(matrix, dtype=np.float64)
    if m.shape == (1, 4, 4):
        m = m[0]
    if m.shape != (4, 4):
        raise InputError(f"{name} must be a 4x4 homogeneous matrix, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise InputError(f"{name} contains NaN or Inf")
    if np.abs(m[3] - [0.0, 0.0, 0.0, 1.0]).max() > ROTATION_TOLERANCE:
        raise InputError(f"{name} is not affine: its last row is {m[3].tolist()}, not [0, 0, 0, 1]")
    m[3] = [0.0, 0.0, 0.0, 1.0]
    return m


def _center(center: Optional[Sequence[float]]) -> np.ndarray:
    c = np.zeros(3) if center is None else np.asarray(center, dtype=np.float64).reshape(-1)
    if c.shape != (3,) or not np.all(np.isfinite(c)):
        raise InputError(f"transform centre must be 3 finite numbers, got {center!r}")
    return c


def _nearest_rotation(a: np.ndarray) -> np.ndarray:
    """The rotation closest to ``a``; InputError unless ``a`` is already one within tolerance."""
    if np.abs(a.T @ a - np.eye(3)).max() > ROTATION_TOLERANCE or np.linalg.det(a) <= 0:
        raise InputError("the matrix is not a rigid transform (its 3x3 part is not a rotation "
                         f"within {ROTATION_TOLERANCE:g}); write it with kind='affine'")
    u, _, vt = np.linalg.svd(a)
    return u @ vt


def matrix_to_sitk(matrix, center: Optional[Sequence[float]] = None, kind: str = "affine"):
    """The SimpleITK transform that maps points exactly as ``matrix`` does (fixed LPS -> moving LPS).

    ``kind="rigid"`` gives an ``Euler3DTransform`` (the rotation must be exact within 1e-4; it is
    re-orthonormalized, so tiny round-off is not stored), ``kind="affine"`` an ``AffineTransform``.
    ``center`` (LPS mm, default the origin) only changes the stored parameterization.
    """
    import SimpleITK as sitk

    m = _as_matrix(matrix)
    c = _center(center)
    if kind == "rigid":
        a = _nearest_rotation(m[:3, :3])
        t = m[:3, 3] - c + a @ c  # from A x + b = A (x - c) + c + t
        best = None
        # Euler angles lose digits near one convention's gimbal lock; keep the closer of the two.
        for zyx in (False, True):
            tx = sitk.Euler3DTransform()
            tx.SetComputeZYX(zyx)
            tx.SetCenter(c.tolist())
            tx.SetMatrix(a.ravel().tolist(), 1e-8)
            tx.SetTranslation(t.tolist())
            err = np.abs(np.array(tx.GetMatrix()).reshape(3, 3) - a).max()
            if best is None or err < best[0]:
                best = (err, tx)
            if err < 1e-14:
                break
        return best[1]
    if kind == "affine":
        a = m[:3, :3]
        t = m[:3, 3] - c + a @ c
        tx = sitk.AffineTransform(3)
        tx.SetCenter(c.tolist())
        tx.SetMatrix(a.ravel().tolist())
        tx.SetTranslation(t.tolist())
        return tx
    raise InputError(f"unknown transform kind {kind!r}; use 'rigid' or 'affine'")


def linear_kind(matrix) -> str:
    """"rigid" when the 3x3 part of ``matrix`` is a rotation (within 1e-6), else "affine"."""
    r = np.asarray(matrix, dtype=np.float64)[:3, :3]
    return "rigid" if np.abs(r.T @ r - np.eye(3)).max() < 1e-6 and np.linalg.det(r) > 0 else "affine"


def composite_to_sitk(matrix, center, field):
    """The SimpleITK transform of ``x -> matrix (x + d(x))``, ``d`` a 3-channel LPS displacement
    Image on a fixed-space grid: a composite of the linear part (Euler3D when ``matrix`` is
    rigid, else affine) and a displacement field, which ITK applies first (a composite applies
    its last transform first). Points outside the field's grid get no displacement."""
    import SimpleITK as sitk

    m = _as_matrix(matrix)
    displacement = sitk.DisplacementFieldTransform(sitk.Cast(field.to_sitk(channel=None), sitk.sitkVectorFloat64))
    return sitk.CompositeTransform([matrix_to_sitk(m, center=center, kind=linear_kind(m)), displacement])


def write_itk_transform(path: PathLike, matrix, center: Optional[Sequence[float]] = None,
                        kind: str = "affine") -> None:
    """Write a fixed->moving LPS ``matrix`` as an ITK transform file (.tfm/.txt text, .h5/.hdf5).

    Parent folders are created. See :func:`matrix_to_sitk` for ``center`` and ``kind``. Text
    files are byte-identical for identical inputs; HDF5 files also store their creation time.
    """
    write_sitk_transform(path, matrix_to_sitk(matrix, center=center, kind=kind))


def write_sitk_transform(path: PathLike, tx) -> None:
    """Write any SimpleITK transform ``tx`` (a composite with a displacement field too) to an
    ITK transform file, with the checks and one-line errors of :func:`write_itk_transform`."""
    import SimpleITK as sitk

    path = os.fspath(path)
    lower = path.lower()
    if not lower.endswith(WRITE_SUFFIXES):
        raise InputError(f"cannot write transform file '{path}': unknown suffix; use one of "
                         f"{', '.join(WRITE_SUFFIXES)}")
    folder = os.path.dirname(os.path.abspath(path))
    existed = os.path.exists(path)
    try:
        os.makedirs(folder, exist_ok=True)
        open(path, "ab").close()  # a plain OSError here, before HDF5 prints its error stack
        sitk.WriteTransform(tx, path)
    except (OSError, RuntimeError) as exc:
        if not existed and os.path.isfile(path):
            os.remove(path)
        raise InputError(f"could not write transform file '{path}': {itk_error_summary(exc)}") from exc


def read_itk_transform(path: PathLike) -> np.ndarray:
    """The 4x4 fixed LPS -> moving LPS matrix stored in a linear ITK transform file.

    Any linear ITK transform type is accepted (Euler, Versor, VersorRigid, Similarity, Affine,
    Translation, Scale..., and composites of them, as Slicer writes to .h5). The matrix is
    recovered from mapped points rather than per-type parameters, then checked for linearity.
    """
    path = existing_file(path, "transform")
    return sitk_to_matrix(_read_sitk(path), path)


def read_itk_mapping(path: PathLike) -> Union[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """What a transform file does to fixed LPS points: the 4x4 matrix of a linear file (as
    :func:`read_itk_transform`), else a function (N, 3) -> (N, 3) through SimpleITK, for
    non-linear files such as a probe-pressure result (rigid part after a displacement field)."""
    path = existing_file(path, "transform")
    tx = _read_sitk(path)
    if tx.IsLinear():
        return sitk_to_matrix(tx, path)
    return lambda points: np.array([tx.TransformPoint([float(v) for v in p]) for p in points], dtype=np.float64)


def read_sitk_transform(path: PathLike):
    """The SimpleITK transform stored in an ITK transform file (linear or not), checked 3-D."""
    return _read_sitk(existing_file(path, "transform"))


def displacement_fields(tx) -> list:
    """The displacement fields (3-channel LPS Images) inside a SimpleITK transform: itself, or
    the members of a composite, in the order the composite stores them."""
    import SimpleITK as sitk

    from ..spatial import Image

    members = [tx]
    if tx.GetTransformEnum() == sitk.sitkComposite:
        composite = sitk.CompositeTransform(tx)
        members = [composite.GetNthTransform(i) for i in range(composite.GetNumberOfTransforms())]
    return [Image.from_sitk(sitk.DisplacementFieldTransform(t).GetDisplacementField())
            for t in members if t.GetTransformEnum() == sitk.sitkDisplacementField]


def _read_sitk(path: str):
    import SimpleITK as sitk

    try:
        tx = sitk.ReadTransform(path)
    except RuntimeError as exc:
        raise InputError(f"could not read transform file '{path}': not a readable ITK transform "
                         f"file (.tfm, .txt, .h5, .mat). {itk_error_summary(exc)}") from exc
    if tx.GetDimension() != 3:
        raise InputError(f"transform file '{path}' holds a {tx.GetDimension()}-D transform; "
                         "DISA needs a 3-D transform")
    return tx


def sitk_to_matrix(tx, name: str = "transform") -> np.ndarray:
    """The 4x4 of a linear 3-D SimpleITK transform (any type, composites included)."""
    if not tx.IsLinear():
        raise InputError(_NON_LINEAR_MESSAGE.format(path=name, what=_describe(tx)))
    return _affine_from_point_map(tx.TransformPoint, name)


def _affine_from_point_map(transform_point: Callable, path: str) -> np.ndarray:
    """Recover x -> A x + b from a point map, then verify it on spread-out points."""
    origin = np.array(transform_point((0.0, 0.0, 0.0)), dtype=np.float64)
    m = np.eye(4)
    for i in range(3):
        unit = [0.0, 0.0, 0.0]
        unit[i] = 1.0
        m[:3, i] = np.array(transform_point(tuple(unit)), dtype=np.float64) - origin
    m[:3, 3] = origin
    # Fixed seed: the same file always gives the same verdict.
    points = np.random.default_rng(12345).uniform(-200.0, 200.0, size=(8, 3))
    for p in points:
        got = np.array(transform_point(tuple(float(v) for v in p)), dtype=np.float64)
        want = m[:3, :3] @ p + m[:3, 3]
        scale = 1.0 + max(np.abs(p).max(), np.abs(want).max())
        if not np.all(np.isfinite(got)) or np.abs(got - want).max() > 1e-6 * scale:
            raise InputError(_NON_LINEAR_MESSAGE.format(
                path=path, what="points do not move by one affine map"))
    if not np.all(np.isfinite(m)) or abs(np.linalg.det(m[:3, :3])) < 1e-12:
        raise InputError(f"transform file '{path}' holds a singular or non-finite transform")
    return m


def _describe(tx) -> str:
    try:
        import SimpleITK as sitk

        if tx.GetTransformEnum() == sitk.sitkComposite:
            comp = sitk.CompositeTransform(tx)
            names = [comp.GetNthTransform(i).GetName() for i in range(comp.GetNumberOfTransforms())]
            return "CompositeTransform of " + ", ".join(names)
        return tx.GetName()
    except Exception:  # only used for a message; never hide the real error behind this one
        return "unknown type"


# RAS / LPS --------------------------------------------------------------------------------------
def write_resampled(moving_path: PathLike, fixed_path: PathLike, matrix, out_path: PathLike) -> None:
    """The moving image file resampled on the fixed file's grid through ``matrix`` (fixed ->
    moving LPS; or any SimpleITK transform, such as a probe-pressure composite), written with
    SimpleITK; voxels outside the moving image are 0."""
    import SimpleITK as sitk

    fixed = sitk.ReadImage(os.fspath(fixed_path))
    moving = sitk.ReadImage(os.fspath(moving_path))
    tx = matrix if hasattr(matrix, "TransformPoint") else matrix_to_sitk(matrix)
    out = sitk.Resample(moving, fixed, tx, sitk.sitkLinear, 0.0, moving.GetPixelID())
    os.makedirs(os.path.dirname(os.path.abspath(os.fspath(out_path))), exist_ok=True)
    sitk.WriteImage(out, os.fspath(out_path))


def itk_to_slicer_to_parent_ras(m) -> np.ndarray:
    """ITK resampling matrix (fixed LPS -> moving LPS) -> Slicer "to parent" RAS matrix.

    The to-parent matrix moves the moving image onto the fixed one (moving RAS -> fixed RAS):
    ``inv(flip @ m @ flip)``.
    """
    return np.linalg.inv(lps_to_ras_matrix(_as_matrix(m)))


def slicer_to_parent_ras_to_itk(m) -> np.ndarray:
    """Slicer "to parent" RAS matrix -> ITK resampling matrix (fixed LPS -> moving LPS)."""
    return ras_to_lps_matrix(np.linalg.inv(_as_matrix(m)))
