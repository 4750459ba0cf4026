"""``disa synth``: synthetic cases with exact ground truth, written as Slicer/ITK files. Needs the
development data (templates); skipped without them."""
from __future__ import annotations

import filecmp
import json
import os

import numpy as np
import pytest
import torch

DATA = next((d for d in (os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"), "/work/shared/data")
             if os.path.isdir(os.path.join(d, "templates"))), None)
needs_data = pytest.mark.skipif(DATA is None, reason="development data (templates) not found")
torch.set_num_threads(1)

ARGS = ["--kind", "us-mr", "--template", "mni", "--seed", "7", "--rotation", "20", "--translation", "15"]


def synth(folder, *extra):
    from disa.cli import main

    return main(["synth", "--output-dir", str(folder), "--source-dir", DATA, *ARGS, *extra])


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth") / "case"
    assert synth(folder) == 0
    return folder


@needs_data
def test_the_truth_maps_the_moving_landmarks_onto_the_fixed_ones(case_dir):
    """truth.tfm, applied with SimpleITK, takes each fixed landmark onto its moving landmark
    (< 0.5 mm; exact up to rounding), 20 deg / 15 mm away from it at the identity; the files
    and case.json describe the case."""
    import SimpleITK as sitk

    from disa.evaluate import read_landmarks

    doc = json.loads((case_dir / "case.json").read_text())
    assert (doc["kind"], doc["template"], doc["seed"]) == ("us-mr", "mni", 7)
    assert doc["perturbation"]["rotation_deg"] == 20 and doc["perturbation"]["translation_mm"] == 15
    for role in ("fixed", "moving", "fixed_landmarks", "moving_landmarks", "fixed_labels", "moving_labels", "truth"):
        assert (case_dir / doc["files"][role]).is_file(), role
    fixed = read_landmarks(str(case_dir / "fixed_landmarks.fcsv")).points
    moving = read_landmarks(str(case_dir / "moving_landmarks.fcsv")).points
    tx = sitk.ReadTransform(str(case_dir / "truth.tfm"))
    mapped = np.array([tx.TransformPoint(p.tolist()) for p in fixed])
    assert np.linalg.norm(mapped - moving, axis=1).max() < 0.5
    start = np.linalg.norm(fixed - moving, axis=1).mean()
    assert start > 5.0 and abs(start - doc["initial_landmark_error_mm"]["mean"]) < 1e-6
    # the landmarks lie on the fixed content: inside the ultrasound fan
    img = sitk.ReadImage(str(case_dir / "fixed.nii.gz"))
    values = [img[img.TransformPhysicalPointToIndex(p.tolist())] for p in fixed]
    assert min(values) > 0


@needs_data
def test_the_truth_aligns_the_label_maps(case_dir):
    """The moving label map resampled through the truth matches the fixed one (Dice of the
    largest labels > 0.9); through the identity it does not."""
    import SimpleITK as sitk

    from disa.evaluate import dice

    fixed = sitk.ReadImage(str(case_dir / "fixed_labels.nii.gz"))
    moving = sitk.ReadImage(str(case_dir / "moving_labels.nii.gz"))
    tx = sitk.ReadTransform(str(case_dir / "truth.tfm"))
    f = sitk.GetArrayFromImage(fixed)
    labels = [int(v) for v, _ in sorted(zip(*np.unique(f[f > 0], return_counts=True)), key=lambda t: -t[1])[:5]]

    def mean_dice(transform):
        back = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform, sitk.sitkNearestNeighbor, 0))
        return float(np.mean(list(dice(f, back, labels).values())))

    aligned, start = mean_dice(tx), mean_dice(sitk.Transform())
    assert aligned > 0.9 and start < 0.6, (aligned, start)


@needs_data
def test_the_same_seed_writes_identical_files_and_a_case_is_never_overwritten(case_dir, tmp_path, capsys):
    again = tmp_path / "again"
    assert synth(again) == 0
    names = sorted(os.listdir(case_dir))
    assert names == sorted(os.listdir(again))
    match, mismatch, errors = filecmp.cmpfiles(case_dir, again, names, shallow=False)
    assert not mismatch and not errors, mismatch

    # an existing case: refused with one line, exit code 2, nothing changed
    before = {n: (case_dir / n).stat().st_mtime_ns for n in names}
    capsys.readouterr()
    assert synth(case_dir) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("disa: error:") and "--overwrite" in err and "\n" not in err
    assert before == {n: (case_dir / n).stat().st_mtime_ns for n in names}
    # a folder that is not a case is refused even with --overwrite
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert synth(other, "--overwrite") == 2
    assert os.listdir(other) == ["notes.txt"]
    assert "not a disa synth case" in capsys.readouterr().err
    # bad values: one line each, before any rendering
    for bad in (["--deform", "30"], ["--template", "nope"], ["--rotation", "-1"]):
        assert synth(tmp_path / "bad", *bad) == 2
        assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "bad").exists()


@needs_data
def test_a_deformed_case_has_an_exact_composite_truth(tmp_path):
    """With --deform the whole truth (displacement field, then truth.tfm) is truth_deformed.h5:
    it maps the fixed landmarks onto the moving ones; the rigid part alone does not."""
    import SimpleITK as sitk

    from disa.cases.synthetic import build_case, write_case
    from disa.evaluate import read_landmarks

    case = build_case("t2-t1", "colin27", 3, rotation=5.0, translation=5.0, deform=6.0, data_dir=DATA)
    files = write_case(case, tmp_path / "deformed")
    fixed = read_landmarks(files["fixed_landmarks"]).points
    moving = read_landmarks(files["moving_landmarks"]).points

    def error(path):
        tx = sitk.ReadTransform(path)
        return np.linalg.norm(np.array([tx.TransformPoint(p.tolist()) for p in fixed]) - moving, axis=1)

    assert error(files["truth_deformed"]).max() < 0.5
    assert error(files["truth"]).max() > 1.0
    assert case.fixed_labels is None and "fixed_labels" not in files  # colin27 has no labels


def test_acoustic_shadows_fall_behind_strong_reflectors_only():
    """Shadowing darkens voxels whose ray from the probe crosses a reflecting plate (by
    exp(-strength * thickness)), not those in front of it or whose ray passes beside it."""
    from disa.train.synth import shadow_transmission

    reflect = np.zeros((48, 48, 48), np.float32)
    reflect[20:22, 16:32, 16:32] = 1.0  # a plate 2 mm thick across the beam, 16 mm wide
    fan = np.ones_like(reflect, dtype=bool)
    t = shadow_transmission(reflect, (0.0, 24.0, 24.0), fan, 0.1)
    assert t[12, 24, 24] == pytest.approx(1.0)                      # in front of the plate
    assert t[40, 24, 24] == pytest.approx(np.exp(-0.1 * 2.0), abs=0.02)  # behind it
    assert t[40, 24, 46] == pytest.approx(1.0)                      # its ray passes beside it
    assert np.all(np.diff(t[:, 24, 24]) <= 1e-6)                     # never brighter with depth
