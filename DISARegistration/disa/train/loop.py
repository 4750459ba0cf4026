"""The dense DISA training loop: every step on the training device, checkpoints, resume and a
clean stop at a time limit, so several short GPU windows add up to one run.

Per step: crop pairs cut from the pool's volumes by one batched sampling call
(:mod:`.crops`), their LC² targets and weights by pooled moments (:mod:`.targets`), then

    loss = lc2 * weighted MSE(<phi(A), phi(B)>, LC²)
         + distill(step) * MSE(phi(x), oracle(x))          (warm start, fades out)
         + norm_penalty * mean(relu(|y| - 1)^2)            (y: descriptors before clipping)

over every supervised output (8^3 per 64^3 crop pair). The distillation term pulls the
descriptors towards the parameter-free MIND-SSC oracle (:mod:`disa.features.mind_oracle`),
which already correlates with LC² at 0.74 on held-out crops. The norm penalty keeps
descriptors inside the unit ball: past it, norm clipping passes no radial gradient, so a
descriptor that grew too long early could never shrink again.

Volume pairs come from :func:`.sources.render_pair`, rendered by background processes into
a pool that is refreshed as training goes. The learning curve (:mod:`.curve`) is evaluated
every ``eval_every`` steps on held-out crop pairs; each evaluation writes ``curve.json`` and
``curve.png``, keeps the weights of that step under ``snapshots/`` (for the registration-based
checkpoint selection of :mod:`.select`) and an atomic ``checkpoint.pt``.
"""
from __future__ import annotations

import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import MISSING, asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..features.mind_oracle import MINDOracle
from ..features.network import DISANet, clip_norm, seeded_model
from ..registration.pipeline import resolve_device
from .checkpoints import CHECKPOINT_NAME, load_checkpoint, save_checkpoint, save_snapshot
from .crops import PoolEntry, VolumeAtlas, sample_crop_pairs
from .curve import CROP, FIRST, CurveSet, last_output, output_weights, write_curve
from .sources import DEFAULT_MIX, DEFAULT_SCALES, KINDS, curve_pair_jobs, curve_pairs, render_pair, training_us_files
from .synth import TEMPLATES, load_template
from .targets import dense_targets


