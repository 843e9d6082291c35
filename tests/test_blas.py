"""core/blas.py: matrix products that reach OpenBLAS also where QGIS has loaded GSL's CBLAS first."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import scipy.io

from rslab.core.blas import gram, matmul


def _pixels(samples) -> np.ndarray:
    cube = scipy.io.loadmat(samples / "abu-beach-2.mat")["data"].astype(np.float64)
    return cube.reshape(-1, cube.shape[2])


def test_gram_and_matmul_equal_numpys_products_on_real_pixels(samples):
    x = _pixels(samples)
    x = x - x.mean(axis=0)
    reference = x.T @ x
    got = gram(x)
    assert np.allclose(got, reference, rtol=1e-12, atol=1e-9 * np.abs(reference).max())
    assert np.array_equal(got, got.T)  # both triangles: syrk fills one
    inverse = np.linalg.pinv(reference / len(x))
    for a, b in ((x, inverse), (x[::3], inverse), (np.asfortranarray(x), inverse[:, :7]), (inverse.T, x.T)):
        product = matmul(a, b)
        assert product.shape == (a.shape[0], b.shape[1]) and product.flags.c_contiguous
        assert np.allclose(product, a @ b, rtol=1e-10, atol=1e-10 * np.abs(a @ b).max())
    assert matmul(x[:5].astype(np.float32), inverse).dtype == np.float64


def test_products_are_right_with_gsls_cblas_loaded_first_as_in_qgis(samples):
    """qgis.bin and qgis_process.bin link libgslcblas, which then serves numpy's `@` in the whole process
    (10x slower: bench/blas_in_qgis.py); the engine's products go past it and must still be right there."""
    script = f"""
import ctypes
ctypes.CDLL("libgslcblas.so.0", mode=ctypes.RTLD_GLOBAL)
import numpy as np, scipy.io
from rslab.core.blas import gram, matmul
cube = scipy.io.loadmat({str(samples / "abu-beach-2.mat")!r})["data"].astype(np.float64)
x = cube.reshape(-1, cube.shape[2]); x = x - x.mean(axis=0)
exact = np.einsum("ni,nj->ij", x, x)  # no BLAS
assert np.allclose(gram(x), exact, rtol=1e-12, atol=1e-9 * abs(exact).max())
inverse = np.linalg.pinv(exact / len(x))
exact = np.einsum("ni,ij->nj", x, inverse)
assert np.allclose(matmul(x, inverse), exact, rtol=1e-9, atol=1e-9 * abs(exact).max())
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
