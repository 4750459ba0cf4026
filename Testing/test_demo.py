"""`disa demo` never overwrites a user's files without --overwrite: a non-empty output folder or
an existing scene file is refused with one line and exit code 2 before any work, and with
--overwrite only the demo's own files change, never its inputs."""
from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from disa.cli import main
from disa.errors import InputError
from disa.sample_data import case24

#: Small settings: the refusal tests never register; the --overwrite test runs one quick registration.
FAST = ["--metric", "mind", "--search", "local", "--spacings", "2", "--max-evals", "30", "--device", "cpu",
        "--quiet"]

pytestmark = pytest.mark.usefixtures("one_thread")


def digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("disa: error: "), err
    return err[0]


def test_non_empty_output_folder_is_refused_and_left_as_it_was(tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "registration.h5").write_bytes(b"the user's own transform")
    (out / "notes.txt").write_text("keep me")
    before = digests(out)
    assert main(["demo", "--output-dir", str(out)] + FAST) == 2
    line = one_error_line(capsys)
    assert "not empty" in line and "--overwrite" in line and str(out) in line
    assert digests(out) == before


def test_existing_scene_file_and_file_as_folder_are_refused_before_any_work(tmp_path, capsys):
    scene = tmp_path / "mine.mrb"
    scene.write_bytes(b"a scene the user made")
    out = tmp_path / "new-folder"
    assert main(["demo", "--output-dir", str(out), "--scene", str(scene)] + FAST) == 2
    assert "exists" in one_error_line(capsys) and scene.read_bytes() == b"a scene the user made"
    assert not out.exists()
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert main(["demo", "--output-dir", str(a_file)] + FAST) == 2
    assert "not a folder" in one_error_line(capsys) and a_file.read_text() == "x"


def test_overwrite_replaces_only_the_demo_files_and_never_the_inputs(tmp_path, capsys):
    try:
        c = case24()
    except InputError as exc:
        pytest.skip(str(exc))
    # The demo writes into the folder it reads from: the inputs must survive byte for byte.
    data = tmp_path / "Case24"
    shutil.copytree(c.fixed.parent, data)
    (data / "registration.h5").write_bytes(b"old result")
    inputs = digests(data)
    assert main(["demo", "--data-dir", str(data), "--output-dir", str(data), "--overwrite"] + FAST) == 0
    after = digests(data)
    for name, digest in inputs.items():
        if name != "registration.h5":
            assert after[name] == digest, f"{name} changed"
    assert after["registration.h5"] != inputs["registration.h5"]
    summary = json.loads((data / "demo.json").read_text())
    assert summary["after"]["mean"] < summary["before"]["mean"]
    assert set(after) - set(inputs) == {"Case24-T1-perturbed.nii.gz", "Case24-T1-registered.nii.gz",
                                        "Case24-US-landmarks.fcsv", "Case24-T1-perturbed-landmarks.fcsv",
                                        "demo.json"}
