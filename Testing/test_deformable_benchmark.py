"""``disa benchmark deformable`` machinery on one tiny analytic case (not a benchmark: no speed
assertion): a phantom of labelled balls, the fixed image showing the moving content displaced by a
known smooth field, in another intensity mapping. The engine's deformable mode must overlap the
labels better than no registration, and the three report files must be written."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import SimpleITK as sitk
from disa.bench.deformable import run_deformable
from disa.bench.deformable_report import FILES
from disa.evaluate import Landmarks, write_fcsv

SIZE, SPACING = 36, 2.5
CENTER = np.full(3, SIZE * SPACING / 2)
#: (centre offset from the middle in mm, radius in mm) of the labelled balls 2..6 inside the head (label 1).
BALLS = (((-14, -10, 0), 11), ((14, -8, 4), 10), ((0, 14, -6), 12), ((-8, 6, 14), 8), ((10, 10, -14), 8))


def labels_at(points: np.ndarray) -> np.ndarray:
    out = np.zeros(len(points), np.int16)
    out[np.linalg.norm(points - CENTER, axis=1) < 40] = 1
    for i, (offset, radius) in enumerate(BALLS):
        out[np.linalg.norm(points - CENTER - np.asarray(offset), axis=1) < radius] = i + 2
    return out


def displacement(points: np.ndarray) -> np.ndarray:
    """A smooth bump of up to 5 mm: fixed point x shows the moving content at x + d(x)."""
    r2 = np.sum((points - CENTER - np.array([5.0, -5.0, 0.0])) ** 2, axis=1)
    return np.exp(-r2 / (2 * 18.0 ** 2))[:, None] * np.array([5.0, 3.0, -2.0])


def grid_points() -> np.ndarray:
    k, j, i = np.meshgrid(*[np.arange(SIZE)] * 3, indexing="ij")
    return np.stack([i, j, k], -1).reshape(-1, 3) * SPACING


def write_image(array: np.ndarray, path: str, pixel) -> None:
    img = sitk.GetImageFromArray(array.reshape((SIZE,) * 3).astype(pixel))
    img.SetSpacing((SPACING,) * 3)
    sitk.WriteImage(img, path)


def write_case(folder: str) -> None:
    rng = np.random.default_rng(0)
    x = grid_points()
    moving_labels = labels_at(x)
    fixed_labels = labels_at(x + displacement(x))
    look_fixed = np.array([0.0, 0.3, 0.9, 0.6, 0.15, 1.0, 0.45])  # per label: two unrelated appearances
    look_moving = np.array([0.0, 0.8, 0.2, 1.0, 0.5, 0.35, 0.05])

    def render(labels, look):
        img = sitk.GetImageFromArray(look[labels].reshape((SIZE,) * 3).astype(np.float32))
        smooth = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(img, 1.0))
        return smooth + 0.02 * rng.standard_normal(smooth.shape)

    os.makedirs(folder)
    write_image(render(fixed_labels, look_fixed), os.path.join(folder, "fixed.nii.gz"), np.float32)
    write_image(render(moving_labels, look_moving), os.path.join(folder, "moving.nii.gz"), np.float32)
    write_image(fixed_labels, os.path.join(folder, "fixed_labels.nii.gz"), np.int16)
    write_image(moving_labels, os.path.join(folder, "moving_labels.nii.gz"), np.int16)
    points = CENTER + rng.uniform(-25, 25, (12, 3))
    names = [f"L{i + 1}" for i in range(len(points))]
    write_fcsv(os.path.join(folder, "fixed_landmarks.fcsv"), Landmarks(points, names))
    write_fcsv(os.path.join(folder, "moving_landmarks.fcsv"), Landmarks(points + displacement(points), names))


def test_deformable_benchmark_tiny_case(tmp_path):
    case = str(tmp_path / "phantom")
    write_case(case)
    out = tmp_path / "results"
    doc = run_deformable(methods=["identity", "deformable"], case_dirs=[case], threads=1, output_dir=out,
                         dense={"spacing": 2.5, "iterations": 30}, spacings=[5.0, 2.5], log=io.StringIO(),
                         print_fn=lambda text: None)
    for name in FILES:
        assert (out / name).stat().st_size > 0
    saved = json.loads((out / "deformable.json").read_text())
    runs = {m: saved["methods"][m]["runs"][0] for m in ("identity", "deformable")}
    assert "error" not in runs["deformable"], runs["deformable"].get("error")
    assert runs["deformable"]["dice_mean"] > runs["identity"]["dice_mean"] + 0.02
    assert runs["deformable"]["tre_mean"] < runs["identity"]["tre_mean"]
    assert doc["environment"]["load_average_before"] is not None
    assert "| deformable |" in (out / "deformable.md").read_text()
