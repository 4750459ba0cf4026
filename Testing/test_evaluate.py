"""Tests of disa.evaluate: landmark readers/writers, TRE statistics, Dice and HD95."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from disa.errors import InputError
from disa.evaluate import (
    Landmarks,
    dice,
    error_statistics,
    format_statistics,
    hd95,
    read_landmarks,
    read_tag,
    registration_errors,
    transform_points,
    write_csv,
    write_fcsv,
    write_mrk_json,
)

CASE24_TAG = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "resect", "Case24",
                          "Case24-MRI-beforeUS.tag")
if not os.path.isfile(CASE24_TAG):
    CASE24_TAG = "/work/shared/data/resect/Case24/Case24-MRI-beforeUS.tag"


def _hand_parse_tag(path):
    """Rows of the Points section as floats, split by hand (numbers only, label dropped)."""
    with open(path) as f:
        text = f.read()
    body = text.split("Points =", 1)[1].split(";")[0]
    rows = []
    for line in body.strip().splitlines():
        rows.append([float(t) for t in line.replace('""', "").split()])
    return np.array(rows)


# --- MNI tag -----------------------------------------------------------------------------------
@pytest.mark.skipif(not os.path.isfile(CASE24_TAG), reason="RESECT Case24 tag file not available")
def test_case24_tag_reads_both_volumes_in_lps():
    raw = _hand_parse_tag(CASE24_TAG)
    assert raw.shape[1] == 6 and len(raw) >= 15
    mri, us = read_tag(CASE24_TAG)
    assert len(mri) == len(us) == len(raw)
    # RAS in the file -> LPS: x and y negated, z kept.
    np.testing.assert_array_equal(mri.points, raw[:, :3] * [-1, -1, 1])
    np.testing.assert_array_equal(us.points, raw[:, 3:] * [-1, -1, 1])
    np.testing.assert_array_equal(mri.points[0], [-33.958828, -22.299719, 0.491735])
    np.testing.assert_array_equal(us.points[-1], [-43.920175, -23.858198, -9.494043])
    assert mri.labels[:3] == ["1", "2", "3"]

    # Identity transform: the pair as given is nearly aligned (~1 mm), and the flip does not
    # change distances, so the errors equal the plain RAS distances.
    errors = registration_errors(None, mri, us)
    np.testing.assert_allclose(errors, np.linalg.norm(raw[:, :3] - raw[:, 3:], axis=1), rtol=0, atol=1e-12)
    stats = error_statistics(errors)
    assert stats["n"] == len(raw)
    assert 0.5 < stats["mean"] < 2.0 and stats["max"] < 3.0

    # The spec selects the volume; a bare .tag path is ambiguous.
    np.testing.assert_array_equal(read_landmarks(CASE24_TAG + ":1").points, mri.points)
    np.testing.assert_array_equal(read_landmarks(CASE24_TAG + ":2").points, us.points)
    with pytest.raises(InputError, match=":1' or ':2'"):
        read_landmarks(CASE24_TAG)
    with pytest.raises(InputError, match="1 or 2"):
        read_landmarks(CASE24_TAG + ":3")


def test_tag_one_volume_labels_and_extra_fields(tmp_path):
    path = tmp_path / "one.tag"
    path.write_text(
        "MNI Tag Point File\nVolumes = 1;\n% a comment\n\nPoints =\n"
        ' 1.5 -2.0 3.0 1 0 0 "ventricle tip"\n'
        " 4 5 6\n"
        ' -7 8 -9 "";\n'
    )
    first, second = read_tag(path)
    assert second is None
    np.testing.assert_array_equal(first.points, [[-1.5, 2.0, 3.0], [-4, -5, 6], [7, -8, -9]])
    assert first.labels == ["ventricle tip", "2", "3"]
    with pytest.raises(InputError, match="only one volume"):
        read_landmarks(f"{path}:2")


@pytest.mark.parametrize("body, message", [
    ("Volumes = 2;\nPoints =\n 1 2 3;\n", "expected 6 coordinates"),
    ("Volumes = 1;\nPoints =\n 1 2 x;\n", "cannot parse"),
    ("Volumes = 1;\nPoints =\n 1 2 3\n", "does not end with ';'"),
    ("Points =\n 1 2 3;\n", "Volumes"),
])
def test_tag_malformed_is_input_error_naming_file(tmp_path, body, message):
    path = tmp_path / "bad.tag"
    path.write_text("MNI Tag Point File\n" + body)
    with pytest.raises(InputError, match=message) as info:
        read_tag(path)
    assert "bad.tag" in str(info.value)


# --- round trips and coordinate systems ----------------------------------------------------------
WRITERS = {"fcsv": write_fcsv, "mrk.json": write_mrk_json, "csv": write_csv}


@pytest.mark.parametrize("suffix", sorted(WRITERS))
@pytest.mark.parametrize("system", ["LPS", "RAS"])
def test_writers_round_trip_exactly(tmp_path, suffix, system):
    rng = np.random.default_rng(3)
    points = rng.normal(scale=50.0, size=(7, 3))  # full-precision doubles
    labels = ["F-1", "with, comma", 'a "quoted" one', " spaced ", "", "ü-ñ", "7"]
    path = tmp_path / f"points.{suffix}"
    WRITERS[suffix](path, Landmarks(points, labels), coordinate_system=system)
    back = read_landmarks(str(path))
    np.testing.assert_array_equal(back.points, points)
    assert back.labels == labels
    # The file really stores the requested system: its first point is flipped for RAS.
    text = path.read_text(encoding="utf-8")
    shown = points[0] * ([-1, -1, 1] if system == "RAS" else [1, 1, 1])
    assert repr(float(shown[0])) in text or json.dumps(float(shown[0])) in text


# The same two physical points, (L,P,S) = (10.5, -20.25, 30) and (-1, 2, -3), written by hand in
# every accepted form.
EXPECTED_LPS = np.array([[10.5, -20.25, 30.0], [-1.0, 2.0, -3.0]])
FCSV_COLUMNS = "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
FCSV_ROWS_RAS = ("1,-10.5,20.25,30,0,0,0,1,1,1,0,A,,\n"
                 "2,1,-2,-3,0,0,0,1,1,1,0,B,,vtkMRMLScalarVolumeNode1\n")
FCSV_ROWS_LPS = ("1,10.5,-20.25,30,0,0,0,1,1,1,0,A,,\n"
                 "2,-1,2,-3,0,0,0,1,1,1,0,B,,vtkMRMLScalarVolumeNode1\n")
HAND_WRITTEN = {
    "ras.fcsv": "# Markups fiducial file version = 4.11\n# CoordinateSystem = RAS\n" + FCSV_COLUMNS + FCSV_ROWS_RAS,
    "lps.fcsv": "# Markups fiducial file version = 5.2\n# CoordinateSystem = LPS\n" + FCSV_COLUMNS + FCSV_ROWS_LPS,
    "ras0.fcsv": "# Markups fiducial file version = 4.6\n# CoordinateSystem = 0\n" + FCSV_COLUMNS + FCSV_ROWS_RAS,
    "lps1.fcsv": "# Markups fiducial file version = 4.10\n# CoordinateSystem = 1\n" + FCSV_COLUMNS + FCSV_ROWS_LPS,
    "noheader.fcsv": "# Markups fiducial file version = 4.4\n" + FCSV_COLUMNS + FCSV_ROWS_RAS,  # old: RAS
    "slicer3.fcsv": "A,-10.5,20.25,30,1,1\nB,1,-2,-3,1,1\n",  # unversioned Slicer 3 layout, RAS
    "ras.csv": "label,R,A,S\nA,-10.5,20.25,30\nB,1,-2,-3\n",
    "lps.csv": "label,L,P,S\nA,10.5,-20.25,30\nB,-1,2,-3\n",
    "lps_nolabel.csv": "L, P, S\n10.5,-20.25,30\n-1,2,-3\n",
}


def _mrk(system):
    pts = EXPECTED_LPS * ([-1, -1, 1] if system == "RAS" else [1, 1, 1])
    markup = {"type": "Fiducial",
              "controlPoints": [{"id": "1", "label": "A", "position": pts[0].tolist()},
                                {"id": "2", "label": "B", "position": pts[1].tolist()}]}
    if system is not None:
        markup["coordinateSystem"] = system
    return json.dumps({"@schema": "markups-schema-v1.0.3.json#", "markups": [markup]})


HAND_WRITTEN.update({"ras.mrk.json": _mrk("RAS"), "lps.mrk.json": _mrk("LPS"),
                     "default_lps.mrk.json": _mrk(None)})  # Slicer reads a missing system as LPS


@pytest.mark.parametrize("name", sorted(HAND_WRITTEN))
def test_ras_and_lps_files_of_same_points_read_identically(tmp_path, name):
    path = tmp_path / name
    path.write_text(HAND_WRITTEN[name])
    lm = read_landmarks(str(path))
    np.testing.assert_array_equal(lm.points, EXPECTED_LPS)
    if "nolabel" not in name:
        assert lm.labels == ["A", "B"]


@pytest.mark.parametrize("header", ["label,x,y,z", "x,y,z", "label,L,P", "name,L,P,S", "label,R,A,I"])
def test_csv_unknown_header_is_rejected(tmp_path, header):
    path = tmp_path / "points.csv"
    path.write_text(header + "\n1,2,3,4\n")
    with pytest.raises(InputError, match="label,L,P,S") as info:
        read_landmarks(str(path))
    assert "points.csv" in str(info.value)


@pytest.mark.parametrize("name, text, message", [
    ("bad.csv", "label,L,P,S\nA,1,2,oops\n", "line 2"),
    ("short.csv", "label,L,P,S\nA,1,2\n", "expected 4 fields"),
    ("empty.csv", "label,L,P,S\n", "no landmark points"),
    ("bad.fcsv", "# Markups fiducial file version = 4.11\n# CoordinateSystem = IJK\n", "LPS' or 'RAS"),
    ("bad2.fcsv", "# Markups fiducial file version = 4.11\n# CoordinateSystem = LPS\n1,1,two,3\n", "line 3"),
    ("bad.mrk.json", "{not json", "not valid JSON"),
    ("undef.mrk.json", json.dumps({"markups": [{"type": "Fiducial", "controlPoints": [
        {"label": "X", "position": [0, 0, 0], "positionStatus": "undefined"}]}]}), "no defined position"),
    ("points.txt", "1 2 3\n", "unsupported landmark file type"),
])
def test_unparseable_files_are_input_errors_naming_the_file(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError, match=message) as info:
        read_landmarks(str(path))
    assert name in str(info.value)


@pytest.mark.parametrize("spec", ["missing.fcsv", "missing.csv", "missing.mrk.json", "missing.tag:1"])
def test_missing_file_is_input_error(tmp_path, spec):
    with pytest.raises(InputError, match="not found") as info:
        read_landmarks(str(tmp_path / spec))
    assert "missing." in str(info.value)


# --- TRE ---------------------------------------------------------------------------------------
def test_error_statistics_match_numpy():
    errors = np.array([0.5, 1.0, 1.5, 2.0, 4.0, 0.25, 3.0])
    stats = error_statistics(errors)
    assert stats["n"] == 7
    assert stats["mean"] == pytest.approx(np.mean(errors))
    assert stats["std"] == pytest.approx(np.std(errors))
    assert stats["median"] == pytest.approx(1.5)
    assert stats["p25"] == pytest.approx(0.75)   # linear interpolation between 0.5 and 1.0
    assert stats["p75"] == pytest.approx(2.5)    # between 2.0 and 3.0
    assert stats["max"] == 4.0
    line = format_statistics(stats)
    assert line.startswith("n=7 mean 1.75 mm")
    assert "median 1.50" in line and "max 4.00" in line and "25% 0.75" in line
    with pytest.raises(InputError):
        error_statistics([])


def _rigid(angles_deg, translation):
    ax, ay, az = np.radians(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    m = np.eye(4)
    m[:3, :3] = rz @ ry @ rx
    m[:3, 3] = translation
    return m


def test_registration_errors_through_known_rigid_transform():
    rng = np.random.default_rng(0)
    fixed = rng.uniform(-60, 60, size=(12, 3))
    m = _rigid([10.0, -25.0, 40.0], [5.0, -3.0, 12.0])
    # Slow reference: one homogeneous product per point.
    mapped = np.array([(m @ np.append(p, 1.0))[:3] for p in fixed])
    np.testing.assert_allclose(transform_points(m, fixed), mapped, atol=1e-12)

    # Known residuals of known lengths along random directions.
    lengths = rng.uniform(0.1, 3.0, size=12)
    dirs = rng.normal(size=(12, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    moving = mapped + dirs * lengths[:, None]
    np.testing.assert_allclose(registration_errors(m, Landmarks(fixed), Landmarks(moving)), lengths, atol=1e-9)
    # A callable gives the same, and the identity leaves the large misalignment.
    via_callable = registration_errors(lambda p: p @ m[:3, :3].T + m[:3, 3], fixed, moving)
    np.testing.assert_allclose(via_callable, lengths, atol=1e-9)
    identity = registration_errors(np.eye(4), fixed, moving)
    np.testing.assert_allclose(identity, np.linalg.norm(fixed - moving, axis=1))
    assert identity.mean() > 5.0
    # The inverse matrix maps the wrong way and must not look registered.
    assert registration_errors(np.linalg.inv(m), fixed, moving).mean() > 5.0


def test_registration_errors_rejects_mismatched_input():
    with pytest.raises(InputError, match="counts differ"):
        registration_errors(None, np.zeros((5, 3)), np.zeros((4, 3)))
    with pytest.raises(InputError, match="4x4"):
        registration_errors(np.eye(3), np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(InputError, match=r"\(N, 3\)"):
        registration_errors(None, np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(InputError, match="labels"):
        Landmarks(np.zeros((2, 3)), ["only one"])


# --- Dice --------------------------------------------------------------------------------------
def test_dice_on_cubes_with_known_overlap():
    a = np.zeros((20, 20, 30), dtype=np.int16)
    b = np.zeros_like(a)
    a[2:12, 2:12, 2:12] = 1    # 1000 voxels
    b[2:12, 2:12, 7:17] = 1    # shifted 5 voxels in x: 500 shared
    a[14:18, 14:18, 20:24] = 2  # 64 voxels
    b[14:18, 14:16, 20:24] = 2  # 32 voxels, all inside a's
    b[0, 0, 0] = 3              # only in b
    d = dice(a, b)
    assert set(d) == {1, 2, 3}
    assert d[1] == 2 * 500 / 2000 == 0.5
    assert d[2] == pytest.approx(2 * 32 / 96)
    assert d[3] == 0.0
    assert dice(a, a)[1] == 1.0
    assert np.isnan(dice(a, b, labels=[7])[7])  # absent from both: nothing to compare
    with pytest.raises(InputError, match="shape"):
        dice(a, b[:-1])


# --- HD95 --------------------------------------------------------------------------------------
SPACING_XYZ = np.array([0.6, 1.0, 1.5])  # anisotropic, SimpleITK (x, y, z) order
SHAPE_ZYX = (30, 45, 70)


def _sphere(center_xyz, radius):
    z, y, x = np.meshgrid(*[np.arange(n) for n in SHAPE_ZYX], indexing="ij")
    pts = np.stack([x * SPACING_XYZ[0], y * SPACING_XYZ[1], z * SPACING_XYZ[2]], axis=-1)
    return (np.linalg.norm(pts - np.asarray(center_xyz), axis=-1) <= radius).astype(np.uint8)


@pytest.mark.parametrize("offset", [3.0, 6.0])
def test_hd95_of_offset_spheres_with_anisotropic_spacing(offset):
    r, center = 12.0, np.array([20.0, 22.0, 22.0])
    a = _sphere(center, r)
    b = _sphere(center + [offset, 0.0, 0.0], r)
    # Continuous reference: a point at angle t = cos(theta) to the offset axis on one sphere lies
    # |sqrt(r^2 - 2 r d t + d^2) - r| from the other, with t uniform on [-1, 1] (Archimedes).
    t = np.linspace(-1.0, 1.0, 200001)
    expected = np.percentile(np.abs(np.sqrt(r * r - 2 * r * offset * t + offset ** 2) - r), 95)
    half_voxel = SPACING_XYZ.max() / 2
    assert abs(hd95(a, b, SPACING_XYZ, label=1) - expected) < half_voxel
    # Spacing handed over in array (z, y, x) order would be measurably wrong.
    assert abs(hd95(a, b, SPACING_XYZ[::-1], label=1) - expected) > half_voxel
    assert hd95(a, a, SPACING_XYZ, label=1) == 0.0


def _slow_surface_points(mask, spacing_xyz):
    """Surface voxels by explicit 6-neighbour checks, as (x, y, z) millimetres."""
    padded = np.pad(mask, 1)
    out = []
    for z, y, x in zip(*np.nonzero(mask)):
        zp, yp, xp = z + 1, y + 1, x + 1
        neighbours = [padded[zp - 1, yp, xp], padded[zp + 1, yp, xp], padded[zp, yp - 1, xp],
                      padded[zp, yp + 1, xp], padded[zp, yp, xp - 1], padded[zp, yp, xp + 1]]
        if not all(neighbours):
            out.append([x * spacing_xyz[0], y * spacing_xyz[1], z * spacing_xyz[2]])
    return np.array(out)


def test_hd95_matches_brute_force_reference():
    rng = np.random.default_rng(7)
    spacing = np.array([0.7, 1.3, 2.1])
    shape = (9, 12, 14)
    a = np.zeros(shape, dtype=np.int32)
    b = np.zeros(shape, dtype=np.int32)
    a[1:6, 2:9, 3:11] = 4
    b[3:9, 4:12, 1:8] = 4          # touches the array border: border voxels are surface
    a[rng.random(shape) < 0.05] = 4  # ragged bits
    b[rng.random(shape) < 0.05] = 0
    sa, sb = _slow_surface_points(a == 4, spacing), _slow_surface_points(b == 4, spacing)
    pair = np.linalg.norm(sa[:, None, :] - sb[None, :, :], axis=-1)
    expected = np.percentile(np.concatenate([pair.min(axis=1), pair.min(axis=0)]), 95)
    assert hd95(a, b, spacing, label=4) == pytest.approx(expected, abs=1e-9)
    assert hd95(a != 0, b != 0, spacing) == pytest.approx(expected, abs=1e-9)  # label None: non-zero


def test_hd95_empty_label_is_nan_and_bad_spacing_errors():
    a = np.zeros((5, 5, 5), dtype=np.uint8)
    b = a.copy()
    b[1:3, 1:3, 1:3] = 1
    assert np.isnan(hd95(a, b, (1, 1, 1), label=1))
    assert np.isnan(hd95(b, b, (1, 1, 1), label=2))
    with pytest.raises(InputError, match="spacing"):
        hd95(b, b, (1, 1), label=1)
