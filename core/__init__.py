"""RS Lab engine.

Everything in this package runs without QGIS and without Qt: a script, a
notebook, a server or a federated client can import it. Modules that need
torch import it lazily, so raster I/O and the plugin shell work before torch
is installed.
"""
