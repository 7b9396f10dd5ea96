"""Desktop viewer: Qt and pyqtgraph widgets over the core engine."""
