"""Inference engine: model, diffusion, noise, volumes and metrics. No Qt here, ever."""
