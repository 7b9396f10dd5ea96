"""Python's cycle collector confined to the GUI thread: Qt objects freed on another thread crash the process."""

from __future__ import annotations

import gc

from PySide6.QtCore import QCoreApplication, QObject, QThread, QTimer

INTERVAL_MS = 500  # how often the GUI thread looks whether a collection is due


class _Collector(QObject):
    """Automatic collection off; the GUI thread collects each generation when its count passes gc's threshold."""

    def __init__(self, parent: QObject) -> None:
        super().__init__(parent)
        self.thresholds = gc.get_threshold()
        gc.disable()
        self.timer = QTimer(self)
        self.timer.timeout.connect(self.collect_if_due)
        self.timer.start(INTERVAL_MS)

    def collect_if_due(self) -> None:
        """gc's own rule (generation n when its count passes threshold n), run here instead of wherever it fell."""
        for generation, (count, threshold) in enumerate(zip(gc.get_count(), self.thresholds)):
            if count <= threshold:
                break
            gc.collect(generation)


def collect_on_gui_thread() -> _Collector:
    """Install the collector once per QApplication (call from the GUI thread before starting worker threads).

    With automatic collection on, a collection runs on whichever thread happens to allocate; on the inference
    thread it can free a cycle holding a widget or a pyqtgraph item from the GUI thread, and Qt segfaults (seen:
    inside torch.load on the worker). pyqtgraph documents the same remedy (util.garbage_collector).
    """
    app = QCoreApplication.instance()
    assert app is not None and QThread.currentThread() is app.thread(), "install from the GUI thread of a QApplication"
    if getattr(app, "sss_gc_collector", None) is None:
        app.sss_gc_collector = _Collector(app)
    return app.sss_gc_collector
