"""Guards against PySide6 builds that return None/True without a reference (6.12.0 on CPython < 3.12 aborts)."""

from __future__ import annotations

import ctypes
import sys

from PySide6.QtCore import QObject, Signal

RESERVE = 1 << 40  # references added to None, True and False: unreachable by any session's leaks
PROBES = 64


class _Probe(QObject):
    fired = Signal()


def leaked_references() -> dict[str, int]:
    """References to None and True lost by PROBES void calls and signal emits (0 and 0 on a sound build).

    PySide6 6.12.0 hands back None from every void call and True from every emit() without a new
    reference. CPython 3.12+ makes these objects immortal, so nothing happens there; on 3.11 each call
    brings the interpreter closer to freeing None or True, which aborts the process
    ("none_dealloc: deallocating None") mid-session or at exit.
    """
    probe = _Probe()
    none_before = sys.getrefcount(None)
    for _ in range(PROBES):
        probe.setObjectName("probe")
    none_lost = none_before - sys.getrefcount(None)
    true_before = sys.getrefcount(True)
    for _ in range(PROBES):
        probe.fired.emit()
    return {"None": none_lost, "True": true_before - sys.getrefcount(True)}


def _reserve(obj) -> bool:
    """Add RESERVE to obj's reference count, after checking that the count field is where CPython keeps it."""
    field = ctypes.c_ssize_t.from_address(id(obj))
    if field.value != sys.getrefcount(obj) - 1:  # getrefcount's own argument holds one reference
        return False
    field.value += RESERVE
    return True


def install() -> bool:
    """On an affected build (CPython < 3.12), give None, True and False an unreachable reserve; True if done.

    This is what CPython 3.12 does for these objects (immortality); sound builds and newer Pythons are
    left alone.
    """
    if sys.version_info >= (3, 12) or sys.getrefcount(None) > RESERVE:
        return False
    if not any(n >= PROBES // 2 for n in leaked_references().values()):
        return False
    return all([_reserve(None), _reserve(True), _reserve(False)])
