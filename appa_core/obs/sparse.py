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

Shapes: ``A`` ``[M, N]`` with ``N`` the flattened state length (e.g. ``T*C*H*W``), ``x`` ``[..., N]`` in the
state's units, ``y`` ``[..., M]``.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

__all__ = ["CSRMatrix", "LinearMap", "csr_matmul", "linear_apply"]

_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}
_TorchCSR = tuple[Tensor, Tensor, Tensor | None, Tensor | None]


class CSRMatrix:
    """A sparse matrix ``A`` ``[M, N]`` ready for :func:`csr_matmul` (built once, in ``prepare``).

    Args:
        matrix: the matrix (any scipy sparse format; converted to CSR float64, duplicates summed).
        reorder: store the rows sorted by their first column (better memory locality for scattered rows).
        canonical: sum duplicate entries (and sort the columns of each row); ``False`` trusts the caller that no
            row repeats a column (the products do not need sorted columns), which saves a sort in ``prepare``.
        backend: ``"auto"`` (scipy on CPU, torch sparse CSR elsewhere), ``"scipy"`` (CPU only) or ``"torch"``
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
        self._torch: dict[tuple[torch.dtype, str], _TorchCSR] = {}
        self._transposed: dict[np.dtype[Any], sp.csc_array] = {}

    @property
    def nnz(self) -> int:
        return int(self._scipy[np.dtype(np.float64)].nnz)

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
        A = self._csr(np.dtype(_NUMPY_DTYPES[work]))
        xs = rows.detach().to(work).contiguous().numpy()
        out = _rows_product(A, xs, self._inverse)
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
        At = self._csc_transpose(np.dtype(_NUMPY_DTYPES[work]))  # csc_matvec scatters row by row
        gs = rows.detach().to(work).contiguous().numpy()
        if self.order is not None:
            gs = gs[:, self.order]
        out = _rows_product(At, gs)
        return torch.from_numpy(out).reshape(*lead, self.shape[1]).to(g.dtype)


#: below this many values (input or output) a batch of rows is one scipy call on the ``[N, B]`` matrix: its
#: transposing copies cost less than a Python-level call per row; above it, one call per row
_BATCH_ONE_CALL = 1 << 16


def _rows_product(A: sp.csr_array | sp.csc_array, xs: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """``(A @ xs[r])[rows]`` for every row ``r`` of ``xs`` ``[B, N]`` -> C-contiguous ``[B, M]`` (``rows``: an
    optional permutation of the output's entries)."""
    if xs.shape[0] > 1 and max(xs.size, xs.shape[0] * A.shape[0]) <= _BATCH_ONE_CALL:
        out = A @ xs.T  # [M, B]
        return np.ascontiguousarray((out if rows is None else out[rows]).T)
    ys = [A @ xs[r] for r in range(xs.shape[0])]
    if rows is not None:
        ys = [y[rows] for y in ys]
    return ys[0][None] if len(ys) == 1 else np.stack(ys)


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
    return _Linear.apply(x, mat, transpose)
