"""``disa batch`` / ``register_cohort``: a small synthetic cohort registered locally and on a Dask
LocalCluster with identical transforms, a broken case recorded while the others finish, a
re-run that redoes only what is missing, the command line end to end, and bad manifests
refused in one line before any work."""
from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from disa.batch import read_manifest, register_cohort
from disa.batch.case_run import CaseJob, run_case
from disa.batch.resume import fingerprint, finished_record
from disa.batch.scheduling import plan_local
from disa.cli import main
from disa.errors import InputError
from disa.evaluate import Landmarks, write_csv
from disa.sample_data import move_image, rigid_matrix
from disa.spatial import save_image
from disa.transforms import read_itk_transform
from synthetic import textured_image

#: Cheap settings: NCC, local search, two coarse levels, one thread per case.
FAST = {"metric": "ncc", "search": "local", "spacings": [6.0, 3.0], "max_evals": 30, "threads": 1}
FAST_ARGS = ["--metric", "ncc", "--search", "local", "--spacings", "6,3", "--max-evals", "30", "--threads", "1"]
POSES = {"c1": ((4.0, -2.0, 1.0), (3.0, -2.0, 1.0)), "c2": ((-3.0, 2.0, 2.0), (-2.0, 3.0, 0.0)),
         "c3": ((2.0, 3.0, -3.0), (1.0, 1.0, -3.0))}


def write_case(folder, name: str, seed: int, rotation, translation) -> dict:
    """fixed/moving volumes, landmarks and two-label maps of one case with a known rigid pose."""
    fixed = textured_image(28, 3.0, seed=seed)
    truth = rigid_matrix(rotation, translation, fixed.center())
    files = {k: f"{name}/{k}{ext}" for k, ext in (("fixed", ".nii.gz"), ("moving", ".nii.gz"),
                                                  ("fixed_landmarks", ".csv"), ("moving_landmarks", ".csv"),
                                                  ("fixed_labels", ".nii.gz"), ("moving_labels", ".nii.gz"))}
    os.makedirs(folder / name)
    save_image(fixed, folder / files["fixed"])
    save_image(move_image(fixed, truth), folder / files["moving"])
    points = np.random.default_rng(seed).uniform(-20, 20, (8, 3))
    write_csv(folder / files["fixed_landmarks"], Landmarks(points))
    write_csv(folder / files["moving_landmarks"], Landmarks(points @ truth[:3, :3].T + truth[:3, 3]))
    data = fixed.data[0].numpy()
    labels = (data > np.percentile(data, 60)).astype(np.uint8) + (data > np.percentile(data, 85)).astype(np.uint8)
    for which in ("fixed", "moving"):
        image = sitk.GetImageFromArray(labels)
        image.CopyInformation(sitk.ReadImage(str(folder / files[which])))
        sitk.WriteImage(image, str(folder / files[f"{which}_labels"]))
    return dict(case=name, **files)


def write_manifest(path, rows) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, columns)
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    rows = [write_case(folder, name, seed, *pose) for seed, (name, pose) in enumerate(POSES.items(), start=1)]
    rows[2]["options"] = "--metric mind"  # a row's own options override the cohort's
    (folder / "broken.nii.gz").write_bytes(b"not a volume at all")
    broken = {"case": "broken", "fixed": "broken.nii.gz", "moving": rows[0]["moving"]}
    return {"folder": folder, "rows": rows, "manifest": write_manifest(folder / "manifest.csv", rows + [broken])}