@dataclass
class TrainConfig:
    """Settings of :func:`train` (see ``disa train --help`` for each)."""

    source_dir: str
    out_dir: str
    steps: int = 20000
    batch_pairs: int = 2
    crop: int = CROP
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 1e-3
    warmup_steps: int = 100
    lc2: float = 1.0
    distill: float = 0.0
    distill_until: int = 0
    norm_penalty: float = 1.0
    clip_grad: float = 1.0
    shifts: int = 4
    weighting: str = "variance"
    aligned_fraction: float = 0.4
    max_offset: float = 12.0
    # Shares of the kinds of training volume pairs (sources.KINDS: synthetic, us-self, us-template).
    mix: tuple = DEFAULT_MIX
    # Share of the us-self pairs rendered at the ultrasound's own 0.5 mm (sources.FINE_US_SPACING).
    fine_us_share: float = 0.0
    pool_size: int = 12
    refresh_every: int = 30
    render_workers: int = 0
    eval_every: int = 200
    curve_pairs: int = 8
    curve_crops: int = 48
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    # Channels-last network layout in training: a whole step 2x faster on the CPU, 1.8x on an
    # H200 in bfloat16 (8.0 vs 4.5 steps/s at batch 32) and 1.5x in float32.
    channels_last: bool = True
    threads: Optional[int] = None
    time_limit_s: Optional[float] = None
    resume: bool = False
    init: Optional[str] = None
    metadata: Dict = field(default_factory=dict)

    def check(self) -> None:
        if self.crop < 40 or self.crop % 4:
            raise InputError("--crop must be a multiple of 4 and at least 40")
        if not 0 <= self.shifts <= 124:
            raise InputError("--shifts must lie in [0, 124]")
        for name in ("steps", "batch_pairs", "pool_size", "refresh_every", "eval_every", "curve_pairs", "curve_crops"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("lr", "min_lr", "weight_decay", "lc2", "distill", "norm_penalty", "clip_grad", "max_offset"):
            v = float(getattr(self, name))
            if not math.isfinite(v) or v < 0:
                raise InputError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {v}")
        mix = [float(x) for x in self.mix]
        if len(mix) != len(KINDS) or not all(math.isfinite(x) and x >= 0 for x in mix) or sum(mix) <= 0:
            raise InputError(f"--mix takes {len(KINDS)} shares >= 0 ({', '.join(KINDS)}) that do not all vanish")
        if not 0.0 <= float(self.fine_us_share) <= 1.0:
            raise InputError("--fine-us-share must lie in [0, 1]")
        if not 0.0 <= self.aligned_fraction <= 1.0:
            raise InputError("--aligned-fraction must lie in [0, 1]")
        if self.weighting not in ("variance", "none"):
            raise InputError("--weighting must be variance or none")
        if self.precision not in ("auto", "float32", "bfloat16"):
            raise InputError("--precision must be auto, float32 or bfloat16")


#: Settings that make up the run (its recipe and its learning curve). ``--resume`` takes them from
#: the checkpoint, so a run resumed on another machine goes on as it started; an option given
#: again explicitly changes it from then on. The others (device, threads, time limit, render
#: workers, pool size) belong to the machine and are taken from the resuming call.
RECIPE = ("steps", "batch_pairs", "crop", "lr", "min_lr", "weight_decay", "warmup_steps", "lc2", "distill",
          "distill_until", "norm_penalty", "clip_grad", "shifts", "weighting", "aligned_fraction", "max_offset",
          "mix", "fine_us_share", "refresh_every", "eval_every", "curve_pairs", "curve_crops", "seed", "precision")
#: Defaults that depend on the training device (the rest are TrainConfig's own).
DEVICE_DEFAULTS = {"cuda": {"batch_pairs": 32, "pool_size": 48, "eval_every": 500},
                   "cpu": {"batch_pairs": 2, "pool_size": 12, "eval_every": 100, "render_workers": 0}}


def run_config(source_dir: str, out_dir: str, given: Dict[str, object], device: str = "auto",
               resume: bool = False, progress: Callable[[str], None] = lambda m: None) -> TrainConfig:
    """The settings of a new or resumed run. ``given``: the settings asked for explicitly
    (TrainConfig names; None counts as not given). A new run fills the rest from the device's
    defaults and TrainConfig's; a resumed run (a checkpoint in ``out_dir``) takes every
    ``RECIPE`` setting from the checkpoint unless ``given`` changes it, and says which it changed."""
    given = {k: v for k, v in given.items() if v is not None}
    if "mix" in given:  # a tuple here, a list in a checkpoint: compared as lists
        given["mix"] = [float(x) for x in given["mix"]]
    unknown = sorted(set(given) - set(TrainConfig.__dataclass_fields__))
    if unknown:
        raise InputError(f"unknown training settings: {', '.join(unknown)}")
    cuda = resolve_device(device).type == "cuda"
    defaults = dict(DEVICE_DEFAULTS["cuda" if cuda else "cpu"])
    if cuda:
        defaults["render_workers"] = max(1, (os.cpu_count() or 4) - 2)
    ckpt_path = os.path.join(out_dir, CHECKPOINT_NAME)
    values = {**defaults, **given}
    if resume and os.path.exists(ckpt_path):
        if given.get("init"):
            raise InputError("--init starts a new run; a resumed run goes on from its checkpoint")
        ck = load_checkpoint(ckpt_path)
        saved = ck.get("config") or {}
        # a setting the checkpoint predates ran at TrainConfig's default
        fields = TrainConfig.__dataclass_fields__
        kept = {k: saved[k] if k in saved else fields[k].default for k in RECIPE
                if k in saved or fields[k].default is not MISSING}
        if "mix" in kept:
            kept["mix"] = [float(x) for x in kept["mix"]]
        changed = {k: (kept[k], given[k]) for k in RECIPE if k in given and k in kept and given[k] != kept[k]}
        values = {**defaults, **kept, **given}
        resumes = list((saved.get("metadata") or {}).get("resumes", []))
        resumes.append({"after_step": int(ck["step"]), "changed": {k: list(v) for k, v in changed.items()}})
        values["metadata"] = {**(saved.get("metadata") or {}), "resumes": resumes}
        progress(f"resuming with the run's settings (lr {values['lr']:g}, {values['steps']} steps, batch "
                 f"{values['batch_pairs']})" + ("; changed: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in
                                                                       changed.items()) if changed else ""))
    return TrainConfig(source_dir=source_dir, out_dir=out_dir, device=device, resume=resume, **values)


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay from ``lr`` to ``min_lr`` at ``steps``."""
    if step <= config.warmup_steps:
        return config.lr * step / max(1, config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1.0 + math.cos(math.pi * progress))


def distill_weight(config: TrainConfig, step: int) -> float:
    """The distillation weight: constant, or fading linearly to 0 at ``distill_until``."""
    if config.distill_until <= 0:
        return config.distill
    return config.distill * max(0.0, 1.0 - step / config.distill_until)


class Pool:
    """Training volume pairs in an atlas on the device, refreshed from background renders.

    With render workers, ``start`` queues the first ``pool_size`` renders without waiting (behind
    the learning curve's, so both keep every worker busy) and ``fill(minimum)`` returns once that
    many slots hold a pair: training starts on them while the rest arrive at ``refresh``.
    """

    def __init__(self, config: TrainConfig, device: torch.device, start_index: int):
        self.config, self.next_index = config, int(start_index)
        self.us_files = training_us_files(config.source_dir)
        shape = np.max([load_template(config.source_dir, t).t1.shape for t in TEMPLATES], 0)
        self.atlas = VolumeAtlas(2 * config.pool_size, shape, device)
        self.entries: List[Optional[PoolEntry]] = [None] * config.pool_size
        self.names: List[str] = []
        self.replace_at = 0
        # spawned, not forked: a fork of a process that holds a CUDA context is not safe
        self.executor = (ProcessPoolExecutor(config.render_workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_render_worker_init)
                         if config.render_workers > 0 else None)
        self.filling: List[tuple] = []  # (slot, future) of the first fill, in submission order
        self.pending = []

    def _render(self):
        i, self.next_index = self.next_index, self.next_index + 1
        mix = [float(x) for x in self.config.mix]
        if abs(sum(mix) - 1.0) > 1e-9:  # shares as given; the default stream is drawn with them unchanged
            mix = [x / sum(mix) for x in mix]
        args = (self.config.source_dir, self.config.seed, i, self.us_files, tuple(mix), DEFAULT_SCALES,
                float(self.config.fine_us_share))
        return self.executor.submit(render_pair, *args) if self.executor else render_pair(*args)

    def _put(self, slot: int, pair) -> None:
        self.atlas.put(2 * slot, pair.a)
        self.atlas.put(2 * slot + 1, pair.b)
        self.entries[slot] = PoolEntry(2 * slot, 2 * slot + 1, pair.centres_a, pair.centres_b, pair.same_grid,
                                       pair.scale, pair.name)
        self.names.append(pair.name)

    def ready(self) -> List[PoolEntry]:
        """The slots that hold a pair (all of them once the first fill is in)."""
        return [e for e in self.entries if e is not None]

    def start(self) -> None:
        """Queue the first fill's renders in the background (no-op without workers, or twice)."""
        if self.executor is not None and not self.filling and not self.ready():
            self.filling = [(slot, self._render()) for slot in range(self.config.pool_size)]

    def fill(self, minimum: Optional[int] = None) -> None:
        """Fill the pool; with workers, return once ``minimum`` slots (default: all) hold a pair,
        in submission order, and queue one further render per worker for the refreshes."""
        if self.executor is None:
            for slot in range(self.config.pool_size):
                self._put(slot, self._render())
            return
        self.start()
        need = self.config.pool_size if minimum is None else max(1, min(int(minimum), self.config.pool_size))
        while len(self.ready()) < need:
            slot, job = self.filling.pop(0)
            self._put(slot, job.result())
        self._take_filled()
        self.pending = [self._render() for _ in range(self.config.render_workers)]

    def _take_filled(self) -> None:
        still = []
        for slot, job in self.filling:
            if job.done():
                self._put(slot, job.result())
            else:
                still.append((slot, job))
        self.filling = still

    def refresh(self, step: int) -> None:
        """Swap finished background renders in (or render one pair every ``refresh_every`` steps);
        while the first fill is still arriving, its pairs go into their empty slots first."""
        if self.executor is None:
            if step % self.config.refresh_every == 0:
                self._put(self.replace_at, self._render())
                self.replace_at = (self.replace_at + 1) % self.config.pool_size
            return
        if self.filling:
            self._take_filled()
            return
        still = []
        for job in self.pending:
            if job.done():
                self._put(self.replace_at, job.result())
                self.replace_at = (self.replace_at + 1) % self.config.pool_size
                still.append(self._render())
            else:
                still.append(job)
        self.pending = still

    def close(self) -> None:
        if self.executor:
            self.executor.shutdown(wait=False, cancel_futures=True)


def _render_worker_init() -> None:
    torch.set_num_threads(1)  # one core per renderer; the trainer keeps the rest


def _autocast(device: torch.device, precision: str):
    if precision == "bfloat16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def outputs_per_crop(crop: int) -> int:
    """Supervised outputs of one crop pair of ``crop``^3: (crop/4 - 8)^3."""
    return (last_output(crop) - FIRST + 1) ** 3


def outputs_per_step(config: TrainConfig) -> int:
    """Supervised outputs of one step: ``batch_pairs`` crop pairs of ``crop``^3."""
    return int(config.batch_pairs) * outputs_per_crop(config.crop)


#: Supervised outputs of one step in the reference layout (32 crop pairs of 64^3, 8^3 outputs
#: each): ``reference_steps_per_s`` in the learning curve is a run's rate of supervised outputs in
#: those steps, so runs with other crop sizes or batches compare at equal supervision.
REFERENCE_OUTPUTS = 32 * outputs_per_crop(CROP)

#: Largest shift (outputs, 4 voxels each) between the A and B outputs compared by ``shifts``.
MAX_SHIFT = 2


def random_shifts(n: int, rng: np.random.Generator) -> List[tuple]:
    """``n`` distinct non-zero output shifts (z, y, x), each component in [-MAX_SHIFT, MAX_SHIFT]."""
    r = range(-MAX_SHIFT, MAX_SHIFT + 1)
    all_shifts = [(a, b, c) for a in r for b in r for c in r if (a, b, c) != (0, 0, 0)]
    return [all_shifts[i] for i in rng.choice(len(all_shifts), size=min(n, len(all_shifts)), replace=False)]


def step_loss(model, oracle, xa, xb, config: TrainConfig, step: int, device: torch.device,
              shifts: Sequence[tuple] = ()):
    """The loss of one batch of crop pairs and its parts (floats).

    Each B output p is compared with the A output at p and, for every output shift s in
    ``shifts``, with the A output at p + s (target: LC² of the A cube 4s voxels away). One
    network pass then supervises the same B descriptor against several nearby A descriptors,
    which is what registration asks of it: peak where the structures coincide.
    """
    n, last = xa.shape[0], last_output(xa.shape[-1])
    k, m = last - FIRST + 1, MAX_SHIFT if shifts else 0
    with torch.no_grad():
        targets, var_b = [], None
        for s in [(0, 0, 0)] + list(shifts):
            moved = torch.roll(xa, [-4 * c for c in s], dims=(2, 3, 4)) if any(s) else xa
            t, v = dense_targets(moved, xb, FIRST, last)
            targets.append(t)
            var_b = v if var_b is None else var_b
        weight = output_weights(var_b) if config.weighting == "variance" else torch.ones_like(var_b)
    x = torch.cat([xa, xb])
    if config.channels_last:  # see TrainConfig.channels_last
        x = x.contiguous(memory_format=torch.channels_last_3d)
    with _autocast(device, config.precision):
        y = model.layers(x)[:, :, FIRST - m:last + m + 1, FIRST - m:last + m + 1, FIRST - m:last + m + 1]
    y = y.float()
    f = clip_norm(y)
    fa, fb = f[:n], f[n:, :, m:m + k, m:m + k, m:m + k]
    lc2 = 0.0
    for s, target in zip([(0, 0, 0)] + list(shifts), targets):
        a = fa[:, :, m + s[0]:m + s[0] + k, m + s[1]:m + s[1] + k, m + s[2]:m + s[2] + k]
        pred = (a * fb).sum(1, keepdim=True)
        lc2 = lc2 + (weight * (pred - target) ** 2).sum() / weight.sum()
    lc2 = lc2 / len(targets)
    loss = config.lc2 * lc2
    parts = {"lc2_loss": lc2}
    dw = distill_weight(config, step)
    if dw > 0:
        with torch.no_grad():
            teacher = oracle(x)[:, :, FIRST - m:last + m + 1, FIRST - m:last + m + 1, FIRST - m:last + m + 1]
        distill = (f - teacher).square().sum(1).mean()
        loss = loss + dw * distill
        parts["distill_loss"] = distill
    if config.norm_penalty > 0:
        excess = torch.relu(torch.linalg.vector_norm(y, dim=1) - 1.0).square().mean()
        loss = loss + config.norm_penalty * excess
        parts["norm_excess"] = excess
    return loss, {k: float(v.detach()) for k, v in parts.items()}


def train(config: TrainConfig, progress: Callable[[str], None] = print) -> dict:
    """Train (or resume) a DISA network; returns the final report (history, files written)."""
    from ..threads import torch_threads

    config.check()
    autotune = torch.backends.cudnn.benchmark
    try:
        with torch_threads(config.threads):
            return _train(config, progress)
    finally:  # _train autotunes cuDNN for its fixed crop shape; the process keeps its own setting
        torch.backends.cudnn.benchmark = autotune


def _train(config: TrainConfig, progress) -> dict:
    device = resolve_device(config.device)
    os.makedirs(config.out_dir, exist_ok=True)
    ckpt_path = os.path.join(config.out_dir, CHECKPOINT_NAME)
    curve_path = os.path.join(config.out_dir, "curve.json")
    model = seeded_model(config.seed)
    initial = None
    if config.init:
        from ..features.weights import load_weights
        model.load_state_dict(load_weights(config.init)[0].state_dict())
    model.to(device).train()
    if config.channels_last:
        model.to(memory_format=torch.channels_last_3d)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # crops have one shape: the fastest kernels are found once
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    history: List[dict] = []
    step0, rendered = 0, 0
    if config.resume and os.path.exists(ckpt_path):
        ck = load_checkpoint(ckpt_path)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        history, step0, rendered = ck["history"], int(ck["step"]), int(ck.get("rendered", 0))
        progress(f"resuming after step {step0}")
    elif not config.init:
        initial = DISANet()
        initial.load_state_dict(model.state_dict())
    t_start = time.perf_counter()
    pool = Pool(config, device, start_index=rendered)  # its workers render the curve's pairs too
    try:  # the render workers are shut down however the run ends
        if pool.executor is not None:  # the curve's renders first, the pool's queued behind them
            jobs = curve_pair_jobs(config.source_dir, pool.executor, config.curve_pairs)
            pool.start()
            pairs = [job.result() for job in jobs]
        else:
            pairs = curve_pairs(config.source_dir, config.curve_pairs)
        curve = CurveSet(pairs, config.curve_crops, device=device)
        baselines = curve.baselines(initial.to(device) if initial is not None else None)
        if step0 == 0:
            history.append({"step": 0, **curve.evaluate(model), "seconds": 0.0})
        progress(f"learning curve: {len(curve.a)} held-out crop pairs from {len(curve.names)} volume pairs "
                 f"({time.perf_counter() - t_start:.0f} s)")
        t0 = time.perf_counter()
        pool.fill(config.render_workers or None)  # with workers: their first wave, the rest while training
        progress(f"{len(pool.ready())} of {config.pool_size} volume pairs of the pool ready "
                 f"{time.perf_counter() - t0:.0f} s later" + (", the rest rendering" if pool.filling else ""))
        oracle = MINDOracle().to(device)
        rng = np.random.default_rng([config.seed, step0])
        sums: Dict[str, float] = {}
        count, t_last, seconds0 = 0, time.perf_counter(), float(history[-1].get("seconds", 0.0)) if history else 0.0
        t_run = time.perf_counter()
        step = step0
        for step in range(step0 + 1, config.steps + 1):
            pool.refresh(step)
            xa, xb = sample_crop_pairs(pool.atlas, pool.ready(), config.batch_pairs, rng, config.crop,
                                       config.max_offset, config.aligned_fraction)
            for group in opt.param_groups:
                group["lr"] = learning_rate(config, step)
            loss, parts = step_loss(model, oracle, xa, xb, config, step, device, random_shifts(config.shifts, rng))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
            opt.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            out_of_time = config.time_limit_s is not None and time.perf_counter() - t_run > config.time_limit_s
            if step % config.eval_every == 0 or step == config.steps or out_of_time:
                now = time.perf_counter()
                steps_per_s = count / max(now - t_last, 1e-9)
                outputs_per_s = steps_per_s * outputs_per_step(config)
                entry = {"step": step, **curve.evaluate(model), "lr": learning_rate(config, step),
                         "train_loss": sums.get("lc2_loss", 0.0) / max(count, 1),
                         **{k: v / max(count, 1) for k, v in sums.items()},
                         "steps_per_s": round(steps_per_s, 3),
                         "outputs_per_s": round(outputs_per_s), "reference_steps_per_s":
                             round(outputs_per_s / REFERENCE_OUTPUTS, 3),
                         "seconds": round(seconds0 + now - t_run, 1), "volume_pairs_rendered": len(pool.names) + rendered}
                history.append(entry)
                progress(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items()
                                  if k in ("step", "r2", "wr2", "corr", "train_loss", "distill_loss", "flat_norm",
                                           "steps_per_s", "reference_steps_per_s")))
                save_snapshot(config.out_dir, step, model, entry)
                save_checkpoint(ckpt_path, model, opt, step, history, asdict(config), rendered + len(pool.names),
                                str(device))
                write_curve(curve_path, history, baselines, {"config": _jsonable(config), "device": str(device)})
                sums, count, t_last = {}, 0, time.perf_counter()
            if out_of_time:
                progress(f"time limit reached after step {step}; resume with --resume")
                break
    finally:
        pool.close()
    return {"history": history, "steps": step, "checkpoint": ckpt_path, "curve": curve_path,
            "device": str(device), "baselines": baselines}


def _jsonable(config: TrainConfig) -> dict:
    out = {k: v for k, v in asdict(config).items() if k != "metadata"}
    if config.metadata.get("resumes"):
        out["resumes"] = config.metadata["resumes"]  # what each --resume changed
    return out


__all__ = ["TrainConfig", "RECIPE", "REFERENCE_OUTPUTS", "outputs_per_step", "DEVICE_DEFAULTS", "run_config", "train", "learning_rate", "distill_weight", "step_loss", "random_shifts", "Pool"]
