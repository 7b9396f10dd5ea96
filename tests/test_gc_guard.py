"""The viewer's cycle collector: garbage made on the GUI thread is never collected on the inference thread."""

import gc
import threading

from sss_viewer.gui.gc_guard import collect_on_gui_thread


class _Cycle:
    """A self-referencing object that records which thread finalises it."""

    def __init__(self, seen: list) -> None:
        self.me, self.seen = self, seen

    def __del__(self) -> None:
        self.seen.append(threading.current_thread().name)


def test_collector_is_installed_once_and_turns_automatic_collection_off(qapp):
    first = collect_on_gui_thread()
    assert collect_on_gui_thread() is first
    assert not gc.isenabled()


def test_cycles_are_freed_on_the_gui_thread_not_on_an_allocating_worker(qapp, qtbot):
    collect_on_gui_thread()
    gc.collect()
    seen: list[str] = []
    _Cycle(seen)  # unreachable at once: only a collection frees it

    kept: list = []

    def allocate() -> None:  # far past gen 0's threshold: automatic collection would run right here
        kept.append([[] for _ in range(50_000)])

    worker = threading.Thread(target=allocate, name="inference")
    worker.start()
    worker.join()
    assert seen == []
    qtbot.waitUntil(lambda: bool(seen), timeout=5000)
    assert seen == [threading.main_thread().name]