@pytest.fixture(scope="module")
def local(study, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    return register_cohort(study["manifest"], out, workers=2, quiet=True, **FAST)


def load_json(*parts):
    with open(os.path.join(*parts)) as fh:
        return json.load(fh)


def matrix(folder, case):
    return read_itk_transform(os.path.join(folder, case, "transform.h5"))


def test_local_cohort_registers_evaluates_and_records_the_broken_case(study, local):
    by_case = {row["case"]: row for row in local.rows}
    assert [row["case"] for row in local.rows] == ["c1", "c2", "c3", "broken"]  # manifest order
    assert local.count("done") == 3 and local.workers == 2 and local.threads == 1
    broken = by_case["broken"]
    assert broken["status"] == "failed" and "broken.nii.gz" in broken["error"] and "\n" not in broken["error"]
    out = local.output_dir
    assert not os.path.exists(os.path.join(out, "broken"))
    assert not [name for name in os.listdir(out) if name.startswith(".disa-partial")]
    for case in POSES:
        row = by_case[case]
        assert row["tre_before_mean"] > 3.0 and row["tre_after_max"] < 0.5, row
        assert row["dice"] > row["dice_before"] and row["dice"] > 0.95 and row["hd95"] < 3.0, row
        files = set(os.listdir(os.path.join(out, case)))
        assert {"transform.h5", "moving_resampled.nii.gz", "result.json", "evaluation.json", "done.json"} <= files
        result = load_json(out, case, "result.json")
        assert result["metric"] == ("mind" if case == "c3" else "ncc") and result["threads"] == 1
        assert np.allclose(result["matrix_lps_fixed_to_moving"], matrix(out, case), atol=1e-6)
    with open(local.files["csv"]) as fh:
        table = list(csv.DictReader(fh))
    assert [r["status"] for r in table] == ["done", "done", "done", "failed"]
    with open(local.files["markdown"]) as fh:
        assert "| broken | failed |" in fh.read()
    assert "plot" in local.files or local.notes  # matplotlib optional


def test_dask_cluster_gives_the_same_transforms(study, local, tmp_path):
    distributed = pytest.importorskip("distributed")
    rows = [{k: v for k, v in row.items()} for row in study["rows"]]  # dicts, paths relative to base_dir
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        summary = register_cohort(rows, tmp_path / "dask", scheduler=cluster.scheduler_address,
                                  base_dir=study["folder"], quiet=True, **FAST)
    assert summary.count("done") == 3 and summary.threads == 1
    for case in POSES:
        assert np.array_equal(matrix(tmp_path / "dask", case), matrix(local.output_dir, case)), case


def test_cli_rerun_redoes_only_the_missing_case(study, local, capsys):
    out = local.output_dir
    stamps = {case: os.path.getmtime(os.path.join(out, case, "done.json")) for case in ("c1", "c3")}
    before = matrix(out, "c2")
    shutil.rmtree(os.path.join(out, "c2"))
    code = main(["batch", study["manifest"], "--output-dir", out, "--workers", "1", "--quiet"] + FAST_ARGS)
    stdout = capsys.readouterr().out
    assert code == 1  # the broken case failed again
    assert "4 cases: 1 done, 2 skipped (already complete), 1 failed" in stdout and "wrote " in stdout
    with open(os.path.join(out, "summary.csv")) as fh:
        status = {r["case"]: r["status"] for r in csv.DictReader(fh)}
    assert status == {"c1": "skipped", "c2": "done", "c3": "skipped", "broken": "failed"}
    assert all(os.path.getmtime(os.path.join(out, c, "done.json")) == t for c, t in stamps.items())
    assert np.array_equal(matrix(out, "c2"), before)  # one thread per case both times


def test_changed_inputs_or_options_make_a_case_stale(study, local):
    spec = read_manifest(study["manifest"])[0]
    options = load_json(local.output_dir, spec.case, "done.json")["fingerprint"]["options"]
    folder = os.path.join(local.output_dir, spec.case)
    assert finished_record(folder, fingerprint(spec, options)) is not None
    assert finished_record(folder, fingerprint(spec, {**options, "seed": 7})) is None
    with open(os.path.join(folder, "evaluation.json"), "a") as fh:
        fh.write(" ")  # an output that changed size: the case is redone
    assert finished_record(folder, fingerprint(spec, options)) is None


def test_interrupted_case_leaves_no_folder(study, tmp_path, monkeypatch):
    import disa.registration

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(disa.registration, "register_files", interrupted)
    spec = read_manifest(study["manifest"])[0]
    with pytest.raises(KeyboardInterrupt):
        run_case(CaseJob(spec, dict(FAST), str(tmp_path), {}))
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    row = run_case(CaseJob(spec, dict(FAST), str(tmp_path), {}), cancel=lambda: True)  # a pool's Ctrl-C
    assert row["status"] == "failed" and "cancel" in row["error"] and os.listdir(tmp_path) == []


def test_workers_follow_cores_and_memory(study):
    specs = read_manifest(study["manifest"])
    options = lambda spec: FAST
    assert plan_local(specs, options, cores=2) == (2, 1)
    assert plan_local(specs, options, cores=16) == (4, 4)  # one worker per case at most
    assert plan_local(specs, options, cores=16, available=1) == (1, 16)  # memory for one case only
    assert plan_local(specs, options, cores=16, threads=8) == (2, 8)
    assert plan_local(specs, options, workers=3, cores=16) == (3, 5)


@pytest.mark.parametrize("edit,words", [
    (lambda rows: rows[0].update(fixed="nowhere.nii.gz"), "file not found"),
    (lambda rows: rows[1].update(case="c1"), "duplicate case name"),
    (lambda rows: rows[0].update(colour="red"), "unknown column 'colour'"),
    (lambda rows: rows.clear(), "empty"),
    (lambda rows: rows[0].update(case="../x"), "unsafe case name"),
    (lambda rows: rows[0].update(case="summary.csv"), "unsafe case name"),
    (lambda rows: rows[0].update(options="--metric nope"), "case 'c1', options"),
    (lambda rows: rows[0].update(options="--threads 2"), "whole cohort"),
    (lambda rows: rows[0].pop("moving_landmarks"), "go together"),
    (lambda rows: rows[0].update(moving=""), "'moving' column is empty"),
])
def test_bad_manifest_is_refused_in_one_line_before_any_work(study, tmp_path, capsys, edit, words):
    rows = [dict(row) for row in study["rows"]]
    edit(rows)
    manifest = study["folder"] / "bad.csv"
    if rows:
        write_manifest(manifest, rows)
    else:
        manifest.write_text("")
    with pytest.raises(InputError, match=words.replace("(", r"\(")):
        register_cohort(str(manifest), tmp_path / "out", quiet=True, **FAST)
    code = main(["batch", str(manifest), "--output-dir", str(tmp_path / "out"), "--quiet"] + FAST_ARGS)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("disa: error:") and words in err[0], err
    assert not (tmp_path / "out").exists()


def test_unknown_option_is_refused(study, tmp_path):
    with pytest.raises(InputError, match="unknown registration option 'metrik'"):
        register_cohort(study["manifest"], tmp_path, metrik="ncc")
