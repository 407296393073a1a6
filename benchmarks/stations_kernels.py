"""Hand-written kernels for 10^6 stations, against scipy's CSR products: the experiment behind the stations paragraph
of ``docs/benchmarks.md`` ("Operators near their limits"). Not used by the package: neither kernel closes the gap.

Run (numba is not a dependency of appa-core; install it for this script only)::

    pip install numba
    python benchmarks/stations_kernels.py

Same operator and state as ``benchmarks/operator_limits.py`` (``StationOp``, 10^6 observations, 8 non-zeros per
row, float32 state ``[1, 5, 3, 721, 1440]``), 1 thread, rows stored sorted by their first column. Kernels:

* **ELL** (fixed-width rows, ELLPACK): ``columns [M, 8]`` (uint32) and ``weights [M, 8]``, no row pointer, the row
  permutation fused into the loops; forward ``y[o_r] = sum_k a_rk x[j_rk]``, adjoint ``g_x[j_rk] += a_rk g[o_r]``
  into a zeroed gradient.
* **transposed adjoint**: the gradient written once, in column order, from the transposed matrix restricted to its
  touched columns (``sum`` over the rows of each column of ``a g``, zeros in between), instead of zeroing then
  scattering.

Times in ms, median of ``--repeat`` interleaved repeats; the products alone (numpy in, numpy out) and, for ELL, the
whole differentiable forward + adjoint (``torch.autograd.grad``) against ``appa_core.obs.sparse.csr_matmul``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from operator_limits import NLAT, NLON, T, _fwd_adj, _interleaved, station_operator

from appa_core.obs.sparse import CSRMatrix, csr_matmul


def kernels():  # type: ignore[no-untyped-def]
    import numba

    numba.set_num_threads(1)

    @numba.njit(nogil=True, boundscheck=False)
    def ell_matvec(columns, weights, order, x, y):  # type: ignore[no-untyped-def]
        for r in range(columns.shape[0]):
            acc = weights[r, 0] * x[columns[r, 0]]
            for s in range(1, columns.shape[1]):
                acc += weights[r, s] * x[columns[r, s]]
            y[order[r]] = acc

    @numba.njit(nogil=True, boundscheck=False)
    def ell_rmatvec(columns, weights, order, g, out):  # type: ignore[no-untyped-def]
        for r in range(columns.shape[0]):
            gr = g[order[r]]
            for s in range(columns.shape[1]):
                out[columns[r, s]] += weights[r, s] * gr

    @numba.njit(nogil=True, boundscheck=False)
    def transposed_rmatvec(cols, ptr, rows, w, order, g, out):  # type: ignore[no-untyped-def]
        gs = np.empty(order.size, dtype=g.dtype)
        for r in range(order.size):
            gs[r] = g[order[r]]
        prev = 0
        for u in range(cols.size):
            c = cols[u]
            for n in range(prev, c):
                out[n] = 0
            acc = out.dtype.type(0)
            for k in range(ptr[u], ptr[u + 1]):
                acc += w[k] * gs[rows[k]]
            out[c] = acc
            prev = c + 1
        for n in range(prev, out.size):
            out[n] = 0

    return ell_matvec, ell_rmatvec, transposed_rmatvec


class Ell:
    """``A`` in fixed-width rows with the numba products, ``matvec``/``rmatvec`` on ``[B, N]`` / ``[B, M]`` tensors."""

    def __init__(self, mat: CSRMatrix) -> None:
        A = mat._csr(np.dtype(np.float32))
        m, width = A.shape[0], int(np.diff(A.indptr).max())
        assert width * m == A.nnz, "the benchmark's rows all have 8 entries"
        self.columns = A.indices.astype(np.uint32).reshape(m, width)
        self.weights = A.data.reshape(m, width)
        self.order = mat.order.astype(np.uint32)
        self.n = A.shape[1]
        self.fwd, self.adj, _ = kernels()

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        xs = x.detach().contiguous().numpy()
        y = np.empty((xs.shape[0], self.columns.shape[0]), np.float32)
        for b in range(xs.shape[0]):
            self.fwd(self.columns, self.weights, self.order, xs[b], y[b])
        return torch.from_numpy(y)

    def rmatvec(self, g: torch.Tensor) -> torch.Tensor:
        gs = g.detach().contiguous().numpy()
        out = np.zeros((gs.shape[0], self.n), np.float32)
        for b in range(gs.shape[0]):
            self.adj(self.columns, self.weights, self.order, gs[b], out[b])
        return torch.from_numpy(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=9)
    args = p.parse_args()
    torch.set_num_threads(1)
    op, spec = station_operator(1_000_000)
    mat = CSRMatrix(op.matrix(), reorder=True, backend="scipy")
    A = mat._csr(np.dtype(np.float32))
    ell = Ell(mat)
    At = A.T.tocsr()
    counts = np.diff(At.indptr)
    touched = np.flatnonzero(counts)
    cols = touched.astype(np.uint32)
    ptr = np.concatenate([[0], np.cumsum(counts[touched])]).astype(np.int64)
    rows, w = At.indices.astype(np.uint32), At.data
    transposed = kernels()[2]
    rng = np.random.default_rng(0)
    x = torch.from_numpy((270.0 + 10.0 * rng.standard_normal(T * spec.n_channels * NLAT * NLON)).astype(np.float32))
    g = torch.from_numpy(rng.standard_normal(A.shape[0]).astype(np.float32))
    xs, gn = x.numpy(), g.numpy()

    def t_adjoint() -> np.ndarray:
        out = np.empty(A.shape[1], np.float32)
        transposed(cols, ptr, rows, w, ell.order, gn, out)
        return out

    ref = A.T @ gn[mat.order]
    assert np.allclose(ell.rmatvec(g[None])[0].numpy(), ref, atol=1e-4)
    assert np.allclose(t_adjoint(), ref, atol=1e-4)
    assert np.allclose(ell.matvec(x[None])[0].numpy(), (A @ xs)[mat._inverse], atol=1e-3)
    fns = {
        "forward: scipy CSR (+ row permutation)": lambda: (A @ xs)[mat._inverse],
        "forward: ELL": lambda: ell.matvec(x[None]),
        "adjoint: scipy CSR (+ row permutation)": lambda: A.T @ gn[mat.order],
        "adjoint: ELL (zeroed gradient + scatter)": lambda: ell.rmatvec(g[None]),
        "adjoint: transposed (gradient written once)": t_adjoint,
    }
    for name, f in _fwd_adj(lambda v: csr_matmul(v, mat), x[None]).items():
        fns[f"differentiable {name}: scipy (csr_matmul)"] = f
    from appa_core.obs.sparse import linear_apply

    for name, f in _fwd_adj(lambda v: linear_apply(v, ell), x[None]).items():
        fns[f"differentiable {name}: ELL"] = f
    ts = _interleaved(fns, args.repeat)
    print(f"| kernel | ms (median of {args.repeat}, min-max) |\n|---|---|")
    for name, v in ts.items():
        print(f"| {name} | {statistics.median(v) * 1e3:.1f} ({min(v) * 1e3:.1f}-{max(v) * 1e3:.1f}) |")


if __name__ == "__main__":
    main()
