"""Training the DISA network to approximate LC² with a dot product of descriptors.

``build_dataset`` renders volume pairs (:mod:`disa.train.synth`) and samples patch pairs from
each (:mod:`disa.train.patches`) into one ``.npz`` shard per volume pair. ``train`` fits
:class:`disa.features.network.DISANet` so that ``<phi(A)[centre], phi(B)[centre]>`` matches the
LC² target (MSE; only the centre output voxel of each 33^3 patch is used), with AdamW
(lr 1e-3, weight decay 1e-3) and the paper's augmentations on the fly:

- the same random axis flips and axis permutations for both patches (symmetries of the cube:
  the target is exactly unchanged); the random rotation was applied when sampling;
- an independent random sign flip of each patch (LC² is exactly invariant);
- an independent random linear intensity change ``s x + o`` of each patch (LC² is invariant
  to it up to the ridge and the variance floor, so the target is recomputed on the augmented
  patches, which costs ~1% of a step and keeps it exact).

Validation pairs come from separate shards (whole volume pairs, no overlap with training)
when there are at least two shards, otherwise from a held-out part of the single shard.
Reported per epoch: ``val_mse`` = mean of (prediction - target)^2 (the paper's "patch-wise
L2 error" and our loss) and ``val_mae`` = mean |prediction - target|.

A checkpoint (model, optimizer, epoch, history, RNG state) is written after every epoch;
``resume=True`` continues from it. All randomness of epoch ``e`` (shuffling, augmentation)
comes from generators seeded with (seed, e), so a resumed run repeats an uninterrupted one
exactly on the CPU.
"""
from __future__ import annotations

import glob
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import InputError
from .patches import PatchPairs, lc2_target, sample_patch_pairs, target_histogram
from .synth import PairSpec, check_not_held_out, make_pair, make_pair_specs

CHECKPOINT_FORMAT = "disa-train-checkpoint-v1"
CHECKPOINT_NAME = "checkpoint.pt"


# ---------------------------------------------------------------------------------------------
# progress
class LineProgress:
    """Progress on stderr: one rewritten line on a terminal, else a line every ``every`` s."""

    def __init__(self, stream=None, every: float = 10.0):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every, self.last = every, 0.0

    def __call__(self, message: str, final: bool = False) -> None:
        now = time.perf_counter()
        if self.tty:
            self.stream.write("\r" + message[:150].ljust(150) + ("\n" if final else ""))
        elif final or now - self.last >= self.every:
            self.stream.write(message + "\n")
            self.last = now
        else:
            return
        self.stream.flush()


def _quiet(message: str, final: bool = False) -> None:
    return None


def _progress_of(progress) -> Callable:
    if progress is False or progress is None:
        return _quiet
    if progress is True:
        return LineProgress()
    return progress


# ---------------------------------------------------------------------------------------------
# data building
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
    say = _progress_of(progress)
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


# ---------------------------------------------------------------------------------------------
# training
@dataclass
class TrainConfig:
    """Settings of :func:`train` (``None`` batch size: 256 on CUDA, 32 on the CPU).

    ``warmup_steps``: the learning rate rises linearly to ``lr`` over the first steps. Not in
    the paper: with the small batches of a CPU run, lr 1e-3 from the first step saturates the
    norm-clipped descriptors (every dot product near 1) and training stalls; harmless at 256.
    """

    data: str
    out_dir: str
    epochs: int = 35
    batch_size: Optional[int] = None
    lr: float = 1e-3
    weight_decay: float = 1e-3
    warmup_steps: int = 100
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    augment: bool = True
    threads: Optional[int] = None
    max_steps_per_epoch: Optional[int] = None
    time_limit_s: Optional[float] = None
    max_memory_gb: float = 16.0
    weights_name: str = "disa_lc2.pt"
    metadata: Dict = field(default_factory=dict)
    progress: Union[bool, Callable, None] = True
    model_factory: Optional[Callable[[], torch.nn.Module]] = None

    def fingerprint(self) -> dict:
        """Settings a resumed run must share with the checkpoint."""
        return {"batch_size": self.batch_size, "lr": self.lr, "weight_decay": self.weight_decay,
                "warmup_steps": self.warmup_steps,
                "val_fraction": self.val_fraction, "seed": self.seed, "augment": self.augment,
                "max_steps_per_epoch": self.max_steps_per_epoch}


