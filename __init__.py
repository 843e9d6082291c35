"""RS Lab QGIS plugin entry point.

Only `classFactory` lives here, and it imports the plugin lazily, so the
engine (`rslab.core`, `rslab.models`) can be imported without QGIS.
"""


def classFactory(iface):  # noqa: N802 (name fixed by QGIS)
    from .plugin import RSLabPlugin

    return RSLabPlugin(iface)
