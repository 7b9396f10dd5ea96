"""Thin command-line entry points over the core engine, and their one way of reporting bad input."""

import argparse
import sys

from ..core.hygiene import MAP_OPTION_FIELDS, MapOptions

EXIT_BAD_INPUT = 2


def bad_input(prog: str, message: object) -> int:
    """Print `prog: message` as one line on stderr and return the exit status for bad input."""
    print(f"{prog}: {' '.join(str(message).split())}", file=sys.stderr)
    return EXIT_BAD_INPUT


def add_map_options(parser: argparse.ArgumentParser, description: str) -> None:
    """The map-hygiene options (hygiene.MapOptions), each unset by default: given_map_options reads them."""
    group = parser.add_argument_group("map hygiene", "beyond the paper; " + description)
    group.add_argument("--lowpass", type=float, metavar="S",
                       help="compare like with like: the heat map is the squared difference of the slice and its "
                            "reconstruction, both blurred by a Gaussian of sigma S model pixels (0: off)")
    group.add_argument("--median", type=int, metavar="K", help="K x K median filter of each slice's heat map, K odd "
                                                               "(0: off)")
    group.add_argument("--erode", type=int, metavar="PX",
                       help="zero the heat map within PX model pixels of the brain mask's rim (0: off)")
    group.add_argument("--normative", choices=("on", "off"),
                       help="subtract the checkpoint's healthy norm (where its reconstructions of healthy brains "
                            "usually err, made by sss-calibrate --normative-from) from the heat map: on or off")
    group.add_argument("--min-area", type=int, metavar="PX",
                       help="drop connected regions of a slice's mask smaller than PX model pixels, after the "
                            "dilation unless --no-postprocess (0: off)")
    group.add_argument("--persist", type=int, metavar="N",
                       help="keep a 3-D connected region of the volume's mask only when it spans at least N "
                            "consecutive slices (0: off)")


def given_map_options(args: argparse.Namespace) -> MapOptions | None:
    """The map options of the command line (those not given are off); None when none was given. ValueError naming
    the options when a value cannot be used."""
    given = {k: getattr(args, k) for k in MAP_OPTION_FIELDS}
    if all(v is None for v in given.values()):
        return None
    given["normative"] = given["normative"] == "on"
    try:
        return MapOptions(**{k: v or 0 for k, v in given.items()})
    except ValueError as err:
        raise ValueError(f"{err} (--lowpass, --median, --erode, --normative, --min-area, --persist)") from err
