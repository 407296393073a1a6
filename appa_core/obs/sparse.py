r"""Sparse matrix products for linear observation operators: ``y = A x`` with a custom autograd function.

:class:`CSRMatrix` holds a scipy CSR matrix ``A`` ``[M, N]`` prepared for repeated application, and
:func:`csr_matmul` applies it to the last axis of a tensor, ``x`` ``[..., N]`` -> ``[..., M]``, through a
``torch.autograd.Function`` whose

* **forward** is the CSR product :math:`A x`,
* **backward** is the transposed CSR product :math:`A^\top g` (itself differentiable: double backward works),
* **jvp** is :math:`A \dot x` (forward mode, ``torch.func.jvp``), and **vmap** folds the vmapped axis into the
  rows (``torch.func.vmap``).

On CPU the products are scipy's compiled CSR kernels (``csr_matvec`` for :math:`A x`; the transpose view
``A.T`` is CSC, so :math:`A^\top g` is ``csc_matvec``: one streaming pass over the entries that scatters into
the output -- no transposed copy, no ``O(N)`` row pointer), one row of ``x`` at a time, in the dtype of ``x``
(float32 and float64; other dtypes are computed in float32). Elsewhere (CUDA) they are torch sparse CSR
products, with the transpose built once per device. With ``reorder=True`` the rows are stored sorted by their
first column, so that consecutive rows read nearby state values (10^6 random stations: 3-5x faster than random
order), and the output is put back in the original order.

A small matrix (at most :data:`SMALL_NNZ` entries, a few hundred stations) on CPU takes another road:
:func:`csr_matmul` is then a torch gather and ``index_add`` over its entries, differentiated by autograd's own
rules, because there the fixed cost of a call (the custom function, the numpy round trip) outweighs the product.

The products of a matrix with at least :data:`PARALLEL_NNZ` entries run on ``torch.get_num_threads()`` threads
(scipy's kernels release the GIL), with the same sums as one thread, bit for bit:

* the forward on blocks of rows with about ``nnz / threads`` entries each, each thread writing its rows of ``y``;
* the adjoint on blocks of state *columns* with about ``nnz / threads`` entries each (a copy of the entries, built
  on the first adjoint and kept: ``nnz`` values and indices more in memory), each thread zeroing, then scattering
  into, its own range of the gradient: no two threads write one value and nothing is copied afterwards.

Writing into a given output needs scipy's compiled kernels ``csr_matvec`` / ``csc_matvec`` (``Y += A X``) from
``scipy.sparse._sparsetools``, a private module: they are checked once against the public products on a small
matrix (:func:`_inplace_kernels`), and without them the products fall back to the public API (which allocates each
result; the adjoint then runs on one thread).

Shapes: ``A`` ``[M, N]`` with ``N`` the flattened state length (e.g. ``T*C*H*W``), ``x`` ``[..., N]`` in the
state's units, ``y`` ``[..., M]``.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import os
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

__all__ = ["PARALLEL_NNZ", "SMALL_NNZ", "CSRMatrix", "LinearMap", "csr_matmul", "linear_apply"]

#: the products of a matrix with at least this many stored entries use ``torch.get_num_threads()`` threads on CPU
#: (below it a product takes under a millisecond and handing work to threads would not pay)
PARALLEL_NNZ = 1 << 20

#: :func:`csr_matmul` of a matrix with at most this many stored entries, on CPU in float32 or float64, is a torch
#: gather and ``index_add`` (differentiated by autograd's own rules: no custom function, no numpy round trip; 2x
#: less time for 1,024 entries, even at 4,096, measured forward + backward on one thread)
SMALL_NNZ = 1 << 11

_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}

try:  # private: scipy's kernels that accumulate into an output array (signature unchanged since scipy 0.7)
    from scipy.sparse import _sparsetools
except ImportError:  # pragma: no cover - depends on scipy's internals
    _sparsetools = None


@functools.cache
def _inplace_kernels() -> tuple[Callable[..., None], Callable[..., None]] | None:
    """scipy's ``csr_matvec(n_row, n_col, Ap, Aj, Ax, Xx, Yx)`` and ``csc_matvec(...)`` (``Yx += A Xx``), or
    ``None`` when they are missing or give other values than the public products on a small matrix."""
    try:
        A = sp.csr_array(np.array([[1.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.5, -1.0]]))
        for dtype in (np.float32, np.float64):
            B = sp.csr_array((A.data.astype(dtype), A.indices, A.indptr), shape=A.shape)
            x, g = np.arange(1, 5, dtype=dtype), np.arange(1, 4, dtype=dtype)
            y, gx = np.full(3, 1, dtype=dtype), np.full(4, 1, dtype=dtype)
            _sparsetools.csr_matvec(3, 4, B.indptr, B.indices, B.data, x, y)
            _sparsetools.csc_matvec(4, 3, B.indptr, B.indices, B.data, g, gx)  # A.T as CSC: the same arrays
            if not (np.array_equal(y, B @ x + 1) and np.array_equal(gx, B.T @ g + 1)):
                return None
    except Exception:  # a missing module or a changed signature: the public products
        return None
    return _sparsetools.csr_matvec, _sparsetools.csc_matvec


_TorchCSR = tuple[Tensor, Tensor, Tensor | None, Tensor | None]


class CSRMatrix:
    """A sparse matrix ``A`` ``[M, N]`` ready for :func:`csr_matmul` (built once, in ``prepare``).

    Args:
        matrix: the matrix (any scipy sparse format; converted to CSR float64, duplicates summed).
        reorder: store the rows sorted by their first column (better memory locality for scattered rows).
        canonical: sum duplicate entries (and sort the columns of each row); ``False`` trusts the caller that no
            row repeats a column (the products do not need sorted columns), which saves a sort in ``prepare``.
        backend: ``"auto"`` (scipy on CPU, torch gathers there for :func:`csr_matmul` of at most
            :data:`SMALL_NNZ` entries; torch sparse CSR elsewhere), ``"scipy"`` (CPU only) or ``"torch"``
            (everywhere; on CPU it tests the path other devices take).
    """

    def __init__(
        self, matrix: sp.sparray | sp.spmatrix, reorder: bool = False, canonical: bool = True, backend: str = "auto"
    ) -> None:
        if backend not in ("auto", "scipy", "torch"):
            raise ValueError(f"CSRMatrix: field 'backend' has value {backend!r}; use 'auto', 'scipy' or 'torch'")
        self.backend = backend
        A = sp.csr_array(matrix, dtype=np.float64)
        if canonical:
            A.sum_duplicates()
        if max(A.shape[1], A.nnz) < 2**31 - 1 and A.indices.dtype != np.int32:  # half the index bytes to read
            A = sp.csr_array((A.data, A.indices.astype(np.int32), A.indptr.astype(np.int32)), shape=A.shape)
        self.shape: tuple[int, int] = (int(A.shape[0]), int(A.shape[1]))
        self.order: np.ndarray | None = None
        self._inverse: np.ndarray | None = None
        if reorder and A.shape[0] > 1 and A.nnz > 0:
            counts = np.diff(A.indptr)
            first = np.where(counts > 0, A.indices[np.minimum(A.indptr[:-1], A.nnz - 1)], -1)
            order = np.argsort(first, kind="stable")
            if np.any(order != np.arange(order.size)):
                A = A[order]
                self.order = order
                self._inverse = np.argsort(order)
        self._scipy: dict[np.dtype[Any], sp.csr_array] = {np.dtype(np.float64): A}
        self._nnz = int(A.nnz)
        self._torch: dict[tuple[torch.dtype, str], _TorchCSR] = {}
        self._transposed: dict[np.dtype[Any], sp.csc_array] = {}
        self._split: dict[tuple[np.dtype[Any], int], _RowBlocks] = {}
        self._column_split: dict[np.dtype[Any], _ColumnBlocks] = {}  # the latest thread count's (a copy of A)
        self._entries: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor, Tensor]] = {}

    @property
    def nnz(self) -> int:
        return self._nnz

    def _csr(self, dtype: np.dtype[Any]) -> sp.csr_array:
        if dtype not in self._scipy:
            A = self._scipy[np.dtype(np.float64)]
            self._scipy[dtype] = sp.csr_array((A.data.astype(dtype), A.indices, A.indptr), shape=A.shape)
        return self._scipy[dtype]

    def _csc_transpose(self, dtype: np.dtype[Any]) -> sp.csc_array:
        """``A.T`` as a CSC view of the CSR arrays (no copy), kept: building the view costs ~25 us per product."""
        if dtype not in self._transposed:
            self._transposed[dtype] = self._csr(dtype).T
        return self._transposed[dtype]

    def _blocks(self, dtype: np.dtype[Any]) -> _RowBlocks | None:
        """The rows split for ``torch.get_num_threads()`` threads, or ``None`` (one thread, or a small matrix)."""
        n = torch.get_num_threads()
        if n < 2 or self.nnz < PARALLEL_NNZ:
            return None
        if (dtype, n) not in self._split:
            self._split[(dtype, n)] = _RowBlocks(self._csr(dtype), n)
        return self._split[(dtype, n)]

    def _coo(self, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """The entries as ``(rows, columns, values)`` tensors ``[nnz]``, rows in the original order (kept)."""
        if (dtype, device) not in self._entries:
            A = self._scipy[np.dtype(np.float64)].tocoo()
            rows = A.row if self.order is None else self.order[A.row]
            with torch.inference_mode(False):  # kept: a first call under inference mode must not make them inference
                self._entries[(dtype, device)] = (
                    torch.as_tensor(rows.astype(np.int64), device=device),
                    torch.as_tensor(A.col.astype(np.int64), device=device),
                    torch.as_tensor(A.data, dtype=dtype, device=device),
                )
        return self._entries[(dtype, device)]

    def _column_blocks(self, dtype: np.dtype[Any]) -> _ColumnBlocks | None:
        """The entries split by state columns for ``torch.get_num_threads()`` threads (one block on one thread), or
        ``None`` (a small matrix, or no in-place kernels: the public one-thread product)."""
        if self.nnz < PARALLEL_NNZ or _inplace_kernels() is None:
            return None
        n = torch.get_num_threads()
        if dtype not in self._column_split or self._column_split[dtype].threads != n:
            self._column_split[dtype] = _ColumnBlocks(self._csr(dtype), n, self.order)
        return self._column_split[dtype]

    def _torch_csr(
        self, dtype: torch.dtype, device: torch.device
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        key = (dtype, str(device))
        if key not in self._torch:
            A = self._scipy[np.dtype(np.float64)]
            At = A.T.tocsr()
            with warnings.catch_warnings():  # "sparse CSR support is in beta state"
                warnings.simplefilter("ignore", UserWarning)
                fwd, adj = (
                    torch.sparse_csr_tensor(
                        torch.as_tensor(B.indptr.astype(np.int64), device=device),
                        torch.as_tensor(B.indices.astype(np.int64), device=device),
                        torch.as_tensor(B.data, dtype=dtype, device=device),
                        size=B.shape,
                        check_invariants=False,
                    )
                    for B in (A, At)
                )
            order = None if self.order is None else torch.as_tensor(self.order, device=device)
            inverse = None if self._inverse is None else torch.as_tensor(self._inverse, device=device)
            self._torch[key] = (fwd, adj, order, inverse)
        return self._torch[key]

    def _use_torch(self, x: Tensor) -> bool:
        if x.device.type != "cpu":
            if self.backend == "scipy":
                raise ValueError(f"CSRMatrix: backend 'scipy' works on CPU tensors, got one on {x.device}")
            return True
        return self.backend == "torch"

    # ------------------------------------------------------------------ raw products (no autograd)
    def matvec(self, x: Tensor) -> Tensor:
        """:math:`A x` for ``x`` ``[..., N]`` -> ``[..., M]`` (no autograd; use :func:`csr_matmul`)."""
        lead, rows = x.shape[:-1], x.reshape(-1, x.shape[-1])
        if self._use_torch(x):
            fwd, _, _, inverse = self._torch_csr(x.dtype, x.device)
            y = (fwd @ rows.T).T
            y = y if inverse is None else y[:, inverse]
            return y.reshape(*lead, self.shape[0])
        work = x.dtype if x.dtype in _NUMPY_DTYPES else torch.float32
        dtype = np.dtype(_NUMPY_DTYPES[work])
        xs = rows.detach().to(work).contiguous().numpy()
        blocks = self._blocks(dtype)
        if blocks is None:
            out = _rows_product(self._csr(dtype), xs, self._inverse)
        else:
            ys = [blocks.matvec(v, self._inverse) for v in xs]
            out = ys[0][None] if len(ys) == 1 else np.stack(ys)  # one row: no copy
        return torch.from_numpy(out).reshape(*lead, self.shape[0]).to(x.dtype)

    def rmatvec(self, g: Tensor) -> Tensor:
        """:math:`A^\\top g` for ``g`` ``[..., M]`` -> ``[..., N]`` (no autograd).

        On CPU the output is allocated by numpy (transparent huge pages where the system allows them: allocating
        and touching a dense state-sized gradient costs ~10x less than a torch allocation on Linux).
        """
        lead, rows = g.shape[:-1], g.reshape(-1, g.shape[-1])
        if self._use_torch(g):
            _, adj, order, _ = self._torch_csr(g.dtype, g.device)
            gs = rows if order is None else rows[:, order]
            return (adj @ gs.T).T.reshape(*lead, self.shape[1])
        work = g.dtype if g.dtype in _NUMPY_DTYPES else torch.float32
        dtype = np.dtype(_NUMPY_DTYPES[work])
        gs = rows.detach().to(work).contiguous().numpy()
        blocks = self._column_blocks(dtype)
        if blocks is not None:
            return torch.from_numpy(blocks.rmatvec(gs)).reshape(*lead, self.shape[1]).to(g.dtype)
        if self.order is not None:
            gs = np.take(gs, self.order, axis=1)  # np.take: about half the time of fancy indexing here
        out = _rows_product(self._csc_transpose(dtype), gs)  # csc_matvec scatters, row by row of gs
        return torch.from_numpy(out).reshape(*lead, self.shape[1]).to(g.dtype)


#: below this many values (input or output) a batch of rows is one scipy call on the ``[N, B]`` matrix: its
#: transposing copies cost less than a Python-level call per row; above it, one call per row
_BATCH_ONE_CALL = 1 << 16


def _rows_product(A: sp.csr_array | sp.csc_array, xs: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """``(A @ xs[r])[rows]`` for every row ``r`` of ``xs`` ``[B, N]`` -> C-contiguous ``[B, M]`` (``rows``: an
    optional permutation of the output's entries)."""
    if xs.shape[0] > 1 and max(xs.size, xs.shape[0] * A.shape[0]) <= _BATCH_ONE_CALL:
        out = A @ xs.T  # [M, B]
        return np.ascontiguousarray((out if rows is None else np.take(out, rows, axis=0)).T)
    ys = [A @ xs[r] for r in range(xs.shape[0])]
    if rows is not None:
        ys = [np.take(y, rows) for y in ys]
    return ys[0][None] if len(ys) == 1 else np.stack(ys)


class _RowBlocks:
    """A CSR matrix ``[M, N]`` split into ``n`` blocks of rows with about ``nnz / n`` entries each (views of its
    arrays), for :math:`A x` on ``n`` threads: each thread writes its own rows of ``y``, then its share of the
    permutation back to the original row order."""

    def __init__(self, A: sp.csr_array, n: int) -> None:
        self.shape: tuple[int, int] = (int(A.shape[0]), int(A.shape[1]))
        self.dtype = A.dtype
        rows = [0, *np.searchsorted(A.indptr, np.linspace(0, A.nnz, n + 1)[1:-1]).tolist(), A.shape[0]]
        self.blocks = [
            (r0, r1, sp.csr_array((A.data[A.indptr[r0] : A.indptr[r1]], A.indices[A.indptr[r0] : A.indptr[r1]],
                                   A.indptr[r0 : r1 + 1] - A.indptr[r0]), shape=(r1 - r0, A.shape[1])))
            for r0, r1 in itertools.pairwise(rows) if r1 > r0
        ]  # fmt: skip

    def matvec(self, x: np.ndarray, inverse: np.ndarray | None) -> np.ndarray:
        """``(A x)[inverse]`` for one vector ``x`` ``[N]`` -> ``[M]``."""
        kernels = _inplace_kernels() if x.dtype == self.dtype else None
        y = np.zeros(self.shape[0], dtype=np.result_type(self.dtype, x.dtype))
        n = len(self.blocks)

        def part(i: int) -> None:
            r0, r1, block = self.blocks[i]
            if kernels is None:
                y[r0:r1] = block @ x
            else:  # into y's rows, no temporary
                kernels[0](r1 - r0, self.shape[1], block.indptr, block.indices, block.data, x, y[r0:r1])

        _run(part, n)
        if inverse is None:
            return y
        out = np.empty_like(y)
        bounds = np.linspace(0, y.size, n + 1).astype(np.int64)

        def permute(i: int) -> None:  # mode="clip": no buffering of out (the indices are in range)
            np.take(y, inverse[bounds[i] : bounds[i + 1]], out=out[bounds[i] : bounds[i + 1]], mode="clip")

        _run(permute, n)
        return out


class _ColumnBlocks:
    """The entries of a CSR matrix ``A`` ``[M, N]`` split into ``n`` blocks of state columns with about ``nnz / n``
    entries each, for :math:`A^\\top g` on ``n`` threads, each thread writing its own range of the output.

    Each block is a CSR matrix ``[M_k, N]`` of the entries in its columns, over the rows that have some (in ``A``'s
    order), with those rows' places in ``g``: a thread gathers its rows of ``g`` (the permutation back from the
    stored order, split across the threads for free: most rows have entries in one block only), zeroes its range of
    the output and scatters into it (scipy's ``csc_matvec`` on the transposed view, in place). Every output value
    gets the same sum, in the same order, as from the one-thread product.

    Args:
        A: the stored matrix.
        n: the number of blocks (threads).
        order: the stored rows' places in ``g`` (``None``: the identity).
    """

    def __init__(self, A: sp.csr_array, n: int, order: np.ndarray | None) -> None:
        self.shape: tuple[int, int] = (int(A.shape[0]), int(A.shape[1]))
        self.dtype, self.threads = A.dtype, n
        self.blocks: list[tuple[int, int, sp.csr_array, np.ndarray | None]] = [(0, self.shape[1], A, order)]
        if n < 2:
            return  # A itself: no copy
        per_column = np.cumsum(np.bincount(A.indices, minlength=self.shape[1]))
        cuts = np.searchsorted(per_column, np.linspace(0, A.nnz, n + 1)[1:-1], side="right")
        columns = [0, *np.unique(cuts[(cuts > 0) & (cuts < self.shape[1])]).tolist(), self.shape[1]]
        row_of = np.repeat(np.arange(self.shape[0], dtype=A.indices.dtype), np.diff(A.indptr))
        self.blocks = []
        for c0, c1 in itertools.pairwise(columns):
            keep = (A.indices >= c0) & (A.indices < c1)
            counts = np.bincount(row_of[keep], minlength=self.shape[0])
            rows = np.flatnonzero(counts)
            indptr = np.zeros(rows.size + 1, dtype=A.indices.dtype)
            np.cumsum(counts[rows], out=indptr[1:])
            block = sp.csr_array((A.data[keep], A.indices[keep], indptr), shape=(rows.size, self.shape[1]))
            places = None if order is None and rows.size == self.shape[0] else rows if order is None else order[rows]
            self.blocks.append((c0, c1, block, places))

    def rmatvec(self, gs: np.ndarray) -> np.ndarray:
        """:math:`A^\\top g` for every row ``g`` of ``gs`` ``[B, M]`` (``A``'s dtype, in the caller's row order) ->
        ``[B, N]``."""
        kernels = _inplace_kernels()
        assert kernels is not None and gs.dtype == self.dtype
        n, N = len(self.blocks), self.shape[1]
        # one thread: np.zeros, whose pages the system zeroes on first touch (10^6 stations: 9.7 ms against 12.0 ms
        # to fill with zeros, then scatter); more: each thread fills its range (the first-touch faults of several
        # threads contend: 7.3 ms on 2 threads against 10.2 ms)
        out = (np.zeros if n == 1 else np.empty)((gs.shape[0], N), dtype=self.dtype)

        def part(i: int) -> None:
            c0, c1, block, places = self.blocks[i]
            for r in range(gs.shape[0]):
                if n > 1:
                    out[r, c0:c1] = 0.0
                g = gs[r] if places is None else np.take(gs[r], places)
                kernels[1](N, block.shape[0], block.indptr, block.indices, block.data, g, out[r])

        _run(part, n)
        return out


_pool: tuple[ThreadPoolExecutor, int] | None = None  # the shared worker threads and their number
_pool_lock = threading.Lock()


def _forget_pool() -> None:
    """In a forked child: the parent's worker threads do not exist there (a submitted job would wait forever), and
    the lock may have been held by another thread at the fork."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _run(fn: Callable[[int], None], n: int) -> None:
    """``fn(0), ..., fn(n - 1)``: ``fn(0)`` in the calling thread, the others in a shared pool of worker threads
    (all are waited for, also when one raises; the first error is raised)."""
    global _pool
    futures = []
    if n > 1:
        with _pool_lock:
            if _pool is None or _pool[1] < n - 1:
                _pool = (ThreadPoolExecutor(max_workers=n - 1, thread_name_prefix="appa-csr"), n - 1)
            pool = _pool[0]
        futures = [pool.submit(fn, i) for i in range(1, n)]
    try:
        fn(0)
    finally:
        for f in futures:
            f.exception()  # waits
    for f in futures:
        f.result()


class LinearMap(Protocol):
    """A linear map for :func:`linear_apply`: ``matvec`` and its adjoint ``rmatvec`` on tensors, without autograd,
    treating every leading axis as a batch axis (``[..., *in] -> [..., *out]`` and back)."""

    def matvec(self, x: Tensor) -> Tensor: ...

    def rmatvec(self, g: Tensor) -> Tensor: ...


class _Linear(torch.autograd.Function):
    """``y = A x`` (``A.matvec``); backward ``A^T g`` (``A.rmatvec``), itself differentiable."""

    generate_vmap_rule = False

    @staticmethod
    def forward(x: Tensor, op: LinearMap, transpose: bool) -> Tensor:  # type: ignore[override]
        return op.rmatvec(x) if transpose else op.matvec(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        _, op, transpose = inputs
        ctx.op, ctx.transpose = op, transpose

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        return _Linear.apply(grad, ctx.op, not ctx.transpose), None, None

    @staticmethod
    def jvp(ctx: Any, tangent: Tensor, *_: Any) -> Tensor:  # type: ignore[override]
        return _Linear.apply(tangent, ctx.op, ctx.transpose)

    @staticmethod
    def vmap(info: Any, in_dims: tuple[Any, ...], x: Tensor, op: LinearMap, transpose: bool) -> tuple[Tensor, Any]:
        dim = in_dims[0]
        if dim is None:
            return _Linear.apply(x, op, transpose), None
        return _Linear.apply(x.movedim(dim, 0), op, transpose), 0


# ``Function.apply`` binds its arguments to ``forward``'s signature on every call (when ``setup_context`` is defined);
# ``inspect.signature`` honours ``__signature__``, so computing it once here saves ~30 us per product (PEP 362)
_Linear.forward.__signature__ = inspect.signature(_Linear.forward)  # type: ignore[attr-defined]


def linear_apply(x: Tensor, op: LinearMap, transpose: bool = False) -> Tensor:
    """``op.matvec(x)`` (or ``op.rmatvec(x)``) as a differentiable function: backward is the adjoint product,
    double backward, ``torch.func.jvp`` and ``torch.func.vmap`` work. ``op`` must treat leading axes as batch."""
    return _Linear.apply(x, op, transpose)


def csr_matmul(x: Tensor, mat: CSRMatrix, transpose: bool = False) -> Tensor:
    """:math:`A x` (or :math:`A^\\top x`) on the last axis: ``x`` ``[..., N]`` -> ``[..., M]`` (``[..., N]`` from
    ``[..., M]`` with ``transpose=True``); differentiable (backward, double backward, jvp, vmap)."""
    n = mat.shape[0] if transpose else mat.shape[1]
    if x.shape[-1] != n:
        raise ValueError(f"csr_matmul: x has {x.shape[-1]} values on its last axis, the matrix needs {n}")
    if mat.nnz <= SMALL_NNZ and mat.backend == "auto" and x.device.type == "cpu" and x.dtype in _NUMPY_DTYPES:
        rows, cols, vals = mat._coo(x.dtype, x.device)
        if transpose:
            rows, cols = cols, rows
        m = mat.shape[1] if transpose else mat.shape[0]
        return x.new_zeros(*x.shape[:-1], m).index_add(-1, rows, x[..., cols] * vals)  # autograd's own rules
    return _Linear.apply(x, mat, transpose)
