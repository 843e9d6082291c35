"""Matrix products through BLAS's Fortran entry points (scipy.linalg.blas), not numpy's `@`.

QGIS 3.22's binaries (`qgis.bin`, `qgis_process.bin`) link GSL, and GSL's
libgslcblas exports the `cblas_*` functions that Debian's numpy calls for `@`.
Loaded before numpy, they take the place of OpenBLAS's in the whole process:
GSL's reference loops made RX's statistics pass 40x and its scoring 10x
slower inside QGIS than in plain Python (RX on a 1200 x 1200 x 205 cube:
225 s through qgis_process, 32 s through Python). scipy's wrappers call
`dgemm_`/`dsyrk_`, which GSL does not export, so they reach OpenBLAS in both.
torch brings its own BLAS and is not affected. `bench/blas_in_qgis.py`
measures it.
"""
from __future__ import annotations

import numpy as np
from scipy.linalg import blas


def gram(x: np.ndarray) -> np.ndarray:
    """x^T x of an (N, B) array, as float64 (B, B)."""
    x = np.asarray(x, np.float64)
    upper = blas.dsyrk(1.0, x.T, trans=0)  # x.T is column-major when x is row-major: no copy
    return np.triu(upper) + np.triu(upper, 1).T


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b of two 2-D arrays, as float64 (row-major)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    # (a b)^T = b^T a^T: with row-major inputs both transposes are column-major views, and the column-major
    # result's transpose is a row-major a @ b; nothing is copied
    return blas.dgemm(1.0, b.T, a.T).T
