"""Bundled demo volume, its ground-truth mask and the demo checkpoint (installed as sss_viewer.resources)."""
