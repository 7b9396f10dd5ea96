"""One self-describing checkpoint file: format version, all configs, EMA weights, step, provenance."""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import resources
from .anomaly import DEFAULT_THRESHOLD, DEFAULT_TIMESTEP, Detector
from .config import DiffusionConfig, ModelConfig, NoiseConfig, Preset, PreprocessConfig, config_from_dict, config_to_dict
from .files import atomic_write
from .hygiene import MAP_OPTION_FIELDS, MapOptions
from .normative import NormativeMap
from .unet import UNet

FORMAT = "sss-viewer-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a usable sss-viewer checkpoint."""


@dataclass(frozen=True)
class Recommended:
    """The settings a checkpoint is meant to run at (sss-calibrate measures them); tools use them by default."""
    timestep: int = DEFAULT_TIMESTEP      # lambda of single-step sampling
    threshold: float = DEFAULT_THRESHOLD  # squared-error threshold of the mask
    source: str = "paper defaults"        # how they were chosen: data, false-alarm budget, command
    draws: int = 1                        # noise draws averaged per slice (Detector.draws); 1: the paper's
    map_options: MapOptions = MapOptions()  # heat-map and mask hygiene the threshold was calibrated with; off: paper

    @classmethod
    def from_payload(cls, data: Any) -> Recommended:
        """From a checkpoint's "recommended" entry (absent in older files: the paper's settings)."""
        if data is None:
            return cls()
        try:
            options = data.get("map_options") or {}
            return cls(timestep=int(data["timestep"]), threshold=float(data["threshold"]), source=str(data["source"]),
                       draws=int(data.get("draws", 1)),
                       map_options=MapOptions(**{k: options[k] for k in MAP_OPTION_FIELDS if k in options}))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise CheckpointError(f"the checkpoint's recommended settings are damaged ({err})") from err

    def to_payload(self) -> dict[str, Any]:
        options = {k: getattr(self.map_options, k) for k in MAP_OPTION_FIELDS}
        return {"timestep": self.timestep, "threshold": self.threshold, "source": self.source, "draws": self.draws,
                "map_options": options}


@dataclass
class LoadedCheckpoint:
    model: UNet          # EMA weights, eval mode, on the requested device
    preset: Preset       # every config the model was trained with
    step: int            # training step the weights come from
    provenance: str      # free text: data, command, machine
    path: Path
    sha256: str          # identity of the file, for reports
    recommended: Recommended = field(default_factory=Recommended)  # default timestep and threshold
    modality: str | None = None  # the MR contrast it was trained on ("t1", ...); None when not recorded
    normative: NormativeMap | None = None  # its healthy norm (sss-calibrate --normative-from); None: none made

    @property
    def name(self) -> str:
        return self.path.name


def preset_to_dict(preset: Preset) -> dict[str, dict]:
    return {"model": config_to_dict(preset.model), "diffusion": config_to_dict(preset.diffusion),
            "noise": config_to_dict(preset.noise), "preprocess": config_to_dict(preset.preprocess)}


def preset_from_dict(data: dict) -> Preset:
    return Preset(model=config_from_dict(ModelConfig, data["model"]),
                  diffusion=config_from_dict(DiffusionConfig, data["diffusion"]),
                  noise=config_from_dict(NoiseConfig, data["noise"]),
                  preprocess=config_from_dict(PreprocessConfig, data["preprocess"]))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file beside path, then rename: a crash never leaves a half file."""
    atomic_write(path, lambda f: torch.save(obj, f))


def save_checkpoint(path: str | os.PathLike, preset: Preset, ema_state: dict[str, torch.Tensor], step: int,
                    provenance: str = "", extra: dict[str, Any] | None = None,
                    recommended: Recommended | None = None, modality: str | None = None) -> None:
    """Write the checkpoint atomically; extra holds training state (optimiser, RNG) for resuming; modality is
    the MR contrast of the training scans (sss_viewer.core.modality), when known."""
    payload = {"format": FORMAT, "version": VERSION, "configs": preset_to_dict(preset),
               "ema": {k: v.detach().cpu() for k, v in ema_state.items()}, "step": int(step),
               "provenance": provenance}
    if recommended is not None:
        payload["recommended"] = recommended.to_payload()
    if modality is not None:
        payload["modality"] = modality
    if extra:
        payload["train_state"] = extra
    atomic_torch_save(payload, path)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The raw payload, loaded with weights_only=True; anything not ours raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path.name} holds objects other than tensors and plain data; refusing to load it "
                              f"(only sss-train checkpoints are accepted)") from e
    except Exception as e:  # torch raises many types for a damaged file: EOFError, KeyError, RuntimeError...
        raise CheckpointError(f"{path.name} is not a readable checkpoint (truncated or corrupt?): "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path.name} is not an sss-viewer checkpoint; train one with sss-train")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path.name} has checkpoint format version {payload.get('version')}, "
                              f"this sss-viewer reads version {VERSION}; upgrade sss-viewer")
    return payload


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Rebuild the model from the configs stored in the file and load its EMA weights."""
    payload = read_checkpoint(path)
    try:
        preset = preset_from_dict(payload["configs"])
        model = UNet(preset.model)
        model.load_state_dict(payload["ema"])
    except (KeyError, TypeError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{Path(path).name} does not match its stored model configuration: "
                              f"{str(e).splitlines()[0]}") from e
    model.eval().to(device)
    try:
        normative = NormativeMap.from_payload(payload["normative"]) if payload.get("normative") is not None else None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{Path(path).name} has a damaged healthy norm ({e}); calibrate it again with "
                              "sss-calibrate --normative-from") from e
    return LoadedCheckpoint(model=model, preset=preset, step=int(payload.get("step", 0)),
                            provenance=str(payload.get("provenance", "")), path=Path(path),
                            sha256=file_sha256(path),
                            recommended=Recommended.from_payload(payload.get("recommended")),
                            modality=payload.get("modality") if isinstance(payload.get("modality"), str) else None,
                            normative=normative)


def load_detector(checkpoint: str | os.PathLike | None, device: str = "auto", batch_size: int | None = None,
                  compile: bool = False, precision: str = "auto",
                  volume: str | os.PathLike | None = None,
                  draws: int | None = None) -> tuple[LoadedCheckpoint, Detector]:
    """The checkpoint (None: resources.default_checkpoint(volume), the one for that input) and a Detector
    running it on device with `draws` noise draws (None: the checkpoint's recommended number; see Detector
    for the other options).

    Raises CheckpointError when there is no usable checkpoint and ValueError for an unusable device,
    each with a one-line message that says what to do.
    """
    try:
        path = resources.default_checkpoint(volume) if checkpoint is None else checkpoint
    except FileNotFoundError as err:  # no default checkpoint; the message says what to do
        raise CheckpointError(str(err)) from err
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as err:
        raise CheckpointError(f"{err}; pass a checkpoint made by sss-train with --checkpoint") from err
    return ckpt, Detector(ckpt.model, ckpt.preset, device, batch_size=batch_size, compile=compile,
                          precision=precision, draws=ckpt.recommended.draws if draws is None else draws,
                          normative=ckpt.normative)
