"""Large volumes: the memory a run needs is estimated before any work and a run that would not fit
is refused with the amount; blurs need one extra copy of a volume, not 16-20; images much finer
than the working levels are reduced in slabs first, with the same result up to rounding."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from disa.errors import InputError
from disa.registration import pipeline, register
from disa.registration.memory import available_bytes, parse_bytes
from disa.sample_data import move_image, rigid_matrix
from disa.spatial import Image, image as image_module, resample_to_spacing

from synthetic import textured_image


def rss() -> int:
    with open("/proc/self/status") as fh:
        return int(fh.read().split("VmRSS:")[1].split()[0]) * 1024


def test_sizes_and_limits_are_read():
    assert parse_bytes("8G") == 8 << 30 and parse_bytes("500M") == 500 << 20 and parse_bytes("1.5 GB") == 3 << 29
    with pytest.raises(InputError, match="8G or 500M"):
        parse_bytes("lots")


def test_a_run_that_would_not_fit_is_refused_before_any_work(monkeypatch):
    fixed = textured_image(24, 2.5, seed=1)
    monkeypatch.setenv("DISA_MEMORY_LIMIT", str(rss() + (300 << 20)))
    assert available_bytes() <= 300 << 20
    small = register(fixed, fixed, metric="mind", search="local", spacings=[5.0], max_evals=5, threads=1)
    assert small.matrix.shape == (4, 4)  # a small run fits
    calls = []
    monkeypatch.setattr(pipeline, "prepare_image", lambda *a, **k: calls.append(1))
    with pytest.raises(InputError) as exc:  # a 0.25 mm level of a 60 mm volume: 14 million voxels
        register(fixed, fixed, metric="mind", search="local", spacings=[0.25], threads=1)
    message = str(exc.value)
    assert "needs about" in message and "GB available" in message and "--spacings" in message
    assert float(message.split("needs about ")[1].split(" GB")[0]) > 10
    assert calls == []  # refused before the images were even normalized


BLUR_SCRIPT = """
import torch
from disa.spatial.image import gaussian_blur
torch.set_num_threads(1)
x = torch.rand(1, 160, 160, 160)
def status(field):
    return int(open("/proc/self/status").read().split(field + ":")[1].split()[0]) * 1024
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # the peak (VmHWM) starts again from here, whatever importing took
y = gaussian_blur(x, (2.0, 2.0, 2.0))
print((status("VmHWM") - before) / (x.numel() * 4))
"""


def test_a_blur_needs_little_more_than_its_output():
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs Linux's /proc/self/clear_refs to measure a peak")
    out = subprocess.run([sys.executable, "-c", BLUR_SCRIPT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    # two outputs at most (one per axis in turn) and allocator slack; the unfolded convolution
    # took 16-20 copies of the volume
    assert float(out.stdout.split()[-1]) < 5.0


def test_slab_resampling_equals_whole_volume_resampling(monkeypatch):
    from scipy.spatial.transform import Rotation

    data = torch.as_tensor(np.random.default_rng(0).random((1, 40, 36, 30), dtype=np.float32))
    image = Image(data, np.array([0.7, 0.8, 0.6]), np.array([3.0, -2.0, 5.0]),
                  Rotation.from_rotvec([0.3, -0.2, 0.5]).as_matrix())
    whole = resample_to_spacing(image, 2.1)
    monkeypatch.setattr(image_module, "SLAB_VOXELS", 4000)
    slabs = resample_to_spacing(image, 2.1)
    assert slabs.shape == whole.shape
    assert float((slabs.data - whole.data).abs().max()) < 1e-5


def test_images_much_finer_than_the_levels_are_reduced_first(monkeypatch):
    fixed = textured_image(64, 0.5, seed=3)
    truth = rigid_matrix((3.0, -2.0, 2.0), (1.5, -1.0, 1.0), fixed.center())
    moved = move_image(fixed, truth)
    options = dict(metric="mind", search="local", spacings=[4.0, 2.0], max_evals=40, threads=1)
    direct = register(fixed, moved, **options)
    reduced_to = []
    original = pipeline.reduce_large
    monkeypatch.setattr(pipeline, "LARGE_IMAGE_VOXELS", 1000)
    monkeypatch.setattr(pipeline, "reduce_large", lambda im, s, m: reduced_to.append(s) or original(im, s, m))
    reduced = register(fixed, moved, **options)
    assert reduced_to == [1.0, 1.0]  # both images went to the finest grid a level needs (2 mm / 2)
    corners = np.array([[x, y, z, 1.0] for x in (-12, 12) for y in (-12, 12) for z in (-12, 12)])
    for result in (direct, reduced):
        assert np.abs((result.matrix - truth) @ corners.T).max() < 1.0
