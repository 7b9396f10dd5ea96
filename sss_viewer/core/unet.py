"""Guided-diffusion-style UNet that predicts the noise in a noised slice: eps_theta(x_t, t)."""

from __future__ import annotations

import math
import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer sinusoidal embedding: [cos(t * w_i), sin(t * w_i)] with w_i = max_period^(-i / (dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]                                   # (B, dim/2)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)              # (B, dim)


def norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= groups that divides channels."""
    return nn.GroupNorm(math.gcd(groups, channels), channels)


class ResBlock(nn.Module):
    """Residual block: GroupNorm-SiLU-conv, add the projected timestep embedding, GroupNorm-SiLU-dropout-conv."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.in_layers = nn.Sequential(norm(cin, groups), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.emb_proj = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, cout))
        self.out_layers = nn.Sequential(norm(cout, groups), nn.SiLU(), nn.Dropout(dropout),
                                        nn.Conv2d(cout, cout, 3, padding=1))
        nn.init.zeros_(self.out_layers[-1].weight)  # each block starts as the identity
        nn.init.zeros_(self.out_layers[-1].bias)
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)                                                 # (B, cout, H, W)
        h = h + self.emb_proj(emb)[:, :, None, None].to(h.dtype)
        return self.skip(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W positions of a feature map, with a residual connection."""

    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"{channels} channels cannot be split into {heads} attention heads")
        self.heads = heads
        self.norm = norm(channels, groups)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x).reshape(b, c, h * w))                    # (B, 3C, N)
        q, k, v = qkv.reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2).unbind(1)  # (B, heads, N, d)
        a = F.scaled_dot_product_attention(q, k, v)                           # (B, heads, N, d)
        a = a.transpose(-1, -2).reshape(b, c, h * w)                          # (B, C, N)
        return x + self.proj(a).reshape(b, c, h, w)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution halving the resolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Level(nn.Module):
    """One UNet stage: a residual block, optionally followed by self-attention."""

    def __init__(self, res: ResBlock, attn: AttentionBlock | None):
        super().__init__()
        self.res = res
        self.attn = attn if attn is not None else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.attn(self.res(x, emb))


class UNet(nn.Module):
    """Encoder-decoder with skip connections; attention at cfg.attention_resolutions; output eps_theta."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        ch = cfg.base_channels
        emb_dim = 4 * ch
        g = cfg.norm_groups
        self.time_embed = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.input_conv = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)

        def attn(c: int, size: int) -> AttentionBlock | None:
            return AttentionBlock(c, cfg.num_heads, g) if size in cfg.attention_resolutions else None

        self.down = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        skip_channels = [ch]
        size, cur = cfg.image_size, ch
        for level, mult in enumerate(cfg.channel_mult):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                out = ch * mult
                blocks.append(Level(ResBlock(cur, out, emb_dim, cfg.dropout, g), attn(out, size)))
                cur = out
                skip_channels.append(cur)
            self.down.append(blocks)
            if level < len(cfg.channel_mult) - 1:
                self.downsamplers.append(Downsample(cur))
                skip_channels.append(cur)
                size //= 2
        self.middle = nn.ModuleList([ResBlock(cur, cur, emb_dim, cfg.dropout, g),
                                     AttentionBlock(cur, cfg.num_heads, g),
                                     ResBlock(cur, cur, emb_dim, cfg.dropout, g)])
        self.up = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                out = ch * mult
                blocks.append(Level(ResBlock(cur + skip_channels.pop(), out, emb_dim, cfg.dropout, g),
                                    attn(out, size)))
                cur = out
            self.up.append(blocks)
            if level > 0:
                self.upsamplers.append(Upsample(cur))
                size *= 2
        self.out = nn.Sequential(norm(cur, g), nn.SiLU(), nn.Conv2d(cur, cfg.out_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps_theta(x_t, t) for x (B, C, S, S) and integer timesteps t (B,)."""
        emb = self.time_embed(timestep_embedding(t, self.cfg.base_channels))  # (B, 4*base)
        h = self.input_conv(x)                                               # (B, base, S, S)
        skips = [h]
        for level, blocks in enumerate(self.down):
            for block in blocks:
                h = block(h, emb)
                skips.append(h)
            if level < len(self.downsamplers):
                h = self.downsamplers[level](h)
                skips.append(h)
        h = self.middle[2](self.middle[1](self.middle[0](h, emb)), emb)        # (B, C, S/2^L, S/2^L)
        for level, blocks in enumerate(self.up):
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if level < len(self.upsamplers):
                h = self.upsamplers[level](h)
        return self.out(h).to(x.dtype)                                       # (B, C_out, S, S)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
