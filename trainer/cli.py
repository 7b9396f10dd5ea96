"""sss-train: train the noise-prediction UNet on healthy volumes (one process, or several under torchrun)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sss_viewer.core.anomaly import PRECISIONS
from sss_viewer.core.config import ALIGN_MODES, PRESETS

from .data import MIN_SLICES
from .loop import PRESET_DEFAULTS, Interrupted, TrainConfig, command_line, train

EPILOG = f"""\
data: --data takes folders (searched recursively), glob patterns and files. Masks and label maps are
skipped by name (a name token containing mask, seg, label, lesion or roi, or one of gm, wm, csf, pve,
prob, probseg, dseg, tissue); a file named exactly is always used. Files named with two or more modalities
(t1, t2, flair, pd, t1ce) are refused unless --modality picks one. At least {MIN_SLICES} usable slices are
needed. Each volume is preprocessed once and cached (SSS_VIEWER_CACHE_DIR overrides the folder).

files in --out: ckpt_<step>.pt (full training state; the newest --keep), last.pt (the newest of them),
model.pt (final EMA weights for sss-detect and sss-viewer), log.jsonl, preview_<step>.png, loss.png.
Ctrl-C or SIGTERM saves a checkpoint before exiting; --resume continues from the newest.

preset defaults (steps / batch size / save every / preview every / log every):
""" + "\n".join(f"  {name}: {d['steps']} / {d['batch_size']} / {d['save_every']} / {d['preview_every']} / "
                f"{d['log_every']}" for name, d in PRESET_DEFAULTS.items()) + """

several processes or GPUs: torchrun --nproc_per_node=N -m trainer.cli --data ... --out ...
(--batch-size is per process; rank 0 writes every file)."""


def build_parser() -> argparse.ArgumentParser:
    summary = __doc__.split(": ", 1)[1]
    p = argparse.ArgumentParser(prog="sss-train", description=summary[0].upper() + summary[1:],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", required=True, metavar="PATH",
                   help="folders, NIfTI files or glob patterns of healthy, skull-stripped volumes")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for checkpoints, log and previews")
    p.add_argument("--preset", choices=list(PRESETS),
                   help="model size (default small; with --resume, the checkpoint's)")
    p.add_argument("--steps", type=int, metavar="N", help="total optimiser steps (default: by preset, see below)")
    p.add_argument("--batch-size", type=int, metavar="B", help="slices per step and process (default: by preset)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--init", type=Path, metavar="CKPT",
                   help="start a new run from this checkpoint's EMA weights (fine-tuning; fresh optimiser, step 0)")
    p.add_argument("--unit-noise", action="store_true",
                   help="standardise each simplex noise field to unit std (stronger noise than the paper's ~0.5; "
                        "recorded in the checkpoint, so inference matches)")
    p.add_argument("--align", choices=ALIGN_MODES, default="none",
                   help="mni-affine: register every brain to the bundled MNI template by an affine before slicing "
                        "(needs SimpleITK; recorded in the checkpoint, so inference repeats it); default: none")
    p.add_argument("--max-timestep", type=int, metavar="T",
                   help="draw training timesteps below T only (e.g. 400 for a model used at lambda <= 400): the "
                        "model's capacity goes to the noise levels detection uses; default: the whole schedule")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: auto (CUDA if present)")
    p.add_argument("--lr", type=float, metavar="LR", default=1e-4,
                   help="AdamW learning rate (default 1e-4, the paper's)")
    p.add_argument("--weight-decay", type=float, metavar="WD", default=0.0, help="AdamW weight decay (default 0)")
    p.add_argument("--ema-decay", type=float, metavar="D", default=0.9999, help="EMA decay (default 0.9999, warmed up)")
    p.add_argument("--grad-clip", type=float, metavar="NORM", default=1.0,
                   help="max gradient norm, 0 for none (default 1)")
    p.add_argument("--seed", type=int, metavar="N", default=0, help="seed of weights and every random draw (default 0)")
    p.add_argument("--modality", metavar="NAME", help="use only files of this modality, e.g. t1 (see below)")
    p.add_argument("--no-augment", dest="augment", action="store_false",
                   help="turn off the light affine/gamma augmentation")
    p.add_argument("--save-every", type=int, metavar="N", help="steps between checkpoints (default: by preset)")
    p.add_argument("--keep", type=int, metavar="K", default=3, help="ckpt_<step>.pt files kept (default 3)")
    p.add_argument("--preview-every", type=int, metavar="N", help="steps between preview PNGs, 0 only at the end")
    p.add_argument("--log-every", type=int, metavar="N", help="steps between log.jsonl records (default: by preset)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (faster on GPUs)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="the forward pass's arithmetic: auto (default) is bf16 autocast on a GPU and on a CPU with "
                        "AMX/AVX-512 BF16, else fp32")
    p.add_argument("--no-progress", dest="progress", action="store_const", const=False,
                   help="no progress bar (the default shows one only on a terminal)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    cfg = TrainConfig(data=tuple(args.data), out=args.out, preset=args.preset, steps=args.steps,
                      batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                      ema_decay=args.ema_decay, grad_clip=args.grad_clip, seed=args.seed, augment=args.augment,
                      modality=args.modality, save_every=args.save_every, keep=args.keep,
                      preview_every=args.preview_every, log_every=args.log_every, device=args.device,
                      compile=args.compile, precision=args.precision, resume=args.resume, init=args.init,
                      unit_noise=args.unit_noise, align=args.align, max_timestep=args.max_timestep, progress=args.progress,
                      command=command_line(argv))
    main_rank = int(os.environ.get("RANK", 0)) == 0
    try:
        path = train(cfg)
    except Interrupted as stop:
        if main_rank:
            print(f"sss-train: {stop}", file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt:                     # before training started, or a second Ctrl-C
        if main_rank:
            print("sss-train: interrupted; nothing saved after the last checkpoint", file=sys.stderr)
        return 130
    except (ValueError, OSError) as err:          # DataError, VolumeError, CheckpointError are ValueErrors
        if main_rank:
            print(f"sss-train: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    if main_rank:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
