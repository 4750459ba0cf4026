"""The global search samples rotations and translations in one physical parameterization for
every transform model: an affine search really rotates (it once varied one matrix row by 10%
and never rotated), and a seed gives the same poses every time. Its schedule (score many poses,
refine the best few briefly, re-score them one level finer) recovers a synthetic ultrasound-MR
pair perturbed by 35 degrees and 40 mm that a local search misses, the same every run; presets
set its ranges; progress names the stage, the starts done and the best similarity; exact LC²
stays local."""
from __future__ import annotations

import io
import re
import time

import numpy as np
import pytest
import torch

from disa.errors import InputError
from disa.optim import PoseSampler
from disa.registration import register
from disa.registration.defaults import DEFAULTS, SEARCH_PRESETS
from disa.registration.options import search_ranges
from disa.registration.pipeline import LC2_LOCAL_NOTE
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


# A synthetic ultrasound-MR pair perturbed by 35 degrees and 40 mm: beyond the reach of a local
# search, within that of the global one (registration/search.py). Small on purpose (2 mm voxels,
# working levels 8 and 4 mm) so that the whole file runs in well under a minute on one thread.
ROTATION = 35.0 * np.array([-28.79, -6.37, -18.85]) / np.linalg.norm([-28.79, -6.37, -18.85])   # degrees
TRANSLATION = 40.0 * np.array([35.88, 2.38, -17.52]) / np.linalg.norm([35.88, 2.38, -17.52])  # mm
PAIR_OPTIONS = dict(metric="mind", spacings=[8.0, 4.0], threads=1, seed=0)


def ultrasound_mr_pair(shape=(72, 84, 66), spacing=2.0, seed=0):
    """A brain-like phantom (144 x 168 x 132 mm): white/grey matter folds, CSF pockets and bright
    nuclei in an irregular brain, rendered as a T2-like MR (moving) and as simulated ultrasound
    (fixed: a fan from a probe on the brain surface, speckle, boundary reflections and depth
    attenuation, by ``disa.train.synth``; cut to the brain). Returns (fixed, moving, fan mask)."""
    from scipy import ndimage

    from disa.train.synth import Template, appearance, simulate_ultrasound, tissues_from_t1

    rng = np.random.default_rng(seed)
    size = np.array(shape, dtype=np.float32)
    rel = (np.indices(shape).astype(np.float32) - ((size - 1) / 2)[:, None, None, None]) / \
        (0.45 * size)[:, None, None, None]
    bumps = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 6.0)
    brain = np.sqrt((rel ** 2).sum(0)) + 8.0 * bumps < 1.0
    folds = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 4.0)
    t1 = np.where(folds > 0, 0.8, 0.5).astype(np.float32)
    for _ in range(10):
        centre, width = rng.uniform(-0.6, 0.6, 3), rng.uniform(0.1, 0.25)
        t1[((rel - centre[:, None, None, None]) ** 2).sum(0) < width * width] = rng.choice([0.1, 1.0])
    t1 = ndimage.gaussian_filter(t1, 0.7) * brain
    template = Template("phantom", t1, tissues_from_t1(t1, brain), None, brain)
    us, fan = simulate_ultrasound(template, rng)
    fan &= brain
    mr = appearance(template, "t2", rng)
    origin = -spacing * (np.array(shape[::-1]) - 1) / 2
    fixed = Image.from_array(np.where(fan, us, 0).astype(np.float32), spacing=(spacing,) * 3, origin=origin)
    return fixed, Image.from_array(mr, spacing=(spacing,) * 3, origin=origin), fan


@pytest.fixture(scope="module")
def perturbed_pair(one_thread):
    fixed, moving, fan = ultrasound_mr_pair()
    truth = rigid_matrix(ROTATION, TRANSLATION, moving.center())
    points = np.c_[np.argwhere(fan)[::20][:, ::-1] * 2.0 + fixed.origin, np.ones(int(np.ceil(fan.sum() / 20)))]

    def error(matrix):
        """Mean distance (mm) between where ``matrix`` and the truth map the fan's points."""
        return float(np.linalg.norm((matrix - truth) @ points.T, axis=0).mean())

    return fixed, move_image(moving, truth), truth, error


