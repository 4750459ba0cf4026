"""The paper's training recipe (Ronchetti et al., MICCAI 2023, Sect. 3): one supervised output per
patch pair.

``train_paper`` fits :class:`disa.features.network.DISANet` so that
``<phi(A)[centre], phi(B)[centre]>`` matches the LC² target of 33^3 patch pairs from shards
(:mod:`.dataset`; MSE, only the centre output voxel), with AdamW (lr 1e-3, weight decay 1e-3)
and the paper's augmentations on the fly:

- the same random axis flips and axis permutations for both patches (symmetries of the cube:
  the target is exactly unchanged); the random rotation was applied when sampling;
- an independent random sign flip of each patch (LC² is exactly invariant);
- an independent random linear intensity change ``s x + o`` of each patch (LC² is invariant
  to it up to the ridge and the variance floor, so the target is recomputed on the augmented
  patches, which costs ~1% of a step and keeps it exact).

It needs a GPU to be practical (the paper: batch 256, 35 epochs of 510k pairs, 5 h on an
RTX 4090); on a CPU the dense recipe (:mod:`.loop`) supervises 512 outputs per crop pair and
is what this project trains with. Reported per epoch: ``val_mse`` (the paper's patch-wise L2
error) and ``val_mae``. A checkpoint is written after every epoch; ``resume=True`` continues
from it, and all randomness of epoch ``e`` comes from generators seeded with (seed, e), so a
resumed run repeats an uninterrupted one exactly on the CPU.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from ..errors import InputError
from ..registration.pipeline import resolve_device
from .checkpoints import load_checkpoint
from .dataset import ShardData, shard_files, split_shards
from .progress import progress_of
from .targets import lc2_target

CHECKPOINT_FORMAT = "disa-train-checkpoint-v1"
CHECKPOINT_NAME = "checkpoint.pt"


@dataclass
class PaperConfig:
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
class PaperReport:
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


def evaluate(model: torch.nn.Module, data: ShardData, batch: int, device: torch.device) -> Dict[str, float]:
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


def train_paper(config: PaperConfig) -> PaperReport:
    """Train (or resume training) the DISA network on the shards in ``config.data``; write a
    checkpoint per epoch and the final weights (``save_weights``) to ``config.out_dir``."""
    from ..features.network import DISANet
    from ..features.weights import save_weights
    from ..threads import torch_threads

    say = progress_of(config.progress)
    device = resolve_device(config.device)
    if config.batch_size is None:
        config.batch_size = 256 if device.type == "cuda" else 32
    if config.batch_size < 1 or config.epochs < 0:
        raise InputError("batch size must be >= 1 and epochs >= 0")
    with torch_threads(config.threads):
        return _train(config, device, say, DISANet, save_weights)


def _train(config, device, say, net_class, save_weights) -> PaperReport:
    t_start = time.perf_counter()
    files = shard_files(config.data)
    train_parts, val_parts, split = split_shards(files, config.val_fraction, config.seed)
    max_bytes = config.max_memory_gb * 2 ** 30
    train_data = ShardData(train_parts, max_bytes)
    val_data = ShardData(val_parts, max_bytes)
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
        ckpt = load_checkpoint(ckpt_path, CHECKPOINT_FORMAT, "paper-recipe training checkpoint")
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
    return PaperReport(history, weights, digest, ckpt_path, str(device), batch, train_data.total, val_data.total,
                       split, round(time.perf_counter() - t_start, 1), stopped_early)


__all__ = ["PaperConfig", "PaperReport", "train_paper", "augment_batch", "predict_pairs", "centre_index", "evaluate"]
