"""``disa train``: the dense trainer (default), checkpoint selection (``--select``) and the
paper's recipe (``--paper``). Options are declared here with argparse only, so the top-level
command line lists them without importing torch."""
from __future__ import annotations

import argparse
import json
import os


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``disa train``."""
    p.add_argument("--source-dir", metavar="DIR",
                   help="folder holding templates/ and resect/us_only/ (e.g. ../shared/data): where training "
                        "volume pairs are rendered from")
    p.add_argument("--output-dir", default="disa-train-run", metavar="DIR",
                   help="run folder: checkpoint.pt, curve.json/.png, snapshots/ (default disa-train-run)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in OUTPUT_DIR from its checkpoint, with the run's own settings (learning "
                        "rate, steps, batch, ...); an option given again changes that setting from then on")
    p.add_argument("--time-limit", type=float, default=None, metavar="S",
                   help="stop cleanly (checkpoint written) after S seconds of training; resume with --resume")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--seed", type=int, help="seed of the data stream and the initialization (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--pack-sources", metavar="DIR", default=None,
                   help="write --source-dir's templates and ultrasound volumes to DIR as NumPy archives (ultrasound "
                        "already on the training grid) and stop: a machine without SimpleITK trains from DIR "
                        "(--source-dir DIR), rendering the same volume pairs (with --fine-us-share, the 0.5 mm "
                        "ultrasound too)")
    d = p.add_argument_group("dense training (default): 64^3 crop pairs, 512 supervised outputs each")
    d.add_argument("--steps", type=int, help="total steps of the run (default 20000; the learning-rate schedule "
                                             "spans them)")
    d.add_argument("--crop-size", type=int,
                   help="side of the crops in voxels (multiple of 4, >= 40; default 64: 8^3 supervised outputs)")
    d.add_argument("--batch-pairs", type=int, default=None, help="crop pairs per step (default 32 on CUDA, 2 on the CPU)")
    d.add_argument("--lr", type=float, help="AdamW peak learning rate (default 1e-3)")
    d.add_argument("--min-lr", type=float, help="learning rate at the end of the cosine decay (default 1e-5)")
    d.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 1e-3)")
    d.add_argument("--warmup-steps", type=int, help="linear learning-rate warm-up (default 100)")
    d.add_argument("--lc2-weight", type=float, help="weight of the LC2 regression loss (default 1)")
    d.add_argument("--distill", type=float,
                   help="weight of the MIND-SSC oracle distillation loss (warm start; default 0)")
    d.add_argument("--distill-until", type=int,
                   help="fade the distillation weight linearly to 0 at this step (default 0: keep it constant)")
    d.add_argument("--norm-penalty", type=float,
                   help="weight of the penalty on descriptor norms above 1 before clipping (default 1)")
    d.add_argument("--clip-grad", type=float, help="gradient norm clipping (0: off; default 1)")
    d.add_argument("--shifts", type=int,
                   help="per step, also compare each B output with the A outputs at this many random nearby "
                        "shifts (up to 8 voxels; default 4)")
    d.add_argument("--weighting", choices=["variance", "none"],
                   help="weight of each output in the LC2 loss: LC2's patch weight (local variance of B, capped; "
                        "default) or none (the paper: its B patches are drawn by that weight, as the crop centres are)")
    d.add_argument("--aligned-fraction", type=float,
                   help="share of crop pairs cut at the same point of one-grid pairs (default 0.4)")
    d.add_argument("--mix", type=float, nargs=3, metavar=("SYN", "US_SELF", "US_TEMPLATE"),
                   help="shares of the training volume pairs: synthetic, real ultrasound with a remapped copy of "
                        "itself, real ultrasound with an unrelated template (default 0.7 0.15 0.15)")
    d.add_argument("--fine-us-share", type=float,
                   help="share of the real-ultrasound self pairs rendered at the ultrasound's own 0.5 mm (crops at "
                        "0.5 mm per voxel; default 0). With --pack-sources: pack the 0.5 mm form too")
    d.add_argument("--max-offset", type=float, help="largest shift (crop voxels) of misaligned crops (default 12)")
    d.add_argument("--pool-size", type=int, default=None, help="volume pairs held at once (default 48 on CUDA, 12 on the CPU)")
    d.add_argument("--refresh-every", type=int,
                   help="without render workers: render a new pair every N steps (default 30)")
    d.add_argument("--render-workers", type=int, default=None,
                   help="background processes rendering new volume pairs (default: cores - 2 on CUDA, 0 on the CPU)")
    d.add_argument("--eval-every", type=int, default=None, help="learning-curve point, snapshot and checkpoint every "
                                                                "N steps (default 500 on CUDA, 100 on the CPU)")
    d.add_argument("--curve-pairs", type=int, help="held-out volume pairs of the learning curve (default 8)")
    d.add_argument("--curve-crops", type=int, help="held-out crop pairs of the learning curve (default 48)")
    d.add_argument("--precision", choices=["auto", "float32", "bfloat16"],
                   help="network precision in training (auto: bfloat16 autocast on CUDA, float32 on the CPU)")
    d.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels-last network layout in training (default on: faster on the CPU and on CUDA)")
    d.add_argument("--init", default=None, metavar="FILE", help="start from these DISA weights (.pt with model card)")
    s = p.add_argument_group("checkpoint selection (--select)")
    s.add_argument("--select", action="store_true",
                   help="register the held-out pairs with the last snapshots of OUTPUT_DIR and write the best as "
                        "OUTPUT_DIR/disa_lc2.pt with its model card (never looks at RESECT Case 24)")
    s.add_argument("--candidates", type=int, default=4, help="snapshots tried by --select (default the last 4)")
    s.add_argument("--fine-check", action="store_true",
                   help="--select also registers the held-out ultrasound pairs rendered at 0.5 mm and records them "
                        "per snapshot (the choice stays the standard check's)")
    g = p.add_argument_group("the paper's recipe (--paper): 33^3 patch pairs, centre-voxel loss, needs a GPU")
    g.add_argument("--paper", action="store_true", help="train on patch-pair shards in --data instead")
    g.add_argument("--data", metavar="DIR", help="folder of patch-pair shards (*.npz); built there with --build")
    g.add_argument("--build", action="store_true", help="first sample patch pairs into --data")
    g.add_argument("--build-only", action="store_true", help="build the shards and stop")
    g.add_argument("--synthetic", type=int, default=32, help="synthetic template pairs to sample (default 32)")
    g.add_argument("--us-per-file", type=int, default=1, help="template partners per real ultrasound volume (default 1)")
    g.add_argument("--pair", nargs=2, action="append", metavar=("A", "B"), default=[],
                   help="also sample from your own volumes: A gives intensity+gradient, B is fitted (ultrasound)")
    g.add_argument("--pairs-per-volume", type=int, default=500, help="patch pairs per volume pair (default 500)")
    g.add_argument("--candidates-per-draw", type=int, default=2000, help="A patches scored per draw (default 2000)")
    g.add_argument("--epochs", type=int, default=35, help="epochs (default 35, as in the paper)")
    g.add_argument("--batch-size", type=int, default=None, help="default 256 on CUDA, 32 on the CPU")
    g.add_argument("--val-fraction", type=float, default=0.1, help="share of shards held out for validation")
    g.add_argument("--no-augment", action="store_true", help="no flips, sign or intensity changes")


def run_from_args(args) -> int:
    """Run ``disa train`` from parsed arguments."""
    from ..errors import InputError

    say = (lambda m: None) if args.quiet else (lambda m: print(m, flush=True))
    if args.paper:
        return _run_paper(args)
    if not args.source_dir:
        raise InputError("disa train needs --source-dir (the folder holding templates/ and resect/us_only/)")
    if args.pack_sources:
        from .packed import pack_sources

        from .sources import FINE_US_SPACING

        rec = pack_sources(args.source_dir, args.pack_sources, progress=say,
                           fine_spacing=FINE_US_SPACING if args.fine_us_share else None)
        print(f"packed {rec['files']} files ({rec['bytes'] / 2 ** 20:.1f} MiB) into {rec['out_dir']}: train from it "
              "with --source-dir (SimpleITK not needed)")
        return 0
    if args.select:
        from .select import select_checkpoint

        out = os.path.join(args.output_dir, "disa_lc2.pt")
        rec = select_checkpoint(args.output_dir, args.source_dir, out, args.candidates, fine=args.fine_check,
                                progress=say)
        best = rec["chosen"]
        print(f"chose {best['snapshot']}: held-out median {best['median_mm']:.2f} mm, "
              f"{100 * best['share_below_2mm']:.0f}% under 2 mm ({'passes' if best['passes'] else 'fails'} the "
              f"targets); wrote {out} (sha256 {rec['sha256']})")
        return 0
    from .checkpoints import CHECKPOINT_NAME
    from .loop import run_config, train

    if os.path.exists(os.path.join(args.output_dir, CHECKPOINT_NAME)) and not args.resume:
        raise InputError(f"{args.output_dir} already holds a run: continue it with --resume or choose another "
                         "--output-dir")
    given = {"steps": args.steps, "batch_pairs": args.batch_pairs, "crop": args.crop_size, "lr": args.lr,
             "min_lr": args.min_lr, "weight_decay": args.weight_decay, "warmup_steps": args.warmup_steps,
             "lc2": args.lc2_weight, "distill": args.distill, "distill_until": args.distill_until,
             "norm_penalty": args.norm_penalty, "clip_grad": args.clip_grad, "shifts": args.shifts,
             "weighting": args.weighting, "aligned_fraction": args.aligned_fraction, "max_offset": args.max_offset,
             "mix": args.mix, "fine_us_share": args.fine_us_share, "pool_size": args.pool_size, "refresh_every": args.refresh_every, "render_workers": args.render_workers,
             "eval_every": args.eval_every, "curve_pairs": args.curve_pairs, "curve_crops": args.curve_crops,
             "seed": args.seed, "precision": args.precision, "channels_last": args.channels_last,
             "threads": args.threads,
             "time_limit_s": args.time_limit, "init": args.init}
    config = run_config(args.source_dir, args.output_dir, given, args.device, args.resume, progress=say)
    report = train(config, progress=say)
    last = report["history"][-1]
    print(f"stopped after step {report['steps']}: held-out R2 {last['r2']:.3f} (weighted {last['wr2']:.3f}, "
          f"correlation {last['corr']:.3f}); curve in {report['curve']}; pick weights with --select")
    return 0


def _run_paper(args) -> int:
    from ..errors import InputError
    from .dataset import build_dataset
    from .paper import PaperConfig, train_paper
    from .synth import make_pair_specs

    if not args.data:
        raise InputError("--paper needs --data (the folder of patch-pair shards)")
    seed = 0 if args.seed is None else args.seed
    if args.build or args.build_only:
        sources: list = []
        if args.source_dir:
            sources += make_pair_specs(args.source_dir, args.synthetic, args.us_per_file, seed=seed)
        sources += [tuple(p) for p in args.pair]
        if not sources:
            raise InputError("--build needs --source-dir (templates and ultrasound) or --pair A B")
        summary = build_dataset(args.data, sources, args.pairs_per_volume, seed=seed, data_dir=args.source_dir,
                                candidates=args.candidates_per_draw, progress=not args.quiet)
        print(f"built {summary['pairs']} pairs from {len(summary['shards'])} volume pairs in {args.data} "
              f"({summary['seconds']} s); target histogram (10 bins over [0,1]): {summary['target_histogram']}")
        if args.build_only:
            return 0
    recipe = {k: v for k, v in (("lr", args.lr), ("weight_decay", args.weight_decay),
                                ("warmup_steps", args.warmup_steps)) if v is not None}  # else PaperConfig's
    config = PaperConfig(data=args.data, out_dir=args.output_dir, epochs=args.epochs, batch_size=args.batch_size,
                         val_fraction=args.val_fraction, seed=seed, device=args.device, resume=args.resume, **recipe,
                         augment=not args.no_augment, threads=args.threads, time_limit_s=args.time_limit,
                         progress=not args.quiet)
    report = train_paper(config)
    for h in report.history:
        print(f"epoch {h['epoch']:3d}  train mse {h['train_mse']:.5f}  val mse {h['val_mse']:.5f}  "
              f"val mae {h['val_mae']:.5f}  {h['seconds']:.0f} s")
    print(f"wrote {report.weights} (sha256 {report.sha256})")
    with open(os.path.join(args.output_dir, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report.to_dict(), f, indent=2)
    return 0


__all__ = ["add_train_arguments", "run_from_args"]