@pytest.fixture(scope="module")
def found(perturbed_pair):
    fixed, moved, _, _ = perturbed_pair
    messages = []
    started = time.perf_counter()
    result = register(fixed, moved, search="global", search_preset="abdomen",
                      progress=lambda stage, fraction, message: messages.append((stage, fraction, message)),
                      **PAIR_OPTIONS)
    return result, messages, time.perf_counter() - started


def test_global_search_recovers_35_degrees_and_40_mm_that_a_local_search_misses(perturbed_pair, found):
    fixed, moved, truth, error = perturbed_pair
    started = time.perf_counter()
    local = register(fixed, moved, search="local", **PAIR_OPTIONS)
    local_seconds = time.perf_counter() - started
    # What the measure itself allows: a local search started at the truth.
    floor = register(fixed, moved, search="local", initial=truth, **PAIR_OPTIONS)
    result, _, seconds = found
    print(f"start {error(np.eye(4)):.1f} mm; local {error(local.matrix):.2f} mm in {local_seconds:.1f} s; "
          f"global {error(result.matrix):.2f} mm in {seconds:.1f} s; from the truth {error(floor.matrix):.2f} mm")
    assert error(np.eye(4)) > 30.0
    assert error(local.matrix) > 10.0, "the test needs a perturbation beyond the local capture range"
    # Converged (the capture benchmark's stricter criterion is 5 mm), and about as close as the
    # measure allows on these 8 and 4 mm levels: a local search from the truth ends 2.1 mm off.
    assert error(result.matrix) < 5.0
    assert error(result.matrix) < error(floor.matrix) + 2.0


def test_the_same_seed_gives_the_same_matrix(perturbed_pair, found):
    fixed, moved, _, _ = perturbed_pair
    again = register(fixed, moved, search="global", search_preset="abdomen", **PAIR_OPTIONS)
    assert np.array_equal(again.matrix, found[0].matrix)


