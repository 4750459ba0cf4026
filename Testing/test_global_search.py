"""The global search samples rotations and translations in one physical parameterization for
every transform model: an affine search really rotates (it once varied one matrix row by 10%
and never rotated), and a seed gives the same poses every time."""
from __future__ import annotations

import numpy as np
import torch

from disa.optim import PoseSampler
from disa.registration import register
from disa.sample_data import move_image, rigid_matrix
from disa.spatial import Image
from disa.transforms import Affine, Rigid


def test_affine_poses_are_the_rigid_poses():
    centre = np.array([3.0, -5.0, 12.0])
    sampler = PoseSampler(n=64, rotation_deg=20.0, translation_mm=15.0, seed=3)
    rigid = Rigid(centre).matrix(torch.as_tensor(sampler.poses(Rigid(centre), np.zeros(6))))
    affine = Affine(centre).matrix(torch.as_tensor(sampler.poses(Affine(centre), np.zeros(12))))
    assert torch.allclose(rigid, affine, atol=1e-12)
    angles = np.degrees(np.arccos(np.clip((np.einsum("bii->b", affine[:, :3, :3].numpy()) - 1) / 2, -1, 1)))
    assert angles[0] == 0.0 and angles.max() > 15.0  # the start first, then real rotations


def test_poses_start_from_the_given_pose_and_repeat_for_a_seed():
    model = Affine(np.zeros(3))
    start = model.params_from_matrix(rigid_matrix((5.0, 0.0, 0.0), (1.0, 2.0, 3.0), np.zeros(3)))
    a = PoseSampler(n=32, seed=11).poses(model, start)
    assert np.array_equal(a, PoseSampler(n=32, seed=11).poses(model, start))
    assert not np.array_equal(a, PoseSampler(n=32, seed=12).poses(model, start))
    assert np.allclose(a[0], start)
    # per-axis ranges: only the rotation about z and the x translation vary
    offsets = PoseSampler(n=32, rotation_deg=(0, 0, 10), translation_mm=(5, 0, 0)).offsets()
    assert np.all(offsets[:, [0, 1, 4, 5]] == 0) and np.abs(offsets[:, 2]).max() > 5


def striped_image(size: int = 28, spacing: float = 2.0, wavelength: float = 8.0) -> Image:
    """Stripes inside a few asymmetric blobs: many local optima in rotation, one global one."""
    rng = np.random.default_rng(0)
    c = spacing * (np.arange(size) - (size - 1) / 2)
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    envelope = np.zeros_like(x)
    for _ in range(6):
        p, w = rng.uniform(-20, 20, 3), rng.uniform(8, 14)
        envelope += rng.uniform(0.5, 1.5) * np.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / (2 * w * w))
    stripes = np.sin(2 * np.pi * x / wavelength) * np.sin(2 * np.pi * y / (1.3 * wavelength))
    data = 0.5 * envelope + stripes * (envelope > 0.05)
    return Image.from_array(data.astype(np.float32), spacing=(spacing,) * 3, origin=-np.full(3, c[-1]))


def test_affine_global_search_recovers_a_25_degree_rotation_that_local_search_misses():
    image = striped_image()
    truth = rigid_matrix((0.0, 0.0, 25.0), (0.0, 0.0, 0.0), image.center())
    moved = move_image(image, truth)
    corners = np.array([[x, y, z, 1.0] for x in (-20, 20) for y in (-20, 20) for z in (-20, 20)])

    def error(result):
        return np.abs((result.matrix - truth) @ corners.T).max()

    options = dict(metric="ncc", transform="affine", spacings=[2.0], max_evals=100, threads=1)
    local = register(image, moved, search="local", **options)
    found = register(image, moved, search="global", search_rotation=30.0, search_translation=0.0,
                     search_starts=2, **options)
    assert error(local) > 5.0, "the test needs a rotation beyond the local capture range"
    assert error(found) < 1.0
