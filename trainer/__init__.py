"""Training, evaluation and demo-building on top of sss_viewer.core; no Qt."""
