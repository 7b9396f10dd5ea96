"""Training: the noise-prediction loss on healthy slices, EMA, AMP, DistributedDataParallel, checkpoints, resume.

One step (paper Algorithm 1's training half, AnoDDPM's recipe):
x0 ~ a random usable axial slice (augmented), t ~ U{0, ..., T-1}, eps ~ simplex noise (one fresh seed
per sample), x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, loss = mean (eps - eps_theta(x_t, t))^2,
AdamW, gradient norm clipping, then EMA: theta_ema <- d theta_ema + (1 - d) theta with
d = min(ema_decay, (1 + n) / (10 + n)) after n earlier updates (short runs still get a useful EMA).

Every random draw of step n on rank r comes from generators seeded by ``step_seed(seed, n, r)``, a
counter-based scheme: no RNG state has to be saved, a resumed run draws exactly what an
uninterrupted one would, and every rank samples different slices, noise and timesteps.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from sss_viewer.core.anomaly import PRECISIONS, describe_machine, native_bf16, resolve_device
from sss_viewer.core.checkpoint import (CheckpointError, file_sha256, preset_from_dict, read_checkpoint,
                                       save_checkpoint)
from sss_viewer.core.config import PRESETS, Preset
from sss_viewer.core.diffusion import Diffusion
from sss_viewer.core.unet import UNet, count_parameters
from sss_viewer.core.volume import VolumeError

from sss_viewer.core.modality import modality_of

from .data import (Augment, DataError, SliceSet, augment, brain_mask_for, cached_volume, find_volumes,
                   normalise_modality)
from .png import grid, plot_loss, to_uint8, with_header, write_png

AUGMENT = Augment()         # the augmentation of every step (with TrainConfig.augment), recorded in the provenance
PREVIEW_TIMESTEP = 300      # lambda of the preview's single-step reconstruction
PREVIEW_SLICES = 4          # fixed slices shown in every preview
PREVIEW_SEED = 20_240_901   # their noise seeds are PREVIEW_SEED + 0..3, the same at every step
CKPT_PATTERN = re.compile(r"^ckpt_(\d+)\.pt$")
_MASK64 = (1 << 64) - 1

# Defaults that depend on the preset, for TrainConfig fields left at None.
PRESET_DEFAULTS: dict[str, dict[str, int]] = {
    # Paper Table 1 / AnoDDPM args28: batch size 1 for 3000 epochs of one random slice per training volume
    # (about 100 NFBS volumes).
    "paper": dict(steps=300_000, batch_size=1, save_every=5_000, preview_every=5_000, log_every=100),
    # Two CPU cores: about one step of 8 slices per second when the machine is idle.
    "small": dict(steps=20_000, batch_size=8, save_every=500, preview_every=250, log_every=10),
    # A GPU run's model (.ci/device.sh general sets its own batch size and length).
    "medium": dict(steps=20_000, batch_size=32, save_every=1_000, preview_every=1_000, log_every=50),
    # Tests and smoke runs.
    "tiny": dict(steps=20, batch_size=4, save_every=10, preview_every=10, log_every=1),
}


@dataclass(frozen=True)
class TrainConfig:
    data: tuple[str, ...]                  # --data: folders, files or glob patterns of healthy volumes
    out: Path                              # --out: checkpoints, log.jsonl, preview and loss PNGs
    preset: str | None = None              # tiny | small | paper; None: small, or the checkpoint's on --resume
    steps: int | None = None               # total optimiser steps; a resumed run continues up to this
    batch_size: int | None = None          # slices per step in each process
    lr: float = 1e-4                       # AdamW learning rate (paper), constant
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas (paper)
    weight_decay: float = 0.0              # AdamW weight decay (paper)
    ema_decay: float = 0.9999              # EMA decay ceiling (paper); warm-up min(decay, (1 + n) / (10 + n))
    grad_clip: float = 1.0                 # largest global gradient norm; 0 turns clipping off
    seed: int = 0                          # seeds the initial weights and, with the step, every random draw
    augment: bool = True                   # small affine + gamma augmentation (trainer.data.Augment)
    modality: str | None = None            # keep only files of this modality (trainer.data.find_volumes)
    save_every: int | None = None          # steps between checkpoints (one is always written at the end)
    keep: int = 3                          # newest ckpt_<step>.pt files kept
    preview_every: int | None = None       # steps between preview_<step>.png + loss.png; 0: only at the end
    log_every: int | None = None           # steps between log.jsonl records
    device: str = "auto"                   # auto | cpu | cuda; under torchrun each rank takes its local GPU
    compile: bool = False                  # torch.compile the model (needs a working C compiler)
    precision: str = "auto"                # auto | fp32 | bf16 (autocast forward); auto: bf16 where native
    resume: bool = False                   # continue from the newest checkpoint in out
    init: Path | None = None               # a new run starting from this checkpoint's EMA weights (fine-tuning)
    unit_noise: bool = False               # simplex noise standardised to unit std (the preset's default: not)
    align: str = "none"                    # PreprocessConfig.align of the run: "none" or "mni-affine"
    max_timestep: int | None = None        # t ~ U{0, ..., max_timestep - 1}; None: the whole schedule (T)
    progress: bool | None = None           # tqdm bar; None: only when stderr is a terminal
    command: str = ""                      # command line recorded in the provenance

    def resolved(self, preset_name: str) -> TrainConfig:
        """Preset-dependent defaults filled in and every value checked; raises ValueError."""
        filled = replace(self, preset=preset_name, **{k: v for k, v in PRESET_DEFAULTS[preset_name].items()
                                                       if getattr(self, k) is None})
        checks = [(filled.steps >= 1, "--steps must be at least 1"),
                  (filled.batch_size >= 1, "--batch-size must be at least 1"),
                  (filled.lr > 0, "--lr must be positive"),
                  (0 <= filled.ema_decay < 1, "--ema-decay must be in [0, 1), e.g. 0.9999"),
                  (filled.grad_clip >= 0, "--grad-clip must be >= 0 (0 turns clipping off)"),
                  (filled.weight_decay >= 0, "--weight-decay must be >= 0"),
                  (filled.save_every >= 1, "--save-every must be at least 1"),
                  (filled.keep >= 1, "--keep must be at least 1"),
                  (filled.preview_every >= 0, "--preview-every must be >= 0 (0: only at the end)"),
                  (filled.log_every >= 1, "--log-every must be at least 1"),
                  (filled.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}"),
                  (filled.max_timestep is None or filled.max_timestep >= 1, "--max-timestep must be at least 1"),
                  (not (filled.resume and filled.init), "--init starts a new run; drop it to --resume one")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        return filled


class Interrupted(KeyboardInterrupt):
    """Training stopped by SIGINT/SIGTERM after saving a checkpoint; resume with --resume."""

    def __init__(self, step: int, checkpoint: Path, signum: int):
        self.step, self.checkpoint, self.signum = step, checkpoint, signum
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; saved {checkpoint}. "
                         "Run the same command with --resume to continue")


@dataclass(frozen=True)
class DistContext:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> DistContext:
        return cls(rank=int(os.environ.get("RANK", 0)), world=int(os.environ.get("WORLD_SIZE", 1)),
                   local_rank=int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def main(self) -> bool:
        return self.rank == 0


def step_seed(seed: int, step: int, rank: int = 0, stream: int = 0) -> int:
    """Seed for the draws of (seed, step, rank, stream): SplitMix64's finaliser of a mixed 64-bit counter.

    z = seed·φ + step·K1 + rank·K2 + stream·K3 (mod 2^64), then z ← (z ⊕ z≫30)·M1, (z ⊕ z≫27)·M2, z ⊕ z≫31;
    63 bits are kept, as torch.Generator.manual_seed takes them.
    """
    z = (seed * 0x9E3779B97F4A7C15 + step * 0xD1B54A32D192ED03 + rank * 0xABC98388FB8FAC03
         + stream * 0x8CB92BA72F3D8DD7) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1


def _variant(preset: Preset | None, unit_noise: bool, align: str) -> Preset | None:
    """The preset with its simplex noise standardised to unit std when unit_noise, and its preprocessing's
    alignment set."""
    if preset is None:
        return preset
    if unit_noise:
        preset = replace(preset, noise=replace(preset.noise, standardize=True))
    return replace(preset, preprocess=replace(preset.preprocess, align=align))


def checkpoints(out: Path) -> list[tuple[int, Path]]:
    """(step, path) of the ckpt_<step>.pt files in out, oldest first."""
    found = [(int(m.group(1)), p) for p in Path(out).glob("ckpt_*.pt") if (m := CKPT_PATTERN.match(p.name))]
    return sorted(found)


def newest_resumable(out: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in out that reads and holds training state, with its payload; None if none."""
    candidates = [p for _, p in reversed(checkpoints(out))] + [Path(out) / "last.pt"]
    for path in candidates:
        if not path.is_file():
            continue
        try:
            payload = read_checkpoint(path)
        except CheckpointError as err:
            print(f"sss-train: skipping {path.name}: {err}", file=sys.stderr)
            continue
        if "train_state" in payload:
            return path, payload
    return None


