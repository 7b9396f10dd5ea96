"""Desktop viewer: Qt and pyqtgraph widgets over the core engine."""

from . import qtcompat

qtcompat.install()
