"""Thin command-line entry points over the core engine, and their one way of reporting bad input."""

import sys

EXIT_BAD_INPUT = 2


def bad_input(prog: str, message: object) -> int:
    """Print `prog: message` as one line on stderr and return the exit status for bad input."""
    print(f"{prog}: {' '.join(str(message).split())}", file=sys.stderr)
    return EXIT_BAD_INPUT