@dataclass
class TrainReport:
    """What :func:`train` did: per-epoch ``history`` (epoch, train_mse, val_mse, val_mae,
    seconds, steps, pairs_per_second), the weights and checkpoint written, the split."""

    history: List[dict]
    weights: Optional[str]
    sha256: Optional[str]
    checkpoint: str
    device: str
    batch_size: int
    n_train: int
    n_val: int
    split: str
    seconds: float
    stopped_early: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise InputError(f"unknown device {name!r}; use auto, cpu or cuda") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device cuda requested but CUDA is not available; use --device cpu")
    return dev


def _shards(data: str) -> List[str]:
    if os.path.isfile(data):
        return [os.path.abspath(data)]
    files = sorted(glob.glob(os.path.join(os.fspath(data), "*.npz")))
    if not files:
        raise InputError(f"no training shards (*.npz) in {data}; build them with build_dataset / disa train --build")
    return [os.path.abspath(f) for f in files]


def _shard_size(path: str) -> int:
    with np.load(path, allow_pickle=False) as z:
        return int(z["targets"].shape[0])


def _split(files: List[str], val_fraction: float, seed: int) -> Tuple[list, list, str]:
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


class _PartData:
    """Loads parts into memory (float16 pairs), in groups that fit ``max_bytes``."""

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


def augment_batch(x: torch.Tensor, gen: torch.Generator, scale_range: float = 1.5,
                  shift_range: float = 0.5) -> torch.Tensor:
    """Augment (B, 2, S, S, S) patch pairs: the same random axis flips and axis permutation for
    both patches of a pair, then per patch a random sign and a random ``s x + o`` with
    ``log s ~ U(-log scale_range, log scale_range)``, ``o ~ U(-shift_range, shift_range)``."""
    b = x.shape[0]
    for dim in (2, 3, 4):
        flip = torch.rand(b, generator=gen) < 0.5
        if bool(flip.any()):
            x = torch.where(flip.view(b, 1, 1, 1, 1).to(x.device), x.flip(dim), x)
    perms = ((2, 3, 4), (2, 4, 3), (3, 2, 4), (3, 4, 2), (4, 2, 3), (4, 3, 2))
    which = torch.randint(0, len(perms), (b,), generator=gen)
    out = x.clone()
    for k, p in enumerate(perms[1:], start=1):
        sel = (which == k).nonzero().reshape(-1).to(x.device)
        if sel.numel():
            out[sel] = x[sel].permute(0, 1, *p)
    sign = torch.where(torch.rand(b, 2, generator=gen) < 0.5, -1.0, 1.0)
    log_s = (torch.rand(b, 2, generator=gen) * 2 - 1) * math.log(scale_range)
    shift = (torch.rand(b, 2, generator=gen) * 2 - 1) * shift_range
    scale = (sign * torch.exp(log_s)).to(out)
    return out * scale.view(b, 2, 1, 1, 1) + shift.to(out).view(b, 2, 1, 1, 1)


def centre_index(size: int) -> int:
    """Output voxel of the network that sits on the centre of a ``size`` patch (stride 4)."""
    half = size // 2
    if size % 2 == 0 or half % 4:
        raise InputError(f"patch size {size} has no output voxel on its centre (need odd size, (size-1)/2 % 4 == 0)")
    return half // 4


def predict_pairs(model: torch.nn.Module, pairs: torch.Tensor) -> torch.Tensor:
    """<phi(A)[centre], phi(B)[centre]> for (B, 2, S, S, S) pairs (one network pass for both)."""
    b, s = pairs.shape[0], pairs.shape[-1]
    c = centre_index(s)
    feats = model(torch.cat([pairs[:, 0:1], pairs[:, 1:2]], 0))[:, :, c, c, c]
    return (feats[:b] * feats[b:]).sum(1)