def _to_cpu(obj: Any) -> Any:
    """Copy of a nested dict/list/tuple with every tensor moved to the CPU (for device-independent checkpoints)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _replace_by_link(src: Path, dst: Path) -> None:
    """Make dst the same file as src atomically: a hard link (a copy where links are unsupported), then rename."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        tmp.write_bytes(src.read_bytes())
    os.replace(tmp, dst)


def _adamw(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with the fused kernel (one pass over all parameters: about 4× faster on a CPU than the loop);
    torch builds without a fused kernel for the device fall back to the multi-tensor one."""
    kwargs = dict(lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    try:
        return torch.optim.AdamW(model.parameters(), fused=True, **kwargs)
    except RuntimeError:
        return torch.optim.AdamW(model.parameters(), foreach=True, **kwargs)


class _StopRequest:
    """SIGINT/SIGTERM set a flag read between steps (a checkpoint is never taken mid-update); a second Ctrl-C aborts."""

    def __init__(self):
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _session_precision(session: dict[str, Any]) -> str:
    """A session record's arithmetic; records from before --precision: bf16 on CUDA, else fp32."""
    return session.get("precision", "bf16" if session["device"].startswith("cuda") else "fp32")


class Trainer:
    """One training run (one process of it under torchrun): data, model, optimiser, EMA and their files."""

    def __init__(self, cfg: TrainConfig, ctx: DistContext, device: torch.device):
        self.ctx, self.device = ctx, device
        self.cuda = device.type == "cuda"
        # bf16 autocast where it is native (a GPU; a CPU with AMX/AVX-512 BF16: 1.45-1.57x the steps/s of fp32)
        self.precision = ("bf16" if native_bf16(device) else "fp32") if cfg.precision == "auto" else cfg.precision
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_path = self.out / "log.jsonl"

        resume = self._find_resume(cfg)
        if resume is not None:
            self.resumed_from, payload = resume
            preset_name, self.preset = payload["train_state"]["preset_name"], preset_from_dict(payload["configs"])
            if cfg.preset is not None and _variant(PRESETS.get(cfg.preset), cfg.unit_noise, cfg.align) != self.preset:
                flags = " --unit-noise" * cfg.unit_noise + f" --align {cfg.align}" * (cfg.align != "none")
                raise ValueError(f"--preset {cfg.preset}{flags} differs from the "
                                 f"{preset_name} preset of {self.resumed_from}; drop --preset to continue it, or "
                                 "train into another --out")
            self.init_note = payload["train_state"].get("init", "")
        else:
            self.resumed_from, payload = None, None
            preset_name = cfg.preset or "small"
            if preset_name not in PRESETS:
                raise ValueError(f"unknown preset {preset_name!r}; choose one of {', '.join(PRESETS)}")
            self.preset = _variant(PRESETS[preset_name], cfg.unit_noise, cfg.align)
            self.init_note = ""
        self.cfg = cfg.resolved(preset_name)
        self.diffusion = Diffusion(self.preset.diffusion, self.preset.noise)

        self.data = self._load_data()
        self.preview_x0 = torch.from_numpy(self.data.fixed_slices(PREVIEW_SLICES)).unsqueeze(1).to(device)  # (4,1,S,S)

        torch.manual_seed(self.cfg.seed)
        # channels_last: 15-40% faster on a 2-core CPU (oneDNN); slower in bf16 on an H200 (BENCHMARKS.md)
        self.layout = torch.contiguous_format if self.cuda else torch.channels_last
        self.model = UNet(self.preset.model).to(device, memory_format=self.layout)
        if payload is None and cfg.init is not None:
            self.init_note = self._initialise(Path(cfg.init))
        self.optimizer = _adamw(self.model, self.cfg)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False) if ctx.main else None
        self.step = 0
        self.sessions: list[dict[str, Any]] = []
        if payload is not None:
            self._restore(payload)
        net: torch.nn.Module = self.model
        if ctx.world > 1:
            net = DistributedDataParallel(net, device_ids=[device.index] if self.cuda else None)
        self.net = torch.compile(net) if self.cfg.compile else net
        self.params = list(self.model.parameters())
        self.ema_params = list(self.ema.parameters()) if self.ema is not None else []

    # -- setup ---------------------------------------------------------------------------------------------
    def _initialise(self, path: Path) -> str:
        """Load a checkpoint's EMA weights into the model (--init); returns the provenance line for it."""
        payload = read_checkpoint(path)
        try:
            model = preset_from_dict(payload["configs"]).model
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"--init {path.name} is not an sss-train checkpoint: {err}") from err
        if model != self.preset.model:
            raise ValueError(f"--init {path.name}: its model configuration differs from the "
                             f"{self.cfg.preset} preset; pick the preset it was trained with")
        self.model.load_state_dict(payload["ema"])
        return (f"initialised from {path} (sha256:{file_sha256(path)[:12]}, step {payload.get('step', 0)}), "
                f"whose provenance was:\n  " + str(payload.get("provenance", "")).replace("\n", "\n  "))

    def _find_resume(self, cfg: TrainConfig) -> tuple[Path, dict[str, Any]] | None:
        """The checkpoint to continue from (with --resume), refusing to overwrite a run without it."""
        if cfg.resume:
            found = newest_resumable(self.out)
            if found is None and self.ctx.main:
                print(f"sss-train: no checkpoint in {self.out} yet; starting at step 0", file=sys.stderr)
            return found
        existing = checkpoints(self.out)
        if existing or (self.out / "last.pt").exists():
            at = f" up to step {existing[-1][0]}" if existing else ""
            raise ValueError(f"{self.out} already holds checkpoints{at}; pass --resume to continue that run, "
                             "or choose an empty --out")
        return None

    def _load_data(self) -> SliceSet:
        """Find the volumes and fill the cache, each rank preprocessing its share; errors reach every rank."""
        files = find_volumes(self.cfg.data, self.cfg.modality)
        named = {modality_of(f) for f in files} - {None}
        self.modality = (normalise_modality(self.cfg.modality) if self.cfg.modality
                         else named.pop() if len(named) == 1 else None)  # recorded in the checkpoint
        cfg = self.preset.preprocess
        mine, error = {}, None
        for i in range(self.ctx.rank, len(files), self.ctx.world):
            try:
                mine[i] = cached_volume(files[i], cfg, mask=brain_mask_for(files[i]))
            except (VolumeError, OSError) as err:
                error = f"cannot use training volume: {' '.join(str(err).split())}; fix or remove it from --data"
                break
        built = sum(not v.from_cache for v in mine.values())
        if self.ctx.world > 1:
            gathered: list[Any] = [None] * self.ctx.world
            dist.all_gather_object(gathered, (error, built))
            error = next((e for e, _ in gathered if e), None)
            built = sum(b for _, b in gathered)
        if error:
            raise DataError(error)
        volumes = [mine[i] if i in mine else cached_volume(f, cfg, mask=brain_mask_for(f)) for i, f in enumerate(files)]
        data = SliceSet(volumes)
        self.data_summary = f"{len(volumes)} volumes, {data.n_slices} slices"
        self.cache_summary = f"{built} preprocessed now, {len(volumes) - built} from the cache"
        return data

    def _restore(self, payload: dict[str, Any]) -> None:
        """Raw weights, optimiser, EMA and step from a checkpoint; the optimiser takes this run's lr and betas."""
        state = payload["train_state"]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:
            group.update(lr=self.cfg.lr, betas=self.cfg.betas, weight_decay=self.cfg.weight_decay)
        if self.ema is not None:
            self.ema.load_state_dict(payload["ema"])
        self.step = int(payload["step"])
        self.sessions = list(state["sessions"])
        changed = [f"{k} {state.get(k)} → {now}" for k, now in (("batch_size", self.cfg.batch_size),
                                                             ("world_size", self.ctx.world), ("seed", self.cfg.seed),
                                                             ("augment", self.cfg.augment),
                                                             ("max_timestep", self.cfg.max_timestep))
                   if state.get(k) != now]
        if changed and self.ctx.main:
            print(f"sss-train: resuming with {', '.join(changed)}: the continued run will differ from an "
                  "uninterrupted one", file=sys.stderr)

    # -- one step ------------------------------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.precision == "bf16" else nullcontext()

    def train_step(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step on a fresh batch; returns (loss, gradient norm before clipping) as device scalars."""
        b, T = self.cfg.batch_size, min(self.diffusion.timesteps, self.cfg.max_timestep or self.diffusion.timesteps)
        gen = torch.Generator().manual_seed(step_seed(self.cfg.seed, step, self.ctx.rank))
        torch.manual_seed(step_seed(self.cfg.seed, step, self.ctx.rank, stream=1))   # dropout, if configured
        tilt = AUGMENT.tilt_deg if self.cfg.augment else 0.0
        x0 = self.data.sample(b, gen, tilt_deg=tilt).to(self.device, non_blocking=True)   # (B, 1, S, S)
        if self.cfg.augment:
            x0 = augment(x0, gen, AUGMENT)                                                # (B, 1, S, S)
        t = torch.randint(T, (b,), generator=gen)                   # (B,) uniform on [0, T), T capped by max_timestep
        eps = self.diffusion.noise_like(x0, t, generator=gen)                              # (B, 1, S, S)
        t = t.to(self.device)
        x_t = self.diffusion.q_sample(x0, t, eps).contiguous(memory_format=self.layout)    # (B, 1, S, S)
        with self._autocast():
            pred = self.net(x_t, t)                                                        # (B, 1, S, S)
        loss = F.mse_loss(pred.float(), eps)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip or float("inf"))
        self.optimizer.step()
        if self.ema is not None:
            decay = min(self.cfg.ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(self.ema_params, self.params, 1.0 - decay)
        return loss.detach(), norm.detach()

    # -- files ---------------------------------------------------------------------------------------------
    def _session(self, wall_s: float) -> dict[str, Any]:
        return {"command": self.cfg.command, "start_step": self.start_step, "end_step": self.step,
                "wall_s": round(wall_s, 1), "world_size": self.ctx.world, "batch_size": self.cfg.batch_size,
                "device": str(self.device), "precision": self.precision, "machine": describe_machine(self.device)}

    def provenance(self, sessions: list[dict[str, Any]]) -> str:
        """Human-readable record: what was trained on what, how, for how long, where."""
        m = self.preset.model
        lines = [f"sss-train, {self.cfg.preset} preset: UNet {m.image_size} px, base {m.base_channels}, "
                 f"mult {m.channel_mult}, {count_parameters(self.model) / 1e6:.2f} M parameters; "
                 f"noise {self.preset.noise.kind} (standardize={self.preset.noise.standardize})",
                 f"steps: {self.step}; batch {self.cfg.batch_size} x {self.ctx.world} process(es); AdamW lr "
                 f"{self.cfg.lr:g} betas {self.cfg.betas} wd {self.cfg.weight_decay:g}; EMA {self.cfg.ema_decay:g}; "
                 f"grad clip {self.cfg.grad_clip:g}; seed {self.cfg.seed}; timesteps "
                 + (f"below {self.cfg.max_timestep}" if self.cfg.max_timestep else "all") + "; augment "
                 + (str(AUGMENT) if self.cfg.augment else "off"),
                 f"wall time: {sum(s['wall_s'] for s in sessions):.0f} s in {len(sessions)} session(s)"]
        lines += [f"session {i + 1}: steps {s['start_step']}-{s['end_step']}, {s['wall_s']:.0f} s, "
                  f"{s['world_size']} x {s['device']}, {_session_precision(s)}: {s['command']}\n"
                  f"  machine: {s['machine']}" for i, s in enumerate(sessions)]
        lines.append(f"data: {self.data_summary}")
        lines += [f"  {v.path}  sha256:{v.sha256[:12]}" + (f"  brain mask {v.mask.name}" if v.mask else "")
                  + ("  brain extracted by deepbet" if v.extraction == "deepbet" else "")
                  for v in self.data.volumes]
        if self.init_note:
            lines.append(self.init_note)
        return "\n".join(lines)

    def save(self, wall_s: float, final: bool) -> Path:
        """ckpt_<step>.pt with full training state, last.pt as the same file, older ones pruned to cfg.keep;
        final: also model.pt (EMA weights and configs only). Rank 0 only; every write is atomic."""
        path = self.out / f"ckpt_{self.step}.pt"
        if not self.ctx.main:
            return path
        sessions = self.sessions + [self._session(wall_s)]
        provenance = self.provenance(sessions)
        extra = {"model": _to_cpu(self.model.state_dict()), "optimizer": _to_cpu(self.optimizer.state_dict()),
                 "preset_name": self.cfg.preset, "seed": self.cfg.seed, "batch_size": self.cfg.batch_size,
                 "world_size": self.ctx.world, "augment": self.cfg.augment, "max_timestep": self.cfg.max_timestep,
                 "sessions": sessions,
                 "init": self.init_note, "data": [[str(v.path), v.sha256] for v in self.data.volumes]}
        ema_state = self.ema.state_dict()
        save_checkpoint(path, self.preset, ema_state, self.step, provenance, extra, modality=self.modality)
        _replace_by_link(path, self.out / "last.pt")
        for _, old in checkpoints(self.out)[:-self.cfg.keep]:
            old.unlink(missing_ok=True)
        if final:
            save_checkpoint(self.out / "model.pt", self.preset, ema_state, self.step, provenance,
                            modality=self.modality)
        return path

    @torch.no_grad()
    def preview(self) -> Path:
        """preview_<step>.png: per fixed slice, input | x_t at t=300 | EMA single-step x0_hat | (x0 - x0_hat)^2."""
        x0 = self.preview_x0                                                               # (n, 1, S, S)
        n, size = len(x0), x0.shape[-1]
        t = torch.full((n,), PREVIEW_TIMESTEP, dtype=torch.long, device=self.device)
        seeds = torch.arange(n) + PREVIEW_SEED
        x_t = self.diffusion.q_sample(x0, t, self.diffusion.noise_like(x0, PREVIEW_TIMESTEP, seeds=seeds))
        with self._autocast():
            eps = self.ema(x_t.contiguous(memory_format=self.layout), t).float()
        x0_hat = self.diffusion.predict_x0(x_t, t, eps)                                    # (n, 1, S, S)
        error = (x0 - x0_hat).square()                                                     # (n, 1, S, S)
        zoom = max(1, 128 // size)
        tiles = []
        for i in range(n):
            lo, hi = float(x_t[i].min()), float(x_t[i].max())
            for img, low, high in ((x0[i], -1, 1), (x_t[i], lo, hi), (x0_hat[i], -1, 1), (error[i], 0, 1)):
                tile = to_uint8(img[0].float().cpu().numpy(), low, high)
                tiles.append(tile.repeat(zoom, axis=0).repeat(zoom, axis=1))
        labels = ["INPUT", f"T={PREVIEW_TIMESTEP} NOISED", "EMA RECON", "ERROR^2 0-1"]
        image = with_header(grid(tiles, columns=4, pad=2), f"STEP {self.step}", labels, size * zoom, pad=2)
        return write_png(self.out / f"preview_{self.step}.png", image)

    def _log(self, record: dict[str, Any]) -> None:
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def _log_interval(self, sums: torch.Tensor, mark: float, mark_step: int, start: float, bar: tqdm) -> float:
        """Append the interval's means (over steps and ranks) to log.jsonl and the bar; reset sums; return the time."""
        if self.ctx.world > 1:
            dist.all_reduce(sums)
            sums /= self.ctx.world
        now = time.perf_counter()
        n = self.step - mark_step
        mean_loss, mean_norm = (sums / n).tolist()
        sums.zero_()
        rate = n / (now - mark)
        slices = rate * self.cfg.batch_size * self.ctx.world
        if self.ctx.main:
            self._log({"step": self.step, "loss": mean_loss, "grad_norm": mean_norm,
                       "lr": self.optimizer.param_groups[0]["lr"], "steps_per_s": rate, "slices_per_s": slices,
                       "wall_s": now - start})
            bar.set_postfix(loss=f"{mean_loss:.4f}", slices_s=f"{slices:.1f}", refresh=False)
        return now

    def _trim_log(self) -> None:
        """Keep only the log records of steps up to the starting step (a killed run may have logged past it)."""
        if not self.log_path.exists():
            return
        kept = [line for line in self.log_path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= self.start_step]
        tmp = self.log_path.with_name(f".{self.log_path.name}.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.log_path)

    def _clean_temporaries(self) -> None:
        """Remove half-written temporaries a killed run left behind (ours only)."""
        for tmp in self.out.glob(".*.tmp"):
            if re.match(r"^\.(ckpt_\d+\.pt|last\.pt|model\.pt|preview_\d+\.png|loss\.png|log\.jsonl)\.", tmp.name):
                tmp.unlink(missing_ok=True)

    # -- the run -------------------------------------------------------------------------------------------
    def _stop_signal(self, stop: _StopRequest) -> int:
        """The signal that asked to stop (0: none); under DDP every rank agrees, so all stop at the same step."""
        if self.ctx.world == 1:
            return stop.signum
        flag = torch.tensor([float(stop.signum)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def run(self) -> Path:
        """Train up to cfg.steps: log every log_every, save every save_every and at the end, preview every
        preview_every; SIGINT/SIGTERM save and raise Interrupted. Returns the path of model.pt."""
        cfg, main = self.cfg, self.ctx.main
        self.start_step = self.step
        model_path = self.out / "model.pt"
        if main:
            self._clean_temporaries()
            self._trim_log()
            print(f"sss-train: {cfg.preset} preset, {count_parameters(self.model) / 1e6:.2f} M parameters; "
                  f"{self.data_summary} ({self.cache_summary}); batch {cfg.batch_size} x {self.ctx.world} "
                  f"on {self.device}; "
                  f"steps {self.step} → {cfg.steps}; writing to {self.out}"
                  + (f" (resumed from {self.resumed_from.name})" if self.resumed_from else ""), file=sys.stderr)
        if self.step >= cfg.steps:
            if main:
                print(f"sss-train: already at step {self.step} of --steps {cfg.steps}; nothing to train",
                      file=sys.stderr)
                if not model_path.exists():
                    self.save(0.0, final=True)
            return model_path

        show = main and (cfg.progress if cfg.progress is not None else sys.stderr.isatty())
        bar = tqdm(total=cfg.steps, initial=self.step, unit="step", dynamic_ncols=True, disable=not show,
                   smoothing=0.05)
        sums = torch.zeros(2, device=self.device)                                          # loss, grad norm
        start = mark = time.perf_counter()
        mark_step = self.step
        try:
            with _StopRequest() as stop:
                while self.step < cfg.steps:
                    loss, norm = self.train_step(self.step)
                    self.step += 1
                    sums += torch.stack([loss, norm])
                    bar.update()
                    if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                        mark, mark_step = self._log_interval(sums, mark, mark_step, start, bar), self.step
                    signum = self._stop_signal(stop)
                    final = self.step == cfg.steps or bool(signum)
                    if self.step % cfg.save_every == 0 or final:
                        saved = self.save(time.perf_counter() - start, final=final)
                    if main and (final or (cfg.preview_every and self.step % cfg.preview_every == 0)) and not signum:
                        self.preview()
                        if self.log_path.exists() and self.log_path.stat().st_size:
                            plot_loss(self.log_path, self.out / "loss.png")
                    if signum:
                        raise Interrupted(self.step, saved, signum)
        finally:
            bar.close()
        return model_path


def train(cfg: TrainConfig) -> Path:
    """Train (or continue with cfg.resume) and return the path of the final model.pt.

    Under torchrun (WORLD_SIZE > 1) this joins the process group (nccl on CUDA, gloo on CPU); rank 0
    alone writes checkpoints, logs and previews. Raises DataError / ValueError for unusable input
    and Interrupted after saving when stopped by SIGINT/SIGTERM.
    """
    ctx = DistContext.from_env()
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank if ctx.world > 1 else (device.index or 0))
        torch.cuda.set_device(device)
    owns_group = ctx.world > 1 and not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        return Trainer(cfg, ctx, device).run()
    finally:
        if owns_group:
            dist.destroy_process_group()


def command_line(argv: list[str]) -> str:
    """The command as a user would retype it (sss-train plus arguments; torchrun's rank count if any)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    prefix = f"torchrun --nproc_per_node={world} -m trainer.cli" if world > 1 else "sss-train"
    return f"{prefix} {shlex.join(argv)}"

