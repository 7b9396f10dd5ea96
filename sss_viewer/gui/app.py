"""The sss-viewer command (a DESIGN.md contract): parse its arguments, open the window, or render a screenshot."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..core.anomaly import DEFAULT_THRESHOLD, DEFAULT_TIMESTEP
from ..core.inputs import SKULL_MODES
from ..core.resources import DEMO_CHECKPOINT, DEMO_VOLUME, default_checkpoint, resource, resource_dir
from . import texts
from .settings import LAYOUTS, THRESHOLD_RANGE, TIMESTEP_RANGE, Settings


def _ranged(kind, low, high):
    def parse(text: str):
        value = kind(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(texts.CLI_RANGE.format(low=low, high=high, value=text))
        return value
    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sss-viewer", description=texts.CLI_DESCRIPTION)
    parser.add_argument("volume", nargs="?", type=Path, help=texts.CLI_VOLUME)
    parser.add_argument("--checkpoint", type=Path, help=texts.CLI_CHECKPOINT)
    parser.add_argument("--series", help=texts.CLI_SERIES)
    parser.add_argument("--skull", choices=SKULL_MODES, default="auto", help=texts.CLI_SKULL)
    parser.add_argument("--brain-mask", type=Path, metavar="FILE", help=texts.CLI_BRAIN_MASK)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None, help=texts.CLI_DEVICE)
    parser.add_argument("--slice", type=_ranged(int, 0, 1 << 30), default=None, help=texts.CLI_SLICE)
    parser.add_argument("--timestep", type=_ranged(int, *TIMESTEP_RANGE), default=None,
                        help=texts.CLI_TIMESTEP.format(low=TIMESTEP_RANGE[0], high=TIMESTEP_RANGE[1],
                                                       default=DEFAULT_TIMESTEP))
    parser.add_argument("--threshold", type=_ranged(float, *THRESHOLD_RANGE), default=None,
                        help=texts.CLI_THRESHOLD.format(low=THRESHOLD_RANGE[0], high=THRESHOLD_RANGE[1],
                                                        default=DEFAULT_THRESHOLD))
    parser.add_argument("--reference", type=Path, metavar="FILE", help=texts.CLI_REFERENCE)
    parser.add_argument("--layout", choices=LAYOUTS, default=None, help=texts.CLI_LAYOUT)
    parser.add_argument("--screenshot", type=Path, metavar="PNG", help=texts.CLI_SCREENSHOT)
    return parser.parse_args(argv)


def startup_files(args: argparse.Namespace) -> tuple[Path | None, Path | None, str | None, str | None]:
    """(volume, checkpoint, why there is no volume, why there is no checkpoint): the arguments, else the demo."""
    volume_note = checkpoint_note = None
    volume = args.volume
    if volume is None:
        missing = [name for name in (DEMO_VOLUME, DEMO_CHECKPOINT) if not resource(name).is_file()]
        if resource(DEMO_VOLUME).is_file():
            volume = resource(DEMO_VOLUME)
        else:
            volume_note = texts.DEMO_MISSING.format(missing=", ".join(missing), folder=resource_dir())
    checkpoint = args.checkpoint
    if checkpoint is None:
        try:
            checkpoint = default_checkpoint(volume)
        except FileNotFoundError as err:
            checkpoint_note = str(err)
    return volume, checkpoint, volume_note, checkpoint_note


def launch(args: argparse.Namespace, settings: Settings | None = None):
    """Build, show and start the main window for parsed arguments (the app's QApplication must exist)."""
    from .main_window import MainWindow

    settings = Settings.load(repair=args.screenshot is None) if settings is None else settings
    window = MainWindow(settings, screenshot=args.screenshot)
    if args.brain_mask is not None:
        window.brain_menu.brain_mask = args.brain_mask
        window.brain_menu.mask_action.setChecked(True)
    else:
        window.brain_menu.modes[args.skull].setChecked(True)
    overrides = {k: v for k, v in (("timestep", args.timestep), ("threshold", args.threshold)) if v is not None}
    window.state.set(**overrides)
    window.pinned_settings = set(overrides)
    if args.layout is not None:
        window.state.set(layout=args.layout)
    window.show()
    if settings.warning:
        print(settings.warning, file=sys.stderr)
        window.show_warning(settings.warning)
    volume, checkpoint, volume_note, checkpoint_note = startup_files(args)
    window.start(volume, checkpoint, device=args.device, slice_index=args.slice, volume_note=volume_note,
                 checkpoint_note=checkpoint_note, auto_checkpoint=args.checkpoint is None, series=args.series,
                 reference=args.reference)
    return window


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([sys.argv[0]])
    app.setApplicationName(texts.APP_NAME)
    window = launch(args)
    if args.screenshot is not None:
        def finished(ok: bool, message: str) -> None:
            if not ok:
                print(texts.CLI_SCREENSHOT_FAILED.format(message=" ".join(message.split())), file=sys.stderr)
            app.exit(0 if ok else 2)
        window.screenshot_done.connect(finished)
    code = app.exec()
    window.close()  # after exec: closing inside it would leave a stray Quit event for whoever runs Qt next
    return code


if __name__ == "__main__":
    sys.exit(main())
