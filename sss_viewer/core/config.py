"""Frozen configuration dataclasses for the model, diffusion, noise and preprocessing, with presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass(frozen=True)
class ModelConfig:
    image_size: int = 128                      # square input side in pixels (model space)
    in_channels: int = 1                       # greyscale MRI slice
    out_channels: int = 1                      # predicted noise, same shape as the input
    base_channels: int = 64                    # channels at the first resolution level
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)  # per-level multiplier of base_channels
    num_res_blocks: int = 2                    # residual blocks per level (encoder side)
    attention_resolutions: tuple[int, ...] = (16,)  # feature-map sides that get self-attention
    num_heads: int = 2                         # attention heads
    dropout: float = 0.0                       # dropout inside residual blocks
    norm_groups: int = 32                      # GroupNorm groups (reduced to divide small widths)

    def __post_init__(self) -> None:
        downsample = 2 ** (len(self.channel_mult) - 1)
        if self.image_size % downsample:
            raise ValueError(
                f"image_size {self.image_size} must be divisible by {downsample} "
                f"for {len(self.channel_mult)} levels")


@dataclass(frozen=True)
class DiffusionConfig:
    timesteps: int = 1000        # T, number of forward steps
    beta_start: float = 1e-4     # beta_1 of the linear schedule
    beta_end: float = 0.02       # beta_T of the linear schedule


@dataclass(frozen=True)
class NoiseConfig:
    kind: str = "simplex"        # "simplex" (AnoDDPM) or "gaussian"
    octaves: int = 6             # number of simplex octaves summed
    frequency: float = 2.0 ** -6  # first octave's spatial frequency (coordinates / 64)
    persistence: float = 0.8     # amplitude factor from one octave to the next
    standardize: bool = False    # rescale each field to zero mean, unit std; off as in AnoDDPM and the paper (std ~0.5)

    def __post_init__(self) -> None:
        if self.kind not in ("simplex", "gaussian"):
            raise ValueError(f"noise kind must be 'simplex' or 'gaussian', not {self.kind!r}")


ALIGN_MODES = ("none", "mni-affine")  # PreprocessConfig.align: as read, or affinely registered to MNI (core/align.py)


@dataclass(frozen=True)
class PreprocessConfig:
    image_size: int = 128            # model-space square side; equals ModelConfig.image_size
    percentile_low: float = 1.0      # brain-voxel percentile mapped to -1
    percentile_high: float = 99.0    # brain-voxel percentile mapped to +1
    brain_threshold: float = 0.0     # voxels above this (raw intensity) count as brain
    margin: float = 0.05             # padding around the brain bounding box, fraction of its side
    min_brain_fraction: float = 0.25  # slice kept if its brain area >= this fraction of the largest
    align: str = "none"              # "mni-affine": brains registered to the MNI template first (core/align.py)

    def __post_init__(self) -> None:
        if self.align not in ALIGN_MODES:
            raise ValueError(f"preprocess align must be 'none' or 'mni-affine', not {self.align!r}")


@dataclass(frozen=True)
class Preset:
    model: ModelConfig
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)


PRESETS: dict[str, Preset] = {
    # The paper's Table 1: 256x256, base 128, mult 1,1,2,3,4, 2 res blocks, 2 heads, attention at 32 and 16.
    "paper": Preset(
        model=ModelConfig(image_size=256, base_channels=128, channel_mult=(1, 1, 2, 3, 4),
                          num_res_blocks=2, attention_resolutions=(32, 16), num_heads=2),
        preprocess=PreprocessConfig(image_size=256)),
    # Trains on a 2-core CPU (about 1 s per batch of 8) and runs interactively there.
    "small": Preset(
        model=ModelConfig(image_size=128, base_channels=32, channel_mult=(1, 2, 2, 4),
                          num_res_blocks=1, attention_resolutions=(16,), num_heads=2),
        preprocess=PreprocessConfig(image_size=128)),
    # small's layout at 1.5x the width (7.07 M parameters, 14 MB in half precision): for GPU training runs
    # (.ci/device.sh general).
    "medium": Preset(
        model=ModelConfig(image_size=128, base_channels=48, channel_mult=(1, 2, 2, 4),
                          num_res_blocks=1, attention_resolutions=(16,), num_heads=2),
        preprocess=PreprocessConfig(image_size=128)),
    # For tests: 32 px, 8 channels.
    "tiny": Preset(
        model=ModelConfig(image_size=32, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                          attention_resolutions=(16,), num_heads=2, norm_groups=4),
        preprocess=PreprocessConfig(image_size=32)),
}


def config_to_dict(cfg) -> dict:
    """Plain dict of a config dataclass (tuples become lists), fit for a weights_only checkpoint."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}


def config_from_dict(cls, data: dict):
    """Rebuild a config dataclass from config_to_dict output; unknown keys are an error."""
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}: checkpoint from a newer version?")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
