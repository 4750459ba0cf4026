"""Same inputs, seed and precision give the same transform, bit for bit: registrations use no
global random state, two runs at once (with different thread counts) each give their solo
result, descriptors are float32 unless asked, and the descriptor cache never makes one caller
wait for another's network run."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from disa.errors import InputError
from disa.features.descriptors import DescriptorCache, compute_descriptors, cpu_bfloat16_supported
from disa.features.network import seeded_model
from disa.registration import register
from disa.sample_data import move_image, rigid_matrix
from disa.spatial import Image

from synthetic import textured_image

SMALL = dict(search="global", search_samples=32, search_starts=2, spacings=[5.0, 2.5], max_evals=20)


@pytest.fixture(scope="module")
def pair():
    fixed = textured_image(24, 2.5, seed=5)
    return fixed, move_image(fixed, rigid_matrix((4.0, -3.0, 2.0), (3.0, 2.0, -2.0), fixed.center()))


def test_registration_neither_uses_nor_changes_global_random_state(pair):
    fixed, moving = pair
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    first = register(fixed, moving, metric="mi", seed=3, threads=1, **SMALL)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state))
    torch.manual_seed(123)  # whatever the process drew before
    np.random.seed(456)
    second = register(fixed, moving, metric="mi", seed=3, threads=1, **SMALL)
    assert np.array_equal(first.matrix, second.matrix)
    assert (first.precision, first.seed, first.threads) == ("float32", 3, 1)


def test_two_registrations_at_once_each_give_their_solo_result(pair):
    fixed, moving = pair
    runs = {"mind": dict(metric="mind", seed=1, threads=2), "mi": dict(metric="mi", seed=2, threads=1)}
    solo = {k: register(fixed, moving, **SMALL, **kw).matrix for k, kw in runs.items()}
    together, errors = {}, []

    def run(key):
        try:
            together[key] = register(fixed, moving, **SMALL, **runs[key]).matrix
        except Exception as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in runs]
    previous = torch.get_num_threads()
    for t in threads:
        t.start()
    torch.set_num_threads(1 if previous > 1 else 2)  # a third party changes its own count meanwhile
    for t in threads:
        t.join()
    torch.set_num_threads(previous)
    assert not errors, errors
    for key in runs:
        assert np.array_equal(together[key], solo[key]), key


def test_reduced_precision_only_on_request():
    img = Image.from_array(textured_image(24, 1.0, seed=2).data[0].numpy())
    model = seeded_model(4)
    default = compute_descriptors(img, model).data
    assert torch.equal(default, compute_descriptors(img, model, dtype=torch.float32).data)
    if cpu_bfloat16_supported():
        reduced = compute_descriptors(img, model, dtype=torch.bfloat16).data
        assert not torch.equal(default, reduced) and float((default - reduced).abs().max()) < 0.05
    with pytest.raises(InputError, match="CUDA"):
        register(img, img, metric="disa", precision="float16", device="cpu")
    with pytest.raises(InputError, match="unknown precision"):
        register(img, img, metric="mind", precision="half")


def test_bfloat16_on_a_cpu_without_it_is_one_clear_error(monkeypatch):
    """Without AVX-512 oneDNN has no bfloat16 convolution (the run used to stop in a RuntimeError
    deep inside the network): refused up front, and by the descriptors themselves."""
    import disa.features.descriptors as descriptors_module

    monkeypatch.setattr(descriptors_module, "cpu_bfloat16_supported", lambda: False)
    img = Image.from_array(textured_image(24, 1.0, seed=2).data[0].numpy())
    with pytest.raises(InputError, match="bfloat16 descriptors need a CPU with AVX-512"):
        register(img, img, metric="disa", precision="bfloat16", device="cpu")
    with pytest.raises(InputError, match="bfloat16 descriptors need a CPU with AVX-512"):
        compute_descriptors(img, seeded_model(4), dtype=torch.bfloat16)
    assert compute_descriptors(img, seeded_model(4), dtype=torch.float32).data.abs().sum() > 0


class GatedModel(torch.nn.Module):
    """A network whose first forward call waits until ``gate`` is set."""

    def __init__(self):
        super().__init__()
        self.net = seeded_model(1)
        self.gate, self.entered, self.calls = threading.Event(), threading.Event(), []

    def forward(self, x):
        self.calls.append(1)
        if len(self.calls) == 1:
            self.entered.set()
            assert self.gate.wait(30), "the gate was never opened"
        return self.net(x)


def test_descriptor_cache_computes_outside_its_lock_and_once_per_key():
    model, cache = GatedModel(), DescriptorCache()
    slow = Image.from_array(textured_image(16, 1.0, seed=1).data[0].numpy())
    fast = Image.from_array(textured_image(16, 1.0, seed=2).data[0].numpy())
    results = {}
    waiting = [threading.Thread(target=lambda i=i: results.setdefault(i, cache.get(slow, model))) for i in range(2)]
    waiting[0].start()
    assert model.entered.wait(30)
    waiting[1].start()  # the same key: waits for the first computation instead of repeating it
    other = cache.get(fast, model)  # another key completes while the slow one is computing
    assert other.data.shape[0] == 16 and not model.gate.is_set()
    model.gate.set()
    for t in waiting:
        t.join(30)
    assert results[0] is results[1] and len(model.calls) == 2  # one run per key
    assert cache.misses == 2 and cache.hits == 1
