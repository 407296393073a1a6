"""``appa_core.obs.sparse``: the CSR product and its autograd function (adjoint, gradients, jvp, vmap, dtypes)."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch.autograd import gradcheck, gradgradcheck

from appa_core.obs.sparse import CSRMatrix, csr_matmul


@pytest.fixture(params=["custom function", "gathers"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both roads of ``csr_matmul`` on CPU: the CSR autograd function (large matrices) and, for matrices with at
    most ``SMALL_NNZ`` entries, torch gathers with autograd's own rules."""
    import appa_core.obs.sparse as sparse

    monkeypatch.setattr(sparse, "SMALL_NNZ", 0 if request.param == "custom function" else 1 << 30)
    return str(request.param)


def _matrix(m: int = 7, n: int = 11, seed: int = 0) -> sp.csr_array:
    rng = np.random.default_rng(seed)
    dense = rng.normal(size=(m, n)) * (rng.random((m, n)) < 0.4)
    dense[3] = 0.0  # an empty row
    return sp.csr_array(dense)


@pytest.mark.parametrize("reorder", [False, True])
def test_matvec_rmatvec_match_dense_and_adjoint(reorder: bool, path: str) -> None:
    A = _matrix()
    mat = CSRMatrix(A, reorder=reorder)
    if reorder:
        assert mat.order is not None  # the random matrix is not sorted by first column
    dense = torch.as_tensor(A.toarray())
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 11, generator=gen, dtype=torch.float64)
    y = torch.randn(2, 3, 7, generator=gen, dtype=torch.float64)
    ax = csr_matmul(x, mat)
    aty = csr_matmul(y, mat, transpose=True)
    assert torch.allclose(ax, x @ dense.T, atol=1e-13)
    assert torch.allclose(aty, y @ dense, atol=1e-13)
    # <A x, y> = <x, A^T y>
    assert (ax * y).sum().item() == pytest.approx((x * aty).sum().item(), rel=1e-13)


