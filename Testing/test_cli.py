"""The ``disa`` command line: register writes an ITK file that maps fixed to moving points and
includes the initial transform, evaluate matches the Python API, demo recovers the perturbation,
bad input exits with a clear message and writes nothing."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from disa.cli import main
from disa.evaluate import error_statistics, read_landmarks, registration_errors, transform_points
from disa.sample_data import case24, move_image, rigid_matrix
from disa.spatial import load_image, save_image
from disa.transforms import read_itk_transform, write_itk_transform


@pytest.fixture(autouse=True)
def one_thread_per_run(monkeypatch):
    """Registrations here run on one CPU thread (DISA_THREADS, the default of every entry point):
    on a shared 2-core machine two threads contend badly (one LC² evaluation took 0.7-2.5 s with
    two against 50 ms with one)."""
    monkeypatch.setenv("DISA_THREADS", "1")


@pytest.fixture(scope="module")
def moved_case(tmp_path_factory):
    """Case 24 with the MR moved by a known rigid transform, written to disk."""
    tmp = tmp_path_factory.mktemp("case")
    c = case24()
    moving = load_image(c.moving)
    truth = rigid_matrix((4.0, -5.0, 3.0), (7.0, -6.0, 5.0), moving.center())
    save_image(move_image(moving, truth), tmp / "moved.nii.gz")
    moved_pts = transform_points(truth, read_landmarks(c.moving_landmarks).points)
    return c, tmp, truth, read_landmarks(c.fixed_landmarks).points, moved_pts


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["register", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--fixed", "--moving", "--output-transform", "--initial-transform", "--metric", "--transform",
                   "--device", "--seed", "--search", "--spacings", "--output-volume"):
        assert option in text
    for sub in ("evaluate", "demo", "benchmark"):
        with pytest.raises(SystemExit):
            main([sub, "--help"])
        assert "usage: disa " + sub in capsys.readouterr().out


def test_register_writes_fixed_to_moving_transform_and_resampled_volume(moved_case):
    c, tmp, truth, fixed_pts, moved_pts = moved_case
    out = tmp / "out" / "reg.h5"
    vol = tmp / "out" / "resampled.nii.gz"
    proc = subprocess.run([sys.executable, "-m", "disa", "register", "--fixed", str(c.fixed), "--moving",
                           str(tmp / "moved.nii.gz"), "--output-transform", str(out), "--metric", "mind",
                           "--output-volume", str(vol), "--seed", "1", "--search", "local"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "mind rigid" in proc.stdout and "%" in proc.stderr  # result line and progress
    matrix = read_itk_transform(out)
    assert np.median(registration_errors(matrix, fixed_pts, moved_pts)) < 2.5
    # SimpleITK reads the same file and maps points the same way (resampling direction).
    tx = sitk.ReadTransform(str(out))
    p = fixed_pts[0]
    np.testing.assert_allclose(tx.TransformPoint(p.tolist()), (matrix @ np.append(p, 1))[:3], atol=1e-6)
    resampled = sitk.ReadImage(str(vol))
    fixed = sitk.ReadImage(str(c.fixed))
    assert resampled.GetSize() == fixed.GetSize()
    np.testing.assert_allclose(resampled.GetDirection(), fixed.GetDirection(), atol=1e-6)


def test_register_includes_the_initial_transform(moved_case):
    c, tmp, truth, fixed_pts, moved_pts = moved_case
    init = tmp / "init.tfm"
    write_itk_transform(init, truth, kind="rigid")
    out = tmp / "from_init.tfm"
    code = main(["register", "--fixed", str(c.fixed), "--moving", str(tmp / "moved.nii.gz"), "--output-transform",
                 str(out), "--initial-transform", str(init), "--metric", "mind", "--search", "local", "--quiet"])
    assert code == 0
    matrix = read_itk_transform(out)
    # Starting at the truth, the result stays there: the output contains the initial transform.
    assert np.median(registration_errors(matrix, fixed_pts, moved_pts)) < 2.5
    assert np.abs(matrix - truth).max() < 2.0


def test_evaluate_matches_python_api(moved_case, capsys, tmp_path):
    c, tmp, truth, fixed_pts, moved_pts = moved_case
    tfm = tmp_path / "truth.h5"
    write_itk_transform(tfm, np.eye(4))
    js = tmp_path / "stats.json"
    assert main(["evaluate", "--transform", str(tfm), "--fixed-landmarks", c.fixed_landmarks,
                 "--moving-landmarks", c.moving_landmarks, "--json", str(js)]) == 0
    out = capsys.readouterr().out
    expected = error_statistics(registration_errors(np.eye(4), read_landmarks(c.fixed_landmarks),
                                                    read_landmarks(c.moving_landmarks)))
    assert f"mean {expected['mean']:.2f}" in out
    assert json.loads(js.read_text())["statistics"]["median"] == pytest.approx(expected["median"])


def test_demo_recovers_the_known_perturbation(tmp_path, capsys):
    assert main(["demo", "--output-dir", str(tmp_path), "--quiet"]) == 0
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert summary["before"]["mean"] > 8.0
    assert summary["after"]["median"] < 3.5
    for name in ("registration.h5", "Case24-T1-registered.nii.gz", "Case24-T1-perturbed.nii.gz"):
        assert (tmp_path / name).exists()
    out = capsys.readouterr().out
    assert "before registration" in out and "after registration" in out


def test_bad_input_exits_with_message_and_writes_nothing(tmp_path, capsys):
    c = case24()
    out = tmp_path / "never.h5"
    code = main(["register", "--fixed", str(tmp_path / "nope.nii.gz"), "--moving", str(c.moving),
                 "--output-transform", str(out)])
    assert code == 2
    assert "fixed image file not found" in capsys.readouterr().err
    assert not out.exists()
    code = main(["register", "--fixed", str(c.fixed), "--moving", str(c.moving), "--output-transform", str(out),
                 "--device", "cuda"] if not _cuda() else ["evaluate", "--fixed-landmarks", "x.csv",
                                                           "--moving-landmarks", "y.csv"])
    assert code == 2 and not out.exists()
    code = main(["evaluate", "--fixed-landmarks", str(c.landmarks), "--moving-landmarks", c.moving_landmarks])
    assert code == 2 and ":1" in capsys.readouterr().err


def _cuda():
    import torch

    return torch.cuda.is_available()
