"""sss-viewer: single-step diffusion anomaly detection for brain MRI, with a desktop viewer."""

__version__ = "0.1.0"