@pytest.mark.parametrize("reorder", [False, True])
def test_batched_rows_equal_row_by_row_and_are_contiguous(reorder: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A small batch of rows is one scipy call; its products are the row-by-row ones bit for bit, and every
    output is C-contiguous (a strided result would change the rounding of later reductions)."""
    import appa_core.obs.sparse as sparse

    mat = CSRMatrix(_matrix(), reorder=reorder)
    gen = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(4, 11, generator=gen, dtype=dtype)
        y = torch.randn(4, 7, generator=gen, dtype=dtype)
        batched = (mat.matvec(x), mat.rmatvec(y))
        monkeypatch.setattr(sparse, "_BATCH_ONE_CALL", 0)  # row by row
        rows = (mat.matvec(x), mat.rmatvec(y))
        monkeypatch.undo()
        for b, r in zip(batched, rows, strict=True):
            assert b.is_contiguous() and r.is_contiguous()
            assert torch.equal(b, r)


@pytest.mark.parametrize("threads", [2, 3, 16])
def test_threaded_products_equal_one_thread(threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The products of a large matrix run on torch.get_num_threads() threads: the forward by blocks of rows, the
    adjoint by blocks of state columns, each with about equal numbers of entries. Both give the same sums as one
    thread, bit for bit, in the original row order; on this matrix no block is left empty with more threads than
    rows, and the column blocks cover every entry once, in disjoint ranges of columns."""
    import appa_core.obs.sparse as sparse

    rng = np.random.default_rng(4)
    A = sp.random(9, 200, density=0.3, format="csr", random_state=rng)
    A = sp.vstack([A[:4], sp.csr_array((2, 200)), A[4:], sp.csr_array(rng.normal(size=(1, 200)))]).tocsr()
    gen = torch.Generator().manual_seed(2)
    old = torch.get_num_threads()
    try:
        for reorder in (False, True):
            for dtype in (torch.float32, torch.float64):
                x = torch.randn(3, 200, generator=gen, dtype=dtype)
                g = torch.randn(3, A.shape[0], generator=gen, dtype=dtype)
                torch.set_num_threads(1)
                one = (CSRMatrix(A, reorder=reorder).matvec(x), CSRMatrix(A, reorder=reorder).rmatvec(g))
                torch.set_num_threads(threads)
                monkeypatch.setattr(sparse, "PARALLEL_NNZ", 1)
                mat = CSRMatrix(A, reorder=reorder)
                many = (mat.matvec(x), mat.rmatvec(g))
                np_dtype = np.dtype(sparse._NUMPY_DTYPES[dtype])
                rows, columns = mat._blocks(np_dtype), mat._column_blocks(np_dtype)
                monkeypatch.undo()
                assert rows is not None and 2 <= len(rows.blocks) <= threads
                assert all(b.nnz > 0 for _, _, b in rows.blocks)
                assert columns is not None and 2 <= len(columns.blocks) <= threads
                ranges = [(c0, c1) for c0, c1, _, _ in columns.blocks]
                assert ranges[0][0] == 0 and ranges[-1][1] == 200
                assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
                assert sum(b.nnz for _, _, b, _ in columns.blocks) == A.nnz
                for c0, c1, b, _ in columns.blocks:
                    assert b.nnz > 0 and c0 <= b.indices.min() and b.indices.max() < c1
                for a, b in zip(one, many, strict=True):
                    assert a.is_contiguous() and b.is_contiguous() and torch.equal(a, b)
                dense = torch.as_tensor(A.toarray(), dtype=dtype)
                assert torch.allclose(many[0], x @ dense.T, rtol=1e-5)
                assert torch.allclose(many[1], g @ dense, rtol=1e-5)
    finally:
        torch.set_num_threads(old)


def test_column_blocks_follow_the_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """The adjoint's column blocks are rebuilt when the thread count changes (only the latest are kept: they copy
    the entries); on one thread the block is the stored matrix itself, no copy. Same adjoint on 1, 2 and 1 threads."""
    import appa_core.obs.sparse as sparse

    monkeypatch.setattr(sparse, "PARALLEL_NNZ", 1)
    A = sp.random(20, 300, density=0.2, format="csr", random_state=np.random.default_rng(9))
    mat = CSRMatrix(A, reorder=True)
    g = torch.randn(2, 20, dtype=torch.float64)
    old = torch.get_num_threads()
    got = []
    try:
        for n in (1, 2, 1):
            torch.set_num_threads(n)
            got.append(mat.rmatvec(g))
            blocks = mat._column_blocks(np.dtype(np.float64))
            assert blocks is not None and blocks.threads == n and len(blocks.blocks) == n
            assert len(mat._column_split) == 1
            if n == 1:
                assert blocks.blocks[0][2] is mat._csr(np.dtype(np.float64))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(got[0], got[1]) and torch.equal(got[0], got[2])
    torch.testing.assert_close(got[0], g @ torch.as_tensor(A.toarray()), rtol=1e-12, atol=1e-12)


def test_in_place_kernels_are_checked_and_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    """scipy's private in-place kernels pass their check with the installed scipy; without them (a scipy that moved
    them) the products fall back to the public API and give the same values, bit for bit."""
    import appa_core.obs.sparse as sparse

    assert sparse._inplace_kernels() is not None
    try:
        sparse._inplace_kernels.cache_clear()
        with monkeypatch.context() as patch:
            patch.setattr(sparse, "_sparsetools", None)
            assert sparse._inplace_kernels() is None
    finally:
        sparse._inplace_kernels.cache_clear()
    monkeypatch.setattr(sparse, "PARALLEL_NNZ", 1)
    A = sp.random(30, 500, density=0.1, format="csr", random_state=np.random.default_rng(7))
    x, g = torch.randn(2, 500, dtype=torch.float64), torch.randn(2, 30, dtype=torch.float64)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        fast = CSRMatrix(A, reorder=True)
        with_kernels = (fast.matvec(x), fast.rmatvec(g))
        assert fast._column_blocks(np.dtype(np.float64)) is not None
        monkeypatch.setattr(sparse, "_inplace_kernels", lambda: None)
        slow = CSRMatrix(A, reorder=True)
        without = (slow.matvec(x), slow.rmatvec(g))
        assert slow._column_blocks(np.dtype(np.float64)) is None
    finally:
        torch.set_num_threads(old)
    for a, b in zip(with_kernels, without, strict=True):
        assert torch.equal(a, b)


def _threaded_product_in_child(a: sp.csr_array, x: np.ndarray) -> np.ndarray:
    torch.set_num_threads(2)
    return CSRMatrix(a, reorder=True).matvec(torch.as_tensor(x)).numpy()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_threaded_forward_works_in_a_forked_child(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process forked after the parent used the worker threads gets its own (the parent's do not exist in the
    child: before, a threaded product there waited forever)."""
    import multiprocessing

    import appa_core.obs.sparse as sparse

    monkeypatch.setattr(sparse, "PARALLEL_NNZ", 1)
    a = sp.csr_array(sp.random(40, 300, density=0.2, format="csr", random_state=np.random.default_rng(5)))
    x = np.random.default_rng(6).normal(size=(2, 300))
    old = torch.get_num_threads()
    try:
        expected = _threaded_product_in_child(a, x)  # the parent starts its worker threads
        with multiprocessing.get_context("fork").Pool(1) as pool:
            got = pool.apply_async(_threaded_product_in_child, (a, x)).get(timeout=60)
    finally:
        torch.set_num_threads(old)
    assert np.array_equal(got, expected)


def test_small_matrices_stay_on_one_thread() -> None:
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert CSRMatrix(_matrix())._blocks(np.dtype(np.float64)) is None  # below PARALLEL_NNZ
    finally:
        torch.set_num_threads(old)


def test_gradients_against_finite_differences_and_double_backward(path: str) -> None:
    mat = CSRMatrix(_matrix(), reorder=True)
    x = torch.randn(2, 11, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda v: csr_matmul(v, mat), (x,))
    assert gradgradcheck(lambda v: csr_matmul(v, mat) ** 2, (x,))
    y = torch.randn(2, 7, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda v: csr_matmul(v, mat, transpose=True), (y,))


def test_jvp_and_vmap(path: str) -> None:
    A = _matrix()
    mat = CSRMatrix(A, reorder=True)
    dense = torch.as_tensor(A.toarray())
    x = torch.randn(3, 11, dtype=torch.float64)
    t = torch.randn(3, 11, dtype=torch.float64)
    _, jt = torch.func.jvp(lambda v: csr_matmul(v, mat) ** 2, (x,), (t,))
    assert torch.allclose(jt, 2 * (x @ dense.T) * (t @ dense.T), atol=1e-12)
    batched = torch.func.vmap(lambda v: csr_matmul(v, mat), in_dims=1)(x[:, None].expand(3, 4, 11))
    assert batched.shape == (4, 3, 7)
    assert torch.allclose(batched, (x @ dense.T)[None].expand(4, 3, 7), atol=1e-13)
    # vjp under vmap (the guidance's per-member solves)
    g = torch.randn(4, 3, 7, dtype=torch.float64)
    _, vjp = torch.func.vjp(lambda v: csr_matmul(v, mat), x)
    vg = torch.func.vmap(vjp)(g)[0]
    assert torch.allclose(vg, g @ dense, atol=1e-13)


def test_float32_and_other_dtypes(path: str) -> None:
    A = _matrix()
    mat = CSRMatrix(A)
    x64 = torch.randn(2, 11, dtype=torch.float64)
    y32 = csr_matmul(x64.float(), mat)
    assert y32.dtype == torch.float32
    assert torch.allclose(y32.double(), csr_matmul(x64, mat), rtol=1e-5, atol=1e-5)
    y16 = csr_matmul(x64.to(torch.bfloat16), mat)  # computed in float32, returned in the input's dtype
    assert y16.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="csr_matmul: x has 5 values"):
        csr_matmul(torch.zeros(1, 5), mat)


def test_small_matrices_take_gathers_and_agree_with_the_custom_function(monkeypatch: pytest.MonkeyPatch) -> None:
    """csr_matmul of a matrix with at most SMALL_NNZ entries, float32/float64 on CPU, is a torch gather and
    index_add (autograd records IndexAdd, not the custom function); a larger one, another dtype or an explicit
    backend takes the custom function. Both give the same products and gradients to rounding."""
    import appa_core.obs.sparse as sparse

    A = _matrix(9, 13, seed=3)
    x = torch.randn(2, 13, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 9, dtype=torch.float64)
    small = csr_matmul(x, CSRMatrix(A, reorder=True))
    assert type(small.grad_fn).__name__.startswith("IndexAdd")
    assert "_Linear" in type(csr_matmul(x, CSRMatrix(A, backend="scipy")).grad_fn).__name__
    assert type(csr_matmul(x.detach().float().requires_grad_(), CSRMatrix(A)).grad_fn).__name__.startswith("IndexAdd")
    assert "_Linear" in type(csr_matmul(x.detach().bfloat16().requires_grad_(), CSRMatrix(A)).grad_fn).__name__
    monkeypatch.setattr(sparse, "SMALL_NNZ", A.nnz - 1)
    large = csr_matmul(x, CSRMatrix(A, reorder=True))
    assert "_Linear" in type(large.grad_fn).__name__
    torch.testing.assert_close(small, large, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(
        torch.autograd.grad(small, x, g)[0], torch.autograd.grad(large, x, g)[0], rtol=1e-14, atol=1e-14
    )


def test_small_matrix_entries_made_under_inference_mode_still_differentiate() -> None:
    """The gathers' cached entries are ordinary tensors even when the first product runs under
    torch.inference_mode (before: inference tensors, which a later differentiable product cannot save)."""
    A = _matrix()
    mat = CSRMatrix(A)
    with torch.inference_mode():
        csr_matmul(torch.randn(2, 11, dtype=torch.float64), mat)
    x = torch.randn(2, 11, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 7, dtype=torch.float64)
    (grad,) = torch.autograd.grad(csr_matmul(x, mat), x, g)
    torch.testing.assert_close(grad, g @ torch.as_tensor(A.toarray()), rtol=1e-13, atol=1e-13)


def test_torch_backend_matches_scipy() -> None:
    """The torch sparse CSR path (what CUDA uses), exercised on CPU: same products, gradients and jvp."""
    A = _matrix(9, 13, seed=2)
    scipy_mat = CSRMatrix(A, reorder=True, backend="scipy")  # the custom function (small matrices: gathers on "auto")
    torch_mat = CSRMatrix(A, reorder=True, backend="torch")
    x = torch.randn(3, 13, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, 9, dtype=torch.float64)
    assert torch.allclose(csr_matmul(x, torch_mat), csr_matmul(x, scipy_mat), atol=1e-13)
    assert torch.allclose(csr_matmul(y, torch_mat, transpose=True), csr_matmul(y, scipy_mat, transpose=True))
    assert gradcheck(lambda v: csr_matmul(v, torch_mat), (x,))
    _, jt = torch.func.jvp(lambda v: csr_matmul(v, torch_mat), (x.detach(),), (x.detach(),))
    assert torch.allclose(jt, csr_matmul(x.detach(), scipy_mat), atol=1e-13)
    assert csr_matmul(x.detach().float(), torch_mat).dtype == torch.float32
    with pytest.raises(ValueError, match="field 'backend' has value 'mkl'"):
        CSRMatrix(A, backend="mkl")