def test_progress_names_the_stage_the_starts_done_and_the_best_similarity(found):
    _, messages, _ = found
    stages = list(dict.fromkeys(stage for stage, _, _ in messages))
    assert stages == ["search 1/2 at 8 mm: scoring", "search 1/2 at 8 mm: refining", "search 2/2 at 8 mm: scoring",
                      "search 2/2 at 8 mm: refining", "search: re-scoring at 4 mm", "level 1/2 (8 mm)",
                      "level 2/2 (4 mm)", "done"]
    fractions = [f for _, f, _ in messages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    scoring = [m for stage, _, m in messages if stage == stages[0]]
    assert scoring[0].startswith("search 1/2 at 8 mm: scoring: 0/500 starts")
    assert any("/500 starts, best similarity -0." in m for m in scoring)
    refining = [m for stage, _, m in messages if stage == stages[1]]
    assert re.match(r"search 1/2 at 8 mm: refining: \d+/\d+ starts, \d+ evaluations, best similarity",
                    refining[-1])


def test_presets_set_the_sampled_ranges():
    assert SEARCH_PRESETS == {"brain": (10.0, 25.0), "abdomen": (40.0, 150.0)}
    assert DEFAULTS.search_preset == "brain" and DEFAULTS.search_samples == 500
    assert search_ranges("brain") == (10.0, 25.0) and search_ranges("Abdomen") == (40.0, 150.0)
    assert search_ranges("abdomen", rotation=20.0) == (20.0, 150.0)  # an explicit range overrides
    assert search_ranges("brain", translation=0.0) == (10.0, 0.0)
    with pytest.raises(InputError, match="unknown search preset 'liver'; choose one of brain, abdomen"):
        search_ranges("liver")
    spans = {}
    for name in SEARCH_PRESETS:
        offsets = PoseSampler(500, *search_ranges(name)).offsets()
        spans[name] = np.abs(offsets[:, :3]).max(), np.abs(offsets[:, 3:]).max()
        assert spans[name][0] <= SEARCH_PRESETS[name][0] and spans[name][1] <= SEARCH_PRESETS[name][1]
        assert spans[name][0] > 0.95 * SEARCH_PRESETS[name][0] and spans[name][1] > 0.95 * SEARCH_PRESETS[name][1]
    assert spans["abdomen"][0] > 3 * spans["brain"][0] and spans["abdomen"][1] > 5 * spans["brain"][1]


def test_the_command_line_takes_a_preset_and_shows_every_stage(capsys):
    from disa.cli import TerminalProgress, build_parser

    base = ["register", "--fixed", "f.nii", "--moving", "m.nii", "--output-transform", "o.tfm"]
    args = build_parser().parse_args(base)
    assert (args.search_preset, args.search_rotation, args.search_translation) == ("brain", None, None)
    args = build_parser().parse_args(base + ["--search-preset", "abdomen", "--search-rotation", "20"])
    assert (args.search_preset, args.search_rotation, args.search_translation) == ("abdomen", 20.0, None)
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(base + ["--search-preset", "liver"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "choose from 'brain', 'abdomen'" in err

    stream = io.StringIO()  # not a terminal: a line at every new stage, else one a second
    show = TerminalProgress(stream)
    show("note", 0.0, "lc2: local search from the start pose")
    show("search: scoring at 8 mm", 0.0, "search: scoring at 8 mm: 0/500 starts, 0.1 s")
    show("search: scoring at 8 mm", 0.05, "search: scoring at 8 mm: 10/500 starts, best similarity -0.2, 0.2 s")
    show("search: refining at 8 mm", 0.1, "search: refining at 8 mm: 0/20 starts, 0 evaluations, 0.3 s")
    show("done", 1.0, "similarity -0.1, 1.0 s")
    assert stream.getvalue().splitlines() == [
        "disa: lc2: local search from the start pose", "[  0%] search: scoring at 8 mm: 0/500 starts, 0.1 s",
        "[ 10%] search: refining at 8 mm: 0/20 starts, 0 evaluations, 0.3 s", "[100%] similarity -0.1, 1.0 s"]


def test_exact_lc2_searches_locally():
    """Exact LC² stays a local search (BOBYQA), as in the DISA paper: a global search asked for
    (the default) runs the local one and says so."""
    image = striped_image(size=20)
    moved = move_image(image, rigid_matrix((0.0, 0.0, 4.0), (2.0, 0.0, 0.0), image.center()))
    options = dict(metric="lc2", spacings=[4.0], max_evals=15, threads=1)
    notes = []
    asked = register(image, moved, search="global", progress=lambda s, f, m: notes.append(m) if s == "note" else None,
                     **options)
    local = register(image, moved, search="local", **options)
    assert np.array_equal(asked.matrix, local.matrix)
    assert notes == [LC2_LOCAL_NOTE] and "lc2: local search" in notes[0]


def test_a_single_disa_level_searches_on_every_second_descriptor_and_re_scores_on_all(perturbed_pair):
    """With no coarser level (DISA on content up to 48 mm), the search rounds run on a stand-in
    holding every second fixed descriptor per axis, against the same moving descriptors, and the
    refined poses are re-scored on the level itself before the local optimizations."""
    from disa.features.descriptors import DescriptorCache
    from disa.features.mind_oracle import MINDOracle
    from disa.similarity.disa import DISA

    fixed, moved, truth, error = perturbed_pair
    measure = DISA(model=MINDOracle(), cache=DescriptorCache())
    level = measure.prepare(fixed, moved)
    thin = level.for_search()
    assert thin is not level and thin.for_search() is thin
    assert np.allclose(thin.fixed_grid.spacing, 2 * level.fixed_grid.spacing)
    # every second descriptor of all the weighted points (the level itself scores a sub-lattice
    # of at most DISA's max_points)
    every = DISA(model=MINDOracle(), cache=DescriptorCache(), max_points=None).prepare(fixed, moved)
    assert len(level.points) < len(every.points) and 1 / 12 < len(thin.points) / len(every.points) < 1 / 5
    coarse = measure.at_scale(0.5).prepare(fixed, moved)  # a stride-4 level is its own stand-in
    assert coarse.for_search() is coarse

    # Started 11 degrees and 18 mm from the truth, one 4 mm level: found, through the re-scoring stage.
    start = np.linalg.inv(rigid_matrix((9.0, -5.0, 4.0), (15.0, -8.0, 6.0), moved.center())) @ truth
    stages = []
    result = register(fixed, moved, metric=measure, initial=start, spacings=[4.0], threads=1, seed=0,
                      progress=lambda stage, fraction, message: stages.append(stage))
    print(f"start {error(start):.1f} mm -> {error(result.matrix):.2f} mm")
    assert "search: re-scoring at 4 mm" in stages
    assert error(start) > 15.0 and error(result.matrix) < 3.0
