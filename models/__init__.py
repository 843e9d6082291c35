"""Torch nn.Modules, one file per architecture; no I/O, no training loops.

Architectures register themselves with `models.registry.register` so a
checkpoint's model card can name them; `models.registry.load_builtin()`
imports every architecture module of the package.
"""