def evaluate(model: torch.nn.Module, data: _PartData, batch: int, device: torch.device) -> Dict[str, float]:
    """Validation errors (no augmentation): ``mse`` mean squared and ``mae`` mean absolute."""
    model.eval()
    se, ae, n = 0.0, 0.0, 0
    with torch.no_grad():
        for pairs, targets in data.batches(batch, None):
            x = torch.from_numpy(pairs.astype(np.float32)).to(device)
            pred = predict_pairs(model, x).double().cpu()
            err = pred - torch.from_numpy(targets).double()
            se += float((err * err).sum())
            ae += float(err.abs().sum())
            n += len(targets)
    return {"mse": se / max(n, 1), "mae": ae / max(n, 1)}


def _epoch_rngs(seed: int, epoch: int) -> Tuple[np.random.Generator, torch.Generator]:
    state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(2)
    gen = torch.Generator()
    gen.manual_seed(int(state[1]))
    return np.random.default_rng(int(state[0])), gen


def _shard_provenance(files: List[str]) -> List[dict]:
    out = []
    for f in files:
        try:
            with np.load(f, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
                n = int(z["targets"].shape[0])
        except (OSError, ValueError, KeyError):
            meta, n = {}, -1
        out.append({"file": os.path.basename(f), "pairs": n, "name": meta.get("name"),
                    "spec": (meta.get("recipe") or {}).get("spec")})
    return out


def load_checkpoint(path: str, fmt: str, what: str) -> dict:
    """A training checkpoint (tensors only) after checking its ``format`` tag; ``what`` names
    the expected kind in the error."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt.get("format") != fmt:
        raise InputError(f"{path} is not a {what}")
    return ckpt


def train(config: TrainConfig) -> TrainReport:
    """Train (or resume training) the DISA network on the shards in ``config.data``; write a
    checkpoint per epoch and the final weights (``save_weights``) to ``config.out_dir``."""
    from ..features.network import DISANet
    from ..features.weights import save_weights
    from ..threads import torch_threads

    say = _progress_of(config.progress)
    device = _device(config.device)
    if config.batch_size is None:
        config.batch_size = 256 if device.type == "cuda" else 32
    if config.batch_size < 1 or config.epochs < 0:
        raise InputError("batch size must be >= 1 and epochs >= 0")
    with torch_threads(config.threads):
        return _train(config, device, say, DISANet, save_weights)


def _train(config, device, say, net_class, save_weights) -> TrainReport:
    t_start = time.perf_counter()
    files = _shards(config.data)
    train_parts, val_parts, split = _split(files, config.val_fraction, config.seed)
    max_bytes = config.max_memory_gb * 2 ** 30
    train_data = _PartData(train_parts, max_bytes)
    val_data = _PartData(val_parts, max_bytes)
    if train_data.total == 0:
        raise InputError(f"no training pairs in {config.data}")
    data_id = [(os.path.basename(p), None if i is None else int(len(i))) for p, i in train_parts + val_parts]

    factory = config.model_factory or net_class
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(config.seed))
        model = factory()
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    os.makedirs(config.out_dir, exist_ok=True)
    ckpt_path = os.path.join(config.out_dir, CHECKPOINT_NAME)
    history: List[dict] = []
    start_epoch = 0
    if config.resume and os.path.exists(ckpt_path):
        ckpt = load_checkpoint(ckpt_path, CHECKPOINT_FORMAT, "DISA training checkpoint")
        if ckpt["settings"] != config.fingerprint() or [tuple(d) for d in ckpt["data"]] != data_id:
            raise InputError(f"cannot resume from {ckpt_path}: it was written with other settings or data "
                             f"({ckpt['settings']}); start a new run in another folder")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["torch_rng"])
        history = list(ckpt["history"])
        start_epoch = int(ckpt["epoch"])
        say(f"resuming from {ckpt_path} after epoch {start_epoch}", final=True)
    elif config.resume:
        say(f"no checkpoint in {config.out_dir}: starting a new run", final=True)

    batch = int(config.batch_size)
    steps_per_epoch = int(math.ceil(train_data.total / batch))
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, int(config.max_steps_per_epoch))
    stopped_early = False
    for epoch in range(start_epoch, int(config.epochs)):
        t0 = time.perf_counter()
        model.train()
        rng, gen = _epoch_rngs(config.seed, epoch)
        loss_sum, n_seen, step = 0.0, 0, 0
        for pairs, targets in train_data.batches(batch, rng):
            if step >= steps_per_epoch:
                break
            x = torch.from_numpy(pairs.astype(np.float32)).to(device)
            y = torch.from_numpy(targets).to(device)
            if config.augment:
                x = augment_batch(x, gen)
                y = lc2_target(x[:, 0], x[:, 1])  # exact for the augmented patches
            done = sum(int(h["steps"]) for h in history) + step
            for group in opt.param_groups:
                group["lr"] = config.lr * min(1.0, (done + 1) / max(1, int(config.warmup_steps)))
            pred = predict_pairs(model, x)
            loss = torch.mean((pred - y) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += float(loss.detach()) * len(targets)
            n_seen += len(targets)
            el = time.perf_counter() - t0
            say(f"epoch {epoch + 1}/{config.epochs} step {step}/{steps_per_epoch} loss {loss_sum / n_seen:.5f} "
                f"{n_seen / max(el, 1e-9):.1f} pairs/s ETA {el / step * (steps_per_epoch - step):.0f} s")
        val = evaluate(model, val_data, 2 * batch, device) if val_data.total else {"mse": float("nan"), "mae": float("nan")}
        seconds = time.perf_counter() - t0
        stats = {"epoch": epoch + 1, "train_mse": loss_sum / max(n_seen, 1), "val_mse": val["mse"],
                 "val_mae": val["mae"], "seconds": round(seconds, 2), "steps": step,
                 "pairs_per_second": round(n_seen / max(seconds, 1e-9), 2)}
        history.append(stats)
        say(f"epoch {epoch + 1}/{config.epochs}: train mse {stats['train_mse']:.5f}, val mse {val['mse']:.5f}, "
            f"val mae {val['mae']:.5f}, {seconds:.0f} s", final=True)
        ckpt = {"format": CHECKPOINT_FORMAT, "epoch": epoch + 1, "model": model.state_dict(),
                "optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(), "history": history,
                "settings": config.fingerprint(), "data": data_id}
        tmp = ckpt_path + ".tmp"
        torch.save(ckpt, tmp)
        os.replace(tmp, ckpt_path)
        if config.time_limit_s is not None and epoch + 1 < config.epochs:
            if time.perf_counter() - t_start + seconds > config.time_limit_s:
                stopped_early = True
                say(f"stopping after epoch {epoch + 1}: the next epoch would pass the time limit", final=True)
                break

    weights, digest = None, None
    if config.weights_name and not config.model_factory:
        weights = os.path.join(config.out_dir, config.weights_name)
        meta = {"kind": "DISA-LC2", "target": "LC2 mean over radii 3,5,7, ridge 1e-3 (slopes), var floor 1e-2",
                "training": {"epochs_completed": len(history), "batch_size": batch, "lr": config.lr,
                             "warmup_steps": config.warmup_steps, "optimizer": "AdamW",
                             "weight_decay": config.weight_decay, "seed": config.seed, "device": str(device),
                             "augment": config.augment, "split": split, "n_train": train_data.total,
                             "n_val": val_data.total, "seconds": round(time.perf_counter() - t_start, 1),
                             "torch": torch.__version__},
                "history": history, "data": {"shards": _shard_provenance(files)}}
        summary = os.path.join(config.data, "dataset.json") if os.path.isdir(config.data) else None
        if summary and os.path.exists(summary):  # how the pairs were sampled (build_dataset)
            with open(summary, "r", encoding="utf-8") as f:
                built = json.load(f)
            meta["data"]["sampling"] = {k: v for k, v in built.items() if k != "shards"}
        if history:
            meta["validation"] = {"val_mse": history[-1]["val_mse"], "val_mae": history[-1]["val_mae"],
                                  "train_mse": history[-1]["train_mse"]}
        meta.update(config.metadata or {})
        digest = save_weights(weights, model.cpu(), meta)
        model.to(device)
    return TrainReport(history, weights, digest, ckpt_path, str(device), batch, train_data.total, val_data.total,
                       split, round(time.perf_counter() - t_start, 1), stopped_early)


# ---------------------------------------------------------------------------------------------
#: Validation material of dense training: volume pairs the dense stream never renders.
DENSE_VAL_US = ("Case26", "Case27")
DENSE_VAL_SEED = 777001


def dense_validation_specs(data_dir: str) -> List[PairSpec]:
    """Five synthetic pairs (a seed the dense stream does not use) and the two held-out
    ultrasound volumes with a template partner: the paper-style validation pairs."""
    specs = make_pair_specs(data_dir, n_synthetic=5, us_pairs_per_file=0, seed=DENSE_VAL_SEED)
    for i, case in enumerate(DENSE_VAL_US):
        path = os.path.join(os.fspath(data_dir), "resect", "us_only", f"{case}-US.nii.gz")
        if os.path.exists(path):
            specs.append(PairSpec("us", 4242 + i, "mni", "t2", None, None, os.path.abspath(path)))
    return specs


def _run_dense(args, progress: bool) -> int:
    from .dense import DenseConfig, train_dense

    if not args.source_dir:
        raise InputError("--dense needs --source-dir (the folder holding templates/ and resect/us_only/)")
    if args.build or args.build_only:
        summary = build_dataset(args.data, dense_validation_specs(args.source_dir), 200, seed=DENSE_VAL_SEED,
                                data_dir=args.source_dir, candidates=1000, progress=progress)
        print(f"built {summary['pairs']} validation pairs in {args.data}")
        if args.build_only:
            return 0
    config = DenseConfig(source_dir=args.source_dir, out_dir=args.output_dir, val_data=args.data, steps=args.steps,
                         batch_pairs=args.batch_pairs, lr=args.lr, weight_decay=args.weight_decay,
                         warmup_steps=args.warmup_steps, eval_every=args.eval_every, seed=args.seed,
                         device=args.device, threads=args.threads, time_limit_s=args.time_limit,
                         resume=args.resume, exclude_us=DENSE_VAL_US)
    report = train_dense(config, progress=print if progress else (lambda m: None))
    print(f"wrote {report['weights']} (sha256 {report['sha256']})")
    with open(os.path.join(args.output_dir, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    return 0


# ---------------------------------------------------------------------------------------------
# command line (wired as ``disa train`` by disa/cli.py; options in disa.train.add_train_arguments)
def run_from_args(args) -> int:
    """Run ``disa train`` from parsed arguments; prints the report, writes report.json."""
    progress = not args.quiet
    if getattr(args, "dense", False):
        return _run_dense(args, progress)
    if args.build or args.build_only:
        sources: list = []
        if args.source_dir:
            sources += make_pair_specs(args.source_dir, args.synthetic, args.us_per_file, seed=args.seed)
        sources += [tuple(p) for p in args.pair]
        if not sources:
            raise InputError("--build needs --source-dir (templates and ultrasound) or --pair A B")
        summary = build_dataset(args.data, sources, args.pairs_per_volume, seed=args.seed, data_dir=args.source_dir,
                                candidates=args.candidates, progress=progress)
        print(f"built {summary['pairs']} pairs from {len(summary['shards'])} volume pairs in {args.data} "
              f"({summary['seconds']} s); target histogram (10 bins over [0,1]): {summary['target_histogram']}")
        if args.build_only:
            return 0
    config = TrainConfig(data=args.data, out_dir=args.output_dir, epochs=args.epochs, batch_size=args.batch_size,
                         lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
                         val_fraction=args.val_fraction, seed=args.seed,
                         device=args.device, resume=args.resume, augment=not args.no_augment, threads=args.threads,
                         max_steps_per_epoch=args.max_steps_per_epoch, time_limit_s=args.time_limit,
                         progress=progress)
    report = train(config)
    for h in report.history:
        print(f"epoch {h['epoch']:3d}  train mse {h['train_mse']:.5f}  val mse {h['val_mse']:.5f}  "
              f"val mae {h['val_mae']:.5f}  {h['seconds']:.0f} s")
    print(f"wrote {report.weights} (sha256 {report.sha256})")
    with open(os.path.join(args.output_dir, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report.to_dict(), f, indent=2)
    return 0
