"""Paper-style training data: shards of patch pairs sampled from volume pairs, and reading them.

``build_dataset`` renders volume pairs (:mod:`.synth`) or reads the user's own, samples patch
pairs the paper's way from each (:mod:`.patches`: a B patch drawn by LC²'s weight, the A patch
whose exact LC² is closest to a uniform draw) into one ``.npz`` shard per volume pair.
:class:`ShardData` streams shards for training (:mod:`.paper`) and validation, whole volume
pairs held out when there are at least two shards.
"""
from __future__ import annotations

import glob
import json
import os
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from .patches import PatchPairs, sample_patch_pairs, target_histogram
from .progress import progress_of
from .synth import PairSpec, check_not_held_out, make_pair


def _spec_of(source, data_dir) -> PairSpec:
    if isinstance(source, PairSpec):
        return source
    if isinstance(source, dict):
        return PairSpec(**source)
    if isinstance(source, (tuple, list)) and len(source) == 2:
        return PairSpec("files", 0, path_a=os.fspath(source[0]), path_b=os.fspath(source[1]))
    raise InputError(f"a training source must be a PairSpec, a dict or a (path_a, path_b) pair, got {source!r}")


def build_dataset(out_dir, sources: Sequence, pairs_per_volume: int = 500, seed: int = 0,
                  data_dir: Optional[str] = None, candidates: int = 2000, progress=True) -> dict:
    """Sample ``pairs_per_volume`` patch pairs from each source volume pair into
    ``out_dir/shard_NNNN_<name>.npz`` and write ``out_dir/dataset.json`` (summary).

    ``sources``: :class:`PairSpec` recipes (see :func:`disa.train.synth.make_pair_specs`; they
    need ``data_dir``, the folder holding ``templates/`` and ``resect/``) or (path_a, path_b)
    pairs of volumes (A gives intensity and gradient, B is fitted: put ultrasound in B).
    A shard that already exists with the same recipe is kept, so an interrupted build resumes.
    """
    say = progress_of(progress)
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    specs = [_spec_of(s, data_dir) for s in sources]
    if not specs:
        raise InputError("no training sources given")
    for s in specs:
        for p in (s.path_a, s.path_b):
            if p:
                check_not_held_out(p)
    summary = {"seed": int(seed), "pairs_per_volume": int(pairs_per_volume), "candidates": int(candidates),
               "data_dir": None if data_dir is None else os.path.abspath(data_dir), "shards": []}
    t0 = time.perf_counter()
    for i, spec in enumerate(specs):
        path = os.path.join(out_dir, f"shard_{i:04d}_{spec.name()}.npz")
        shard_seed = int(np.random.SeedSequence([int(seed), i]).generate_state(1)[0])
        recipe = {"spec": spec.to_dict(), "pairs": int(pairs_per_volume), "sampling_seed": shard_seed,
                  "candidates": int(candidates)}
        entry = None
        if os.path.exists(path):
            try:
                old = PatchPairs.load(path)
                if old.meta.get("recipe") == recipe:
                    entry = {"file": os.path.basename(path), "pairs": len(old), "name": spec.name(),
                             "target_histogram": target_histogram(old.targets), "reused": True}
            except InputError:
                entry = None
        if entry is None:
            ts = time.perf_counter()
            pair = make_pair(spec, data_dir)
            meta = {"recipe": recipe, "name": spec.name(), "volume_a_shape": list(pair.a.shape),
                    "volume_b_shape": list(pair.b.shape)}
            pp = sample_patch_pairs(pair.a, pair.b, int(pairs_per_volume), seed=shard_seed, mask_a=pair.mask_a,
                                    mask_b=pair.mask_b, same_grid=pair.same_grid, candidates=candidates, meta=meta)
            pp.save(path)
            entry = {"file": os.path.basename(path), "pairs": len(pp), "name": spec.name(),
                     "target_histogram": target_histogram(pp.targets), "seconds": round(time.perf_counter() - ts, 2)}
        summary["shards"].append(entry)
        elapsed = time.perf_counter() - t0
        eta = elapsed / (i + 1) * (len(specs) - i - 1)
        say(f"build: {i + 1}/{len(specs)} volume pairs ({spec.name()}), {elapsed:.0f} s, ETA {eta:.0f} s",
            final=(i + 1 == len(specs)))
    summary["pairs"] = int(sum(e["pairs"] for e in summary["shards"]))
    summary["target_histogram"] = [int(x) for x in np.sum([e["target_histogram"] for e in summary["shards"]], 0)]
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    with open(os.path.join(out_dir, "dataset.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    return summary


def shard_files(data: str) -> List[str]:
    if os.path.isfile(data):
        return [os.path.abspath(data)]
    files = sorted(glob.glob(os.path.join(os.fspath(data), "*.npz")))
    if not files:
        raise InputError(f"no training shards (*.npz) in {data}; build them with build_dataset / disa train --build")
    return [os.path.abspath(f) for f in files]


def _shard_size(path: str) -> int:
    with np.load(path, allow_pickle=False) as z:
        return int(z["targets"].shape[0])


def split_shards(files: List[str], val_fraction: float, seed: int) -> Tuple[list, list, str]:
    """Parts (file, indices or None) for training and validation."""
    rng = np.random.default_rng([int(seed), 7919])
    if len(files) >= 2 and val_fraction > 0:
        n_val = min(len(files) - 1, max(1, int(round(val_fraction * len(files)))))
        order = rng.permutation(len(files))
        val = sorted(order[:n_val].tolist())
        train_parts = [(files[i], None) for i in range(len(files)) if i not in val]
        return train_parts, [(files[i], None) for i in val], "by volume pair (whole shards)"
    n = _shard_size(files[0])
    if val_fraction <= 0 or n < 2:
        return [(files[0], None)], [], "none"
    perm = rng.permutation(n)
    n_val = max(1, int(round(val_fraction * n)))
    return ([(files[0], np.sort(perm[n_val:]))], [(files[0], np.sort(perm[:n_val]))],
            "within one shard (overlapping patches of one volume pair: optimistic)")


class ShardData:
    """Patch pairs of shard parts ((file, indices or None)), loaded in groups that fit
    ``max_bytes`` (float16 pairs)."""

    def __init__(self, parts: list, max_bytes: float):
        self.parts = parts
        self.sizes = []
        self.pair_bytes = 0
        for path, idx in parts:
            n = _shard_size(path) if idx is None else len(idx)
            self.sizes.append(n)
        if parts:
            with np.load(parts[0][0], allow_pickle=False) as z:
                self.pair_bytes = int(np.prod(z["pairs"].shape[1:])) * 2
        self.total = int(sum(self.sizes))
        self.max_bytes = max_bytes
        self._cache = None

    def load(self, which: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
        pairs, targets = [], []
        for i in which:
            path, idx = self.parts[i]
            pp = PatchPairs.load(path)
            sel = slice(None) if idx is None else idx
            pairs.append(pp.pairs[sel].astype(np.float16))
            targets.append(pp.targets[sel].astype(np.float32))
        return np.concatenate(pairs), np.concatenate(targets)

    def groups(self, rng: Optional[np.random.Generator]) -> List[List[int]]:
        order = list(range(len(self.parts))) if rng is None else rng.permutation(len(self.parts)).tolist()
        groups, cur, cur_bytes = [], [], 0
        for i in order:
            b = self.sizes[i] * self.pair_bytes
            if cur and cur_bytes + b > self.max_bytes:
                groups.append(cur)
                cur, cur_bytes = [], 0
            cur.append(i)
            cur_bytes += b
        if cur:
            groups.append(cur)
        return groups

    def batches(self, batch: int, rng: Optional[np.random.Generator]):
        """Yield (pairs float16, targets) batches; shuffled when ``rng`` is given."""
        groups = self.groups(rng)
        for group in groups:
            if len(groups) == 1:
                if self._cache is None:
                    self._cache = self.load(sorted(group))
                pairs, targets = self._cache
            else:
                pairs, targets = self.load(group)
            order = np.arange(len(targets)) if rng is None else rng.permutation(len(targets))
            for s in range(0, len(order), batch):
                sel = np.sort(order[s:s + batch]) if rng is None else order[s:s + batch]
                yield pairs[sel], targets[sel]



__all__ = ["build_dataset", "ShardData", "shard_files", "split_shards"]
