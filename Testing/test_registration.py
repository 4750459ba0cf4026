"""Registration recovers known rigid perturbations of RESECT Case 24 (ultrasound fixed, MR
moving), with LC² + BOBYQA and MIND-SSC + L-BFGS; bad inputs and cancellation fail cleanly."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from disa.errors import CancelledError, InputError
from disa.evaluate import read_landmarks, registration_errors, transform_points
from disa.registration import register
from disa.sample_data import case24, move_image, random_rigid, rigid_matrix
from disa.spatial import Image, load_image


@pytest.fixture(autouse=True)
def one_thread_per_run(monkeypatch):
    """Registrations here run on one CPU thread (DISA_THREADS, the default of every entry point):
    on a shared 2-core machine two threads contend badly (one LC² evaluation took 0.7-2.5 s with
    two against 50 ms with one)."""
    monkeypatch.setenv("DISA_THREADS", "1")


@pytest.fixture(scope="module")
def case():
    c = case24()
    return (load_image(c.fixed), load_image(c.moving), read_landmarks(c.fixed_landmarks),
            read_landmarks(c.moving_landmarks))


def perturbed(case, seed, max_deg=10.0, max_mm=10.0):
    fixed, moving, fixed_lm, moving_lm = case
    matrix = random_rigid(np.random.default_rng(seed), max_deg, max_mm, moving.center())
    return fixed, move_image(moving, matrix), fixed_lm.points, transform_points(matrix, moving_lm.points)


# Exact LC² searches locally (the global search is for differentiable measures): perturbations 11 and
# 12 (14.6 and 9.0 mm) are beyond its reach from the identity (15.6 and 6.8 mm after), 1 and 2 are not.
@pytest.mark.parametrize("metric,seed,bound", [("lc2", 1, 3.5), ("lc2", 2, 3.5), ("mind", 11, 2.5), ("mind", 13, 2.5)])
def test_recovers_known_rigid_perturbation(case, metric, seed, bound):
    fixed, moved, fixed_pts, moved_pts = perturbed(case, seed)
    before = registration_errors(np.eye(4), fixed_pts, moved_pts).mean()
    result = register(fixed, moved, metric=metric, transform="rigid", seed=0)
    after = registration_errors(result.matrix, fixed_pts, moved_pts)
    assert before > 6.0, "the perturbation must be a real misalignment"
    assert np.median(after) < bound, f"{metric}: TRE {after.mean():.2f} mm (before {before:.2f})"
    assert result.final_similarity > result.initial_similarity
    assert result.transform == "rigid" and result.matrix.shape == (4, 4)
    rot = result.matrix[:3, :3]
    np.testing.assert_allclose(rot.T @ rot, np.eye(3), atol=1e-9)


def test_affine_registration_with_an_initial_transform(case):
    """An initial transform is composed in: starting from the true perturbation's neighbourhood,
    affine MIND stays near the truth and the output already contains the initial transform."""
    fixed, moving, fixed_lm, moving_lm = case
    truth = rigid_matrix((6.0, -4.0, 3.0), (8.0, -5.0, 6.0), moving.center())
    moved = move_image(moving, truth)
    moved_pts = transform_points(truth, moving_lm.points)
    initial = truth @ rigid_matrix((2.0, 1.5, -2.0), (3.0, -3.0, 2.5), fixed.center())
    result = register(fixed, moved, metric="mind", transform="affine", initial=initial, search="local")
    before = registration_errors(initial, fixed_lm.points, moved_pts).mean()
    after = registration_errors(result.matrix, fixed_lm.points, moved_pts).mean()
    assert before > 4.5 and after < 3.0
    assert result.params.shape == (12,)


def test_no_overlap_is_refused(case):
    fixed, moving, _, _ = case
    far = move_image(moving, rigid_matrix((0, 0, 0), (300.0, 0, 0), moving.center()))
    with pytest.raises(InputError, match="overlap"):
        register(fixed, far, metric="mind", search="local")


def test_bad_options_are_refused(case):
    fixed, moving, _, _ = case
    with pytest.raises(InputError, match="unknown similarity"):
        register(fixed, moving, metric="lc3")
    with pytest.raises(InputError, match="unknown transform"):
        register(fixed, moving, metric="mind", transform="bspline-ish")
    with pytest.raises(InputError, match="initial transform"):
        register(fixed, moving, metric="mind", initial=np.zeros((4, 4)))
    with pytest.raises(InputError, match="sample points"):
        register(fixed, moving, metric="mind", sample_points=10)
    with pytest.raises(InputError, match="moving margin"):
        register(fixed, moving, metric="mind", moving_margin=-1.0)


def test_zero_variance_and_nan_images_are_refused(case):
    fixed, moving, _, _ = case
    flat = Image(moving.data * 0 + 3.0, moving.spacing, moving.origin, moving.direction)
    with pytest.raises(InputError, match="constant intensity"):
        register(fixed, flat, metric="mind")
    nan = moving.data.clone()
    nan[0, 5, 5, 5] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        register(Image(nan, moving.spacing, moving.origin, moving.direction), moving)


def test_cancel_stops_the_run(case):
    fixed, moving, _, _ = case
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(CancelledError):
        register(fixed, moving, metric="lc2", cancel=cancel)
    assert len(calls) == 4


def test_global_search_checks_cancel_between_small_batches():
    """A cancel must not wait for a whole chunk of poses (seconds of LC² on a busy CPU)."""
    import torch

    from disa.optim import Monitor, score_poses

    scored = []

    def similarity(params):
        scored.append(len(params))
        return torch.zeros(len(params), dtype=torch.float64)

    monitor = Monitor(cancel=lambda: len(scored) > 0)
    with pytest.raises(CancelledError):
        score_poses(similarity, np.zeros((256, 6)), monitor=monitor)
    assert scored == [8]
    scored.clear()
    scores = score_poses(similarity, np.zeros((100, 6)))
    assert sum(scored) == 100 and max(scored) <= 8 and scores.shape == (100,)


def test_progress_reports_stages_and_finishes(case):
    fixed, moving, _, _ = case
    seen = []
    register(fixed, moving, metric="mind", search="local", max_evals=10,
             progress=lambda stage, frac, msg: seen.append((stage, frac)))
    fractions = [f for _, f in seen]
    assert seen[-1][0] == "done" and fractions[-1] == 1.0
    assert all(0.0 <= f <= 1.0 for f in fractions) and fractions == sorted(fractions)


def test_disa_levels_keep_48_coarse_voxels_across_the_content():
    """DISA-LC² describes its fine level at 1 mm and its coarse level (stride 4, where the global
    search runs) no coarser than the content over 48 voxels or twice the fine spacing: a 70 mm
    fan gets 1.46 and 1 mm, a 10 cm one 2 and 1 mm. Content under 64 mm across gets the fixed
    image's own spacing down to 0.5 mm (0.83 and 0.5 mm for a 40 mm fan at 0.5 mm), also when
    the moving image is coarser, unless the moving image would hold more than 2^24 voxels there
    (a whole-head MR: one 1 mm level, as before); a 1 mm fixed image keeps one 1 mm level.
    Other measures keep twice their fine spacing and never go below either image's voxels."""
    from disa.registration.pipeline import default_spacings
    from disa.similarity.disa import DISA
    from disa.similarity.mind import MIND
    from disa.spatial.image import VolumeInfo

    grid = VolumeInfo((256, 256, 256), (0.5, 0.5, 0.5))  # a 128 mm box; the content extents vary
    mr = VolumeInfo((128, 128, 128), (1.0, 1.0, 1.0))  # 2^24 voxels at 0.5 mm: still described there
    head = VolumeInfo((256, 256, 180), (1.0, 1.0, 1.0))
    thin_head = VolumeInfo((512, 512, 180), (0.45, 0.45, 1.0))
    fine = VolumeInfo((64, 64, 64), (0.3, 0.3, 0.3))
    assert default_spacings(grid, grid, DISA, 40.0) == [0.83, 0.5]
    assert default_spacings(grid, mr, DISA, 40.0) == [0.83, 0.5]
    assert default_spacings(fine, mr, DISA, 19.2) == [0.5]
    assert default_spacings(grid, head, DISA, 40.0) == [1.0]
    assert default_spacings(grid, thin_head, DISA, 40.0) == [1.0]
    assert default_spacings(mr, mr, DISA, 40.0) == [1.0]
    assert default_spacings(grid, grid, DISA, 70.0) == [1.46, 1.0]
    assert default_spacings(grid, grid, DISA, 100.0) == [2.0, 1.0]
    assert default_spacings(grid, grid, MIND, 48.0) == [2.0, 1.0]
    assert default_spacings(grid, grid, MIND, 24.0) == [1.0, 0.5]
    assert default_spacings(grid, mr, MIND, 24.0) == [2.0, 1.0]


