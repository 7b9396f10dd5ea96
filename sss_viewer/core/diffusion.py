"""Linear-beta diffusion with simplex noise: q_sample, single-step x0 reconstruction, the iterative AnoDDPM chain."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from .config import DiffusionConfig, NoiseConfig
from .simplex import sample_noise

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class ChainStep:
    """One step of the iterative reverse chain: x_{t-1} was just computed from x_t."""
    t: int                 # timestep that was denoised
    done: int              # steps completed so far
    total: int             # steps in the whole chain (= lambda)
    x: torch.Tensor        # (B, 1, S, S) current sample x_{t-1}


class Diffusion:
    """The forward process q and the reverse samplers; handed the model, holds no weights."""

    def __init__(self, cfg: DiffusionConfig, noise: NoiseConfig):
        self.cfg, self.noise = cfg, noise
        betas = torch.linspace(cfg.beta_start, cfg.beta_end, cfg.timesteps, dtype=torch.float64)
        alphas = 1.0 - betas                                  # alpha_t = 1 - beta_t            (eq. 2)
        alphas_cumprod = torch.cumprod(alphas, dim=0)         # abar_t = prod_{s<=t} alpha_s    (eq. 3)
        # Kept in float64 and cast to the sample's dtype at use; index t in [0, T) is the paper's timestep t+1.
        self.betas = betas
        self.sqrt_abar = alphas_cumprod.sqrt()
        self.sqrt_one_minus_abar = (1.0 - alphas_cumprod).sqrt()
        self.sqrt_recip_abar = alphas_cumprod.rsqrt()
        self.eps_coef = betas / (1.0 - alphas_cumprod).sqrt()  # beta_t / sqrt(1 - abar_t)   (eq. 7)
        self.sqrt_recip_alpha = alphas.rsqrt()
        self.alphas_cumprod = alphas_cumprod

    @property
    def timesteps(self) -> int:
        return self.cfg.timesteps

    def _check_t(self, t: int) -> None:
        if not 0 <= t < self.cfg.timesteps:
            raise ValueError(f"timestep {t} is outside [0, {self.cfg.timesteps}); pick e.g. 250-400")

    @staticmethod
    def _at(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """table[t] broadcast to like's shape, on like's device."""
        return table[t.cpu()].to(like.device, like.dtype).reshape(-1, *([1] * (like.dim() - 1)))

    def noise_like(self, x: torch.Tensor, t: torch.Tensor | int, generator: torch.Generator | None = None,
                   seeds: torch.Tensor | None = None) -> torch.Tensor:
        """Fresh noise eps of x's shape (B, 1, S, S): one simplex field per sample, its own seed."""
        b, _, h, w = x.shape
        z = t.to(torch.float32).cpu() if isinstance(t, torch.Tensor) else float(t)
        eps = sample_noise((b, h, w), self.noise, generator=generator, seeds=seeds, z=z, device=x.device)
        return eps.to(x.dtype).unsqueeze(1)                    # (B, 1, S, S)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Sample from q(x_t | x_0): x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps   (eq. 5)."""
        return self._at(self.sqrt_abar, t, x0) * x0 + self._at(self.sqrt_one_minus_abar, t, x0) * eps

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps_pred: torch.Tensor) -> torch.Tensor:
        """Invert eq. 5 with the predicted noise: x0_hat = (x_t - sqrt(1 - abar_t) eps_theta) / sqrt(abar_t)."""
        return (x_t - self._at(self.sqrt_one_minus_abar, t, x_t) * eps_pred) * self._at(self.sqrt_recip_abar, t, x_t)

    def single_step(self, model: EpsModel, x0: torch.Tensor, lam: int, generator: torch.Generator | None = None,
                    seeds: torch.Tensor | None = None) -> torch.Tensor:
        """Single-step sampling (paper Algorithm 1): noise x0 to lambda, ONE model call, return x0_hat."""
        self._check_t(lam)
        t = torch.full((x0.shape[0],), lam, dtype=torch.long, device=x0.device)
        x_l = self.q_sample(x0, t, self.noise_like(x0, lam, generator, seeds))   # (B, 1, S, S)
        return self.predict_x0(x_l, t, model(x_l, t).to(x0.dtype))

    def iterative(self, model: EpsModel, x0: torch.Tensor, lam: int, generator: torch.Generator | None = None,
                  seeds: torch.Tensor | None = None) -> Iterator[ChainStep]:
        """AnoDDPM's reverse chain from lambda to 0, yielding after each of its lambda model calls.

        x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - abar_t) eps_theta(x_t, t)) + sigma_t z   (eq. 8),
        with the fixed variance sigma_t^2 = beta_t and z fresh simplex noise each step (none at the last step).
        Stop iterating to cancel; the last yielded x is x0_hat.
        """
        self._check_t(lam)
        b = x0.shape[0]
        x = self.q_sample(x0, torch.full((b,), lam, dtype=torch.long, device=x0.device),
                          self.noise_like(x0, lam, generator, seeds))
        for done, t in enumerate(range(lam, -1, -1), start=1):
            tt = torch.full((b,), t, dtype=torch.long, device=x0.device)
            mean = self._at(self.sqrt_recip_alpha, tt, x) * (x - self._at(self.eps_coef, tt, x) * model(x, tt).to(x.dtype))
            x = mean + self._at(self.betas, tt, x).sqrt() * self.noise_like(x, t, generator) if t > 0 else mean
            yield ChainStep(t=t, done=done, total=lam + 1, x=x)
