"""Thin command-line entry points over the core engine."""