def test_moving_margin_reads_only_the_reachable_part_of_the_moving_image(case, monkeypatch):
    """``moving_margin``: the moving levels are built from the moving image within that many mm of
    the fixed box at the start pose (widened by a global search's ranges), so voxels beyond it
    cannot change the result: shuffled there (same intensities, so the same normalization), the
    registration ends where it did (without the margin it does not)."""
    import disa.registration.pipeline as pipeline
    from disa.registration.search import search_reach
    from disa.spatial.image import box_corners

    fixed, moving, _, _ = case
    x0, y0, z0 = 30, 30, 25
    part = Image(fixed.data[:, z0:z0 + 45, y0:y0 + 50, x0:x0 + 50], fixed.spacing,
                 (fixed.index_to_world() @ [x0, y0, z0, 1.0])[:3], fixed.direction)
    start = rigid_matrix((2.0, -1.5, 1.0), (1.5, 1.0, -1.0), part.center())
    margin = 4.0
    seen = []
    real = pipeline.moving_level
    monkeypatch.setattr(pipeline, "moving_level", lambda m, *a, **k: seen.append(m.extent()) or real(m, *a, **k))
    # moving voxels beyond the margin (plus a voxel) around the box the fixed image covers at the start
    corners = np.c_[box_corners(part), np.ones(8)] @ (moving.world_to_index() @ start).T
    pad = (margin + 1.0) / moving.spacing
    low, high = corners[:, :3].min(0) - pad, corners[:, :3].max(0) + pad
    z, y, x = np.meshgrid(*[np.arange(n) for n in moving.shape], indexing="ij")
    far = (x < low[0]) | (x > high[0]) | (y < low[1]) | (y > high[1]) | (z < low[2]) | (z > high[2])
    assert 0.3 < far.mean() < 0.9
    data = moving.data[0].numpy().copy()
    data[far] = np.random.default_rng(0).permutation(data[far])
    shuffled = moving.same_geometry(torch.from_numpy(data)[None], moving.mask)

    def runs(margin_mm):
        return [register(part, m, metric="mind", search="local", initial=start, moving_margin=margin_mm,
                         spacings=[2.0, 1.0]).matrix for m in (moving, shuffled)]

    whole = runs(None)
    assert np.abs(whole[1] - whole[0]).max() > 0.1  # the whole moving image is read: the shuffle shows
    seen.clear()
    cut = runs(margin)
    np.testing.assert_allclose(cut[1], cut[0], atol=1e-4)
    box = np.ptp(corners[:, :3], 0) * moving.spacing + 2 * margin + 3 * moving.spacing  # floor, ceil, end
    assert all(np.all(e <= box) for e in seen) and len(seen) == 4
    seen.clear()
    register(part, moving, metric="mind", search="global", search_rotation=5.0, search_translation=3.0,
             search_samples=16, search_starts=1, initial=start, moving_margin=margin, max_evals=5, spacings=[2.0])
    wider = box + 2 * search_reach(box_corners(part), part.center(), 5.0, 3.0)
    assert any(np.any(e > box) for e in seen) and all(np.all(e <= wider) for e in seen)
