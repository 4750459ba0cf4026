"""RAS <-> LPS (disa/spatial/frames.py): points, transform matrices and IJK matrices of oblique
geometries convert consistently with each other and round-trip exactly."""
from __future__ import annotations

import numpy as np
import pytest

from disa.sample_data import rigid_matrix
from disa.spatial.frames import (lps_to_ras_matrix, lps_to_ras_output, lps_to_ras_points, ras_to_lps_matrix,
                                 ras_to_lps_output, ras_to_lps_points)

#: The flip written out once, independently of the module under test.
F4 = np.diag([-1.0, -1.0, 1.0, 1.0])


def oblique_ijk_to_ras(rng) -> np.ndarray:
    """IJK -> RAS of an oblique, anisotropic grid (rotations of 20-35 degrees about each axis)."""
    m = np.eye(4)
    m[:3, :3] = rigid_matrix((20.0, -35.0, 25.0), (0.0, 0.0, 0.0), np.zeros(3))[:3, :3] @ np.diag([0.7, 1.1, 2.5])
    m[:3, 3] = rng.uniform(-80, 80, 3)
    return m


def homogeneous(points):
    return np.c_[points, np.ones(len(points))]


def test_points_round_trip_and_flip_x_and_y():
    p = np.random.default_rng(0).uniform(-100, 100, size=(7, 3))
    lps = ras_to_lps_points(p)
    np.testing.assert_array_equal(lps, p * [-1, -1, 1])
    np.testing.assert_array_equal(lps_to_ras_points(lps), p)  # exact: only signs change
    assert ras_to_lps_points(p[0]).shape == (3,) and lps is not p
    with pytest.raises(ValueError, match="3 coordinates"):
        ras_to_lps_points(np.zeros((4, 2)))


def test_transform_matrices_move_points_the_same_way_in_both_frames():
    rng = np.random.default_rng(1)
    m_lps = rigid_matrix((12.0, -7.0, 30.0), (5.0, -9.0, 14.0), rng.uniform(-20, 20, 3))
    m_lps[:3, :3] = m_lps[:3, :3] @ np.array([[1.1, 0.05, 0.0], [0.0, 0.9, 0.1], [0.02, 0.0, 1.2]])  # affine
    p_lps = rng.uniform(-60, 60, size=(9, 3))
    m_ras = lps_to_ras_matrix(m_lps)
    np.testing.assert_allclose(m_ras, F4 @ m_lps @ F4, atol=0)
    # the same physical map: convert, move, convert back == move
    moved = (m_ras @ homogeneous(lps_to_ras_points(p_lps)).T).T[:, :3]
    np.testing.assert_allclose(ras_to_lps_points(moved), (m_lps @ homogeneous(p_lps).T).T[:, :3], atol=1e-12)
    np.testing.assert_array_equal(ras_to_lps_matrix(m_ras), m_lps)
    with pytest.raises(ValueError, match="4x4"):
        lps_to_ras_matrix(np.eye(3))


def test_oblique_ijk_matrices_and_directions_give_the_same_world_points():
    rng = np.random.default_rng(2)
    ijk_to_ras = oblique_ijk_to_ras(rng)
    ijk = homogeneous(rng.uniform(0, 40, size=(6, 3)))
    ijk_to_lps = ras_to_lps_output(ijk_to_ras)
    # voxel indices are not flipped; their world positions are
    np.testing.assert_allclose((ijk_to_lps @ ijk.T).T[:, :3], ras_to_lps_points((ijk_to_ras @ ijk.T).T[:, :3]),
                               atol=1e-12)
    np.testing.assert_array_equal(lps_to_ras_output(ijk_to_lps), ijk_to_ras)
    direction = ijk_to_ras[:3, :3] / np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    lps_direction = ras_to_lps_output(direction)
    np.testing.assert_allclose(lps_direction.T @ lps_direction, np.eye(3), atol=1e-12)  # still orthonormal
    assert np.linalg.det(lps_direction) == pytest.approx(np.linalg.det(direction))  # handedness kept
    # a map between frames is not the same as a matrix into a frame: mixing them up is caught
    assert not np.allclose(ras_to_lps_matrix(ijk_to_ras), ijk_to_lps)


def test_nan_stays_where_it_was():
    m = np.eye(4)
    m[0, 1] = np.nan
    out = lps_to_ras_matrix(m)
    assert np.isnan(out[0, 1]) and np.isfinite(np.delete(out.ravel(), 1)).all()
