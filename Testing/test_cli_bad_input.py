"""Bad input to ``disa register``: one clear line, exit code 2, no output file (not even a partial
one) and untouched inputs; outputs are written all-or-nothing and text transforms are
byte-identical between identical runs."""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from disa.cli import main
from disa.sample_data import move_image, rigid_matrix
from disa.spatial import save_image
from disa.transforms import write_itk_transform

from synthetic import textured_image

FAST = ["--metric", "mind", "--search", "local", "--spacings", "5", "--max-evals", "10", "--quiet"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    fixed = textured_image(24, 2.5, seed=7)
    save_image(fixed, folder / "us.nii.gz")
    save_image(move_image(fixed, rigid_matrix((3.0, 0.0, -2.0), (2.0, 1.0, 0.0), fixed.center())),
               folder / "mr.nii.gz")
    write_itk_transform(folder / "init.tfm", np.eye(4))
    return {name: str(folder / name) for name in ("us.nii.gz", "mr.nii.gz", "init.tfm")}


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def run(args, capsys):
    """(exit code, stderr) of ``disa register ARGS`` run in this process."""
    try:
        code = main(["register"] + [str(a) for a in args])
    except SystemExit as exc:  # argparse refuses at parse time
        code = exc.code
    return code, capsys.readouterr().err


def assert_refused(code, err, *words):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("disa: error:"), err
    for word in words:
        assert word in lines[0], lines[0]


def leftovers(folder) -> list:
    return sorted(p for p in os.listdir(folder) if p.startswith(".disa-partial"))


@pytest.mark.parametrize("output,target", [("--output-volume", "mr.nii.gz"), ("--output-volume", "us.nii.gz"),
                                           ("--json", "mr.nii.gz"), ("--output-transform", "init.tfm")])
def test_an_output_that_is_an_input_is_refused(files, tmp_path, capsys, output, target):
    before = {name: digest(path) for name, path in files.items()}
    args = ["--fixed", files["us.nii.gz"], "--moving", files["mr.nii.gz"], "--initial-transform", files["init.tfm"],
            "--output-transform", tmp_path / "t.h5"] + FAST
    if output == "--output-transform":
        args[args.index("--output-transform") + 1] = files[target]
    else:
        args += [output, files[target]]
    assert_refused(*run(args, capsys), output, "input")
    assert {name: digest(path) for name, path in files.items()} == before
    assert os.listdir(tmp_path) == []


def test_an_output_reached_through_a_link_is_still_an_input(files, tmp_path, capsys):
    link = tmp_path / "link.nii.gz"
    os.symlink(files["mr.nii.gz"], link)
    before = digest(files["mr.nii.gz"])
    code, err = run(["--fixed", files["us.nii.gz"], "--moving", files["mr.nii.gz"], "--output-transform",
                     tmp_path / "t.tfm", "--output-volume", link] + FAST, capsys)
    assert_refused(code, err, "input")
    assert digest(files["mr.nii.gz"]) == before and not (tmp_path / "t.tfm").exists()


@pytest.mark.parametrize("option,value,words", [
    ("--spacings", "0", "(0, 100]"), ("--spacings", "-1", "(0, 100]"), ("--spacings", "nan", "finite"),
    ("--spacings", "1000", "(0, 100]"), ("--spacings", "2,x", "number"), ("--seed", "-1", "[0, 4294967295]"),
    ("--seed", "4294967296", "[0, 4294967295]"), ("--search-samples", "0", "[1,"), ("--search-samples", "-5", "[1,"),
    ("--max-evals", "0", "[1,"), ("--search-rotation", "inf", "finite"), ("--search-translation", "-3", "[0,"),
    ("--metric", "0.5*disa+", "lc2, mind"), ("--metric", "LC3", "lc2, mind"), ("--precision", "half", "float32"),
    ("--output-transform", "t.mat", ".tfm"), ("--output-volume", "v.mhd", ".nii.gz"),
])
def test_numeric_and_named_options_are_checked_when_parsed(files, tmp_path, capsys, option, value, words):
    args = ["--fixed", files["us.nii.gz"], "--moving", files["mr.nii.gz"], "--output-transform",
            tmp_path / "t.h5"] + FAST + [option, value]
    assert_refused(*run(args, capsys), option, words)
    assert os.listdir(tmp_path) == []


def test_a_spacing_too_coarse_for_the_images_is_refused_before_work(files, tmp_path, capsys):
    code, err = run(["--fixed", files["us.nii.gz"], "--moving", files["mr.nii.gz"], "--output-transform",
                     tmp_path / "t.h5"] + FAST + ["--spacings", "40"], capsys)
    assert_refused(code, err, "too coarse")
    assert os.listdir(tmp_path) == []


def test_unwritable_outputs_are_refused_before_the_registration(files, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for option in ("--json", "--output-volume"):
        name = "r.json" if option == "--json" else "v.nii.gz"
        code, err = run(["--fixed", files["us.nii.gz"], "--moving", files["mr.nii.gz"], "--output-transform",
                         tmp_path / "t.h5", option, blocker / name] + FAST, capsys)
        assert_refused(code, err, option, "not a folder")
    code, err = run(["--fixed", files["us.nii.gz"], "--moving", files["mr.nii.gz"], "--output-transform",
                     blocker / "t.h5"] + FAST, capsys)
    assert_refused(code, err, "--output-transform")  # no HDF5 error stack before the one line
    assert sorted(os.listdir(tmp_path)) == ["a-file"]


def test_outputs_are_all_or_nothing(files, tmp_path, capsys, monkeypatch):
    from disa.errors import InputError
    from disa.transforms import itk_io

    def broken(*args):
        raise InputError("disk full (simulated)")

    monkeypatch.setattr(itk_io, "write_resampled", broken)
    code, err = run(["--fixed", files["us.nii.gz"], "--moving", files["mr.nii.gz"], "--output-transform",
                     tmp_path / "t.h5", "--output-volume", tmp_path / "v.nii.gz", "--json", tmp_path / "r.json"]
                    + FAST, capsys)
    assert_refused(code, err, "disk full")
    assert os.listdir(tmp_path) == []  # neither the transform written first nor a temporary file


def test_text_transforms_are_byte_identical_between_identical_runs(files, tmp_path, capsys):
    outs = []
    for i in range(2):
        out = tmp_path / f"run{i}"
        args = ["--fixed", files["us.nii.gz"], "--moving", files["mr.nii.gz"], "--output-transform", out / "t.tfm",
                "--json", out / "r.json"] + FAST + ["--metric", "MIND"]  # the last --metric counts
        assert main(["register"] + [str(a) for a in args]) == 0
        outs.append(out)
    assert digest(outs[0] / "t.tfm") == digest(outs[1] / "t.tfm")
    result = json.loads((outs[0] / "r.json").read_text())
    assert result["metric"] == "mind" and result["precision"] == "float32" and result["seed"] == 0
    assert leftovers(outs[0]) == []
    assert "wrote" in capsys.readouterr().out


def test_non_finite_and_truncated_nifti_voxels_are_refused(files, tmp_path, capsys):
    array = sitk.GetArrayFromImage(sitk.ReadImage(files["mr.nii.gz"])).astype(np.float32)
    for name, bad in (("nan.nii.gz", np.nan), ("inf.nii", np.inf)):
        broken = array.copy()
        broken[3, 4, 5] = bad
        sitk.WriteImage(sitk.GetImageFromArray(broken), str(tmp_path / name))
        code, err = run(["--fixed", files["us.nii.gz"], "--moving", tmp_path / name, "--output-transform",
                         tmp_path / "t.h5"] + FAST, capsys)
        assert_refused(code, err, "1 non-finite voxels")
    data = open(tmp_path / "inf.nii", "rb").read()
    open(tmp_path / "cut.nii", "wb").write(data[: len(data) // 2])
    code, err = run(["--fixed", files["us.nii.gz"], "--moving", tmp_path / "cut.nii", "--output-transform",
                     tmp_path / "t.h5"] + FAST, capsys)
    assert_refused(code, err, "truncated")
    assert not (tmp_path / "t.h5").exists()


def test_an_unreadable_image_names_the_cause_not_a_source_location(files, tmp_path, capsys):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not an image")
    code, err = run(["--fixed", bad, "--moving", files["mr.nii.gz"], "--output-transform", tmp_path / "t.h5"]
                    + FAST, capsys)
    assert_refused(code, err, "could not read fixed image", "ImageIO")
    assert ".cxx" not in err and "SimpleITK" not in err


def test_a_run_that_would_not_fit_in_memory_is_refused_with_the_amount(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DISA_MEMORY_LIMIT", "100M")
    code, err = run(["--fixed", files["us.nii.gz"], "--moving", files["mr.nii.gz"], "--output-transform",
                     tmp_path / "t.h5"] + FAST + ["--spacings", "0.5"], capsys)
    assert_refused(code, err, "needs about", "GB available")
    assert os.listdir(tmp_path) == []


def test_weights_file_of_ones_own(files, tmp_path, capsys):
    from disa.features.weights import DEFAULT_WEIGHTS, card_path

    if not DEFAULT_WEIGHTS.exists():
        pytest.skip("no shipped DISA weights to copy")
    own = tmp_path / "mine" / "my_disa.pt"
    own.parent.mkdir()
    shutil.copy(DEFAULT_WEIGHTS, own)
    shutil.copy(card_path(DEFAULT_WEIGHTS), card_path(own))
    args = ["--fixed", files["us.nii.gz"], "--moving", files["mr.nii.gz"], "--output-transform", tmp_path / "t.tfm",
            "--json", tmp_path / "r.json", "--metric", "disa", "--weights", own, "--search", "local",
            "--spacings", "5", "--quiet"]
    assert main(["register"] + [str(a) for a in args]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["metric"] == "disa"
    code, err = run(args + ["--metric", "mind"], capsys)
    assert_refused(code, err, "disa measure only")
    open(own, "ab").write(b"x")  # a modified file fails its model card's checksum
    code, err = run(args, capsys)
    assert_refused(code, err, "corrupt or modified")
