r"""``Sampler``: posterior trajectories from any ``DiffusionPrior`` and any set of observation operators.

One call, three tasks (recipes in ``docs/tasks.md``)::

    sampler = Sampler(prior)                                   # calibrated defaults: LMS, 24 steps, MMPS to tol 1e-2
    ds = sampler.posterior(obs=[op1, op2], start=t0, hours=24, members=8, seed=0)    # reanalysis (5 states)
    ds.isel(time=-1)                                                                   # filtering
    Sampler(prior, strategy="autoregressive").posterior(obs=past_obs, start=t0, hours=72)  # forecasting

**Windows.** A trajectory longer than the prior's window ``K`` is sampled either jointly by overlapping
*blankets* (``strategy="blanket"``, SDA / Appa: windows of ``K`` states with stride ``K - overlap`` denoised
independently at every step, each guided by the observations that lie entirely inside it, central slices kept),
or *autoregressively* (``strategy="autoregressive"``: chunks of ``K`` states, each conditioned on the last
``ar_context`` states of the previous chunk as known states in diffusion space; every observation row is used by
the first chunk that contains it). ``context`` gives known states (physical units) just before ``start``, e.g.
the initial conditions of a forecast; they are encoded and conditioned on with std ``context_std`` (diffusion
units), and dropped from the output.

**Output.** An ``xarray.Dataset`` in physical units, WeatherBench2 layout with a ``member`` dim
(``appa_core.state.tensor_to_dataset``), plus, for each operator ``name`` (sanitised to ``[A-Za-z0-9_]``), the
diagnostics ``obs_<name>_value`` ``[obs_<name>]`` (y), ``obs_<name>_std`` (noise std), ``obs_<name>_predicted``
``[member, obs_<name>]`` (H(x) of each member) and ``obs_<name>_innovation`` (y - H(ensemble mean)), and where
the operator's ``metadata()`` says so, ``obs_<name>_lat`` / ``_lon`` (degrees), ``_time`` and ``_variable`` (for
maps);
``ds.attrs["appa_operators"]`` lists the names. :func:`split_diagnostics` separates them; :func:`save_zarr`
writes atomically.
"""

from __future__ import annotations

import inspect
import json
import re
import warnings
from collections.abc import Sequence

import attrs
import numpy as np
import torch
import xarray as xr
from torch import Tensor
from tqdm.auto import tqdm

from appa_core import distributed as _dist
from appa_core.diffusion.blanket import Blanket
from appa_core.diffusion.integrators import init_noise, make_sampler, sigma_grid
from appa_core.guidance import (
    DPS,
    MMPS,
    GuidanceError,
    GuidanceReport,
    KnownStates,
    PosteriorDenoiser,
    observation_time_ranges,
    solve_summary,
)
from appa_core.guidance.report import _failure_message
from appa_core.obs.base import ObsOperator
from appa_core.obs.obsset import ObsSet
from appa_core.obs.qc import FLAG_MEANINGS, QC, QCError, QCResult, background_flags, bounds_flags
from appa_core.priors.base import DiffusionPrior
from appa_core.store import SHARD_ATTR, WRITTEN_BY, save_zarr  # noqa: F401  (WRITTEN_BY: its 0.1 path)

__all__ = [
    "PosteriorSample",
    "Sampler",
    "ensemble_mean",
    "member_batches",
    "save_zarr",
    "split_diagnostics",
    "window_states",
]


@attrs.frozen
class PosteriorSample:
    """Tensor-level result of :meth:`Sampler.sample`.

    Attributes:
        x: states ``[B, L, C, H, W]`` physical units. z: diffusion variable ``[B, L, *event_rest]``.
        times: ``[L]`` datetime64[ns]. obs: the prepared ``ObsSet`` (on ``frame_times``) or ``None``.
        frame_times: context times followed by ``times``. n_context: number of context states.
        unconverged: number of guided calls whose solve missed its tolerance.
        context: the context states ``[1 or B, n, C, H, W]`` (physical) or ``None``.
        calls: denoiser evaluations per member (all windows and chunks of one member count once per call).
        solve: the MMPS solves' iterations and residuals (:func:`~appa_core.guidance.solve_summary`), or ``None``.
        qc: quality-control flags and departures (:class:`~appa_core.obs.qc.QCResult`), or ``None``.
        members: ensemble size over all processes (``x`` holds this process's ``x.shape[0]`` of them).
        member_offset: index of this process's first member in the ensemble (0 in a single process).
        batches: sizes of the batches in which this process sampled its members (:attr:`Sampler.batch`).
    """

    x: Tensor
    z: Tensor
    times: np.ndarray
    obs: ObsSet | None
    frame_times: np.ndarray
    n_context: int
    unconverged: int
    context: Tensor | None = None
    calls: int = 0
    solve: dict[str, object] | None = None
    qc: QCResult | None = None
    members: int = 0
    member_offset: int = 0
    batches: tuple[int, ...] = ()


def _as_obsset(obs: ObsSet | ObsOperator | Sequence[ObsOperator] | None) -> ObsSet | None:
    if obs is None:
        return None
    if isinstance(obs, ObsSet):
        return obs
    if isinstance(obs, ObsOperator):
        return ObsSet([obs])
    ops = list(obs)
    return ObsSet(ops) if ops else None


@attrs.define
class Sampler:
    """Guided diffusion sampler over a :class:`~appa_core.priors.base.DiffusionPrior`.

    Attributes:
        prior: the prior (latent ``Prior`` or ``GaussianPrior``).
        steps: diffusion steps.
        sampler: ``"lms"`` (default; ``order``), ``"heun"`` (``churn``), ``"pc"`` (predictor-corrector;
            ``corrections``, ``delta``) or ``"ddim"`` (``eta``).
        guidance: ``"mmps"``, ``"dps"`` (``zeta``) or ``"none"``.
        solver: ``"gmres"`` (default, robust for learned denoisers whose Jacobian is not symmetric) or ``"cg"``.
        solver_iters: iteration cap of the MMPS solve (GMRES or CG); ``None`` (default): adaptive, iterate until
            ``solver_tol`` is met (at most :data:`~appa_core.guidance.ADAPTIVE_MAXITER`). solver_tol: the relative
            tolerance on the residual in units of observation-error std (``None``: exactly ``solver_iters``
            iterations, no convergence check, as Appa's 2 GMRES iterations). Iterations and residuals of every
            solve are reported (:attr:`PosteriorSample.solve`, ``ds.attrs["appa_solve"]``).
        warm_start: start each MMPS solve from the previous diffusion step's solution (default; with a tolerance
            it needs 2-2.7x fewer products than cold solves for the same final error on the benchmark's Gaussian
            problem, ``docs/benchmarks.md``); ``False``: every solve starts from zero, as azula and Appa do.

    **Calibrated defaults.** On a linear-Gaussian problem (37 observations, D = 120, 1000 members,
    ``benchmarks/calibration.py``) the defaults (third-order LMS, 24 steps on the rectified schedule, 24
    denoiser calls; GMRES to 1e-2 from the previous step's solution, 2.8 iterations on average) give an ensemble
    variance 0.99x the exact Kalman posterior variance and a mean within Monte-Carlo error of the exact mean; PC
    with 32 steps (96 calls) gives 0.97x, DDIM with 32 steps 0.92x, and 2 fixed GMRES iterations triple the error
    of the mean.
        on_failure: an unconverged solve -> ``"warn"`` (one summary warning per call of :meth:`sample`),
            ``"raise"`` (:class:`~appa_core.guidance.GuidanceError`) or ``"ignore"``.
        overlap: blanket overlap (default ``K // 2``). strategy: ``"blanket"`` or ``"autoregressive"``.
        ar_context: states carried between autoregressive chunks (default ``K // 2``).
        context_std: std (diffusion units) of known states (``context`` and autoregressive carries).
        dtype: working dtype (default ``prior.dtype`` if it has one, else float32). device: torch device.
        progress: show a tqdm bar over steps.
        probes: Hutchinson probes of the predicted observation variance by which robust noise models standardise
            residuals (:class:`~appa_core.guidance.MMPS`; ``None``: exact diagonal; Gaussian models use none).
        qc: observation quality control before sampling (:class:`~appa_core.obs.qc.QC`: plausibility bounds and a
            background check against a small prior ensemble; on by default), or ``None`` to use every observation.
        batch: members sampled together, in one batch through the denoiser and the solves (``None``, the default:
            all members of a process at once). A batched product's rounding can depend on the batch size, so a
            member's numbers are bitwise reproducible for a given ``batch`` (and any number of processes), and
            equal up to rounding otherwise. Smaller batches also bound memory.
        distributed: shard the members over the processes of the ``torch.distributed`` process group (``None``,
            the default: when one with more than one process is initialised, e.g. under ``torchrun``; see
            :mod:`appa_core.distributed`). Each process samples a contiguous block of members and
            :meth:`posterior` returns that block (``member`` coordinates are the global indices) with the
            diagnostics of the whole ensemble; :func:`save_zarr` called on every process writes one store.

    **Random streams.** Member ``i`` draws its initial noise and stochastic terms from its own generator seeded
    by ``(seed, i)`` (:func:`~appa_core.distributed.member_seed`), never from the rank or the number of
    processes, and the quality control runs on rank 0 only. The members are split into batches of ``batch``
    (:func:`member_batches`) and the processes take contiguous runs of batches: with the same ``seed`` and
    ``batch``, ``W`` processes write the store one process writes, bit for bit.
    """

    prior: DiffusionPrior
    steps: int = 24
    sampler: str = "lms"
    guidance: str = "mmps"
    solver: str = "gmres"
    solver_iters: int | None = None
    solver_tol: float | None = 1e-2
    irls: bool = True
    probes: int | None = 8
    warm_start: bool = True
    eta: float = 0.0
    corrections: int = 2
    delta: float = 0.1
    order: int = 3
    churn: float = 0.0
    zeta: float = 0.1
    on_failure: str = "warn"
    overlap: int | None = None
    strategy: str = "blanket"
    ar_context: int | None = None
    context_std: float = 1e-2
    dtype: torch.dtype | None = None
    device: str | torch.device = "cpu"
    progress: bool = True
    qc: QC | None = attrs.field(factory=QC)
    batch: int | None = None
    distributed: bool | None = None

    def __attrs_post_init__(self) -> None:
        make_sampler(self.sampler)  # validates the name
        if self.guidance not in ("mmps", "dps", "none"):
            raise ValueError(f"Sampler: field 'guidance' has value {self.guidance!r}; expected 'mmps', 'dps' or 'none'")
        if self.strategy not in ("blanket", "autoregressive"):
            raise ValueError(f"Sampler: field 'strategy' has value {self.strategy!r}")
        if self.on_failure not in ("warn", "raise", "ignore"):
            raise ValueError(f"Sampler: field 'on_failure' has value {self.on_failure!r}")
        if self.steps < 1:
            raise ValueError(f"Sampler: field 'steps' has value {self.steps}; must be >= 1")
        if self.solver_iters is None and self.solver_tol is None:
            raise ValueError(
                "Sampler: fields 'solver_iters' and 'solver_tol' are both None; give a tolerance or an iteration count"
            )
        if self.batch is not None and (isinstance(self.batch, bool) or int(self.batch) < 1):
            raise ValueError(f"Sampler: field 'batch' has value {self.batch!r}; must be >= 1 or None (all members)")
        if self.solver_iters is not None and self.solver_iters < 1:
            raise ValueError(
                f"Sampler: field 'solver_iters' has value {self.solver_iters}; must be >= 1 or None (adaptive)"
            )

    # ------------------------------------------------------------------ helpers
    @property
    def _dtype(self) -> torch.dtype:
        return self.dtype or getattr(self.prior, "dtype", torch.float32)

    def _ranks(self) -> tuple[int, int]:
        """``(rank, world size)`` that the members are sharded over (``(0, 1)`` when not distributed)."""
        if self.distributed is False or not _dist.is_distributed():
            if self.distributed and not _dist.is_distributed():
                raise ValueError(
                    "Sampler: field 'distributed' is True but no torch.distributed process group with more than one "
                    "process is initialised (launch with torchrun and call appa_core.distributed.init_distributed())"
                )
            return 0, 1
        import torch.distributed as dist

        return dist.get_rank(), dist.get_world_size()

    def _guide(self) -> MMPS | DPS | None:
        if self.guidance == "mmps":
            return MMPS(
                solver=self.solver,
                maxiter=self.solver_iters,
                tol=self.solver_tol,
                irls=self.irls,
                probes=self.probes,
                warm_start=self.warm_start,
            )
        if self.guidance == "dps":
            return DPS(zeta=self.zeta, irls=self.irls)
        return None

    def _diffusion_sampler(self):  # type: ignore[no-untyped-def]
        return make_sampler(
            self.sampler, eta=self.eta, corrections=self.corrections, delta=self.delta, order=self.order,
            churn=self.churn,
        )  # fmt: skip

    def _window(self, frame_len: int) -> int:
        k = self.prior.window
        return frame_len if k is None else int(k)

    def _chunks(self, fn, z: Tensor, k: int) -> Tensor:  # type: ignore[no-untyped-def]
        """Apply ``fn`` (encode/decode) over time chunks of at most ``k`` states."""
        return torch.cat([fn(z[:, a : a + k]) for a in range(0, z.shape[1], k)], dim=1)

    def _context(self, context: object, start: np.datetime64, members: int) -> tuple[Tensor | None, np.ndarray]:
        if context is None:
            return None, np.zeros(0, dtype="datetime64[ns]")
        dt = self.prior.timestep
        if isinstance(context, xr.Dataset):
            from appa_core.state import dataset_to_tensor

            x, ctimes, _ = dataset_to_tensor(context, self.prior.spec, self.prior.grid)
            x = x[None]
            expect = (start - dt * np.arange(x.shape[1], 0, -1)).astype("datetime64[ns]")
            if not np.array_equal(np.asarray(ctimes).astype("datetime64[ns]"), expect):
                raise ValueError(
                    f"Sampler.posterior: field 'context' has times {ctimes}; expected the {x.shape[1]} steps "
                    f"just before start: {expect}"
                )
        else:
            x = torch.as_tensor(context)
            if x.ndim == 4:
                x = x[None]
        shape = (self.prior.spec.n_channels, *self.prior.grid.shape)
        if x.ndim != 5 or tuple(x.shape[2:]) != shape or x.shape[0] not in (1, members):
            raise ValueError(
                f"Sampler.posterior: field 'context' must be [n, {', '.join(map(str, shape))}] or [1 or members, n, "
                f"...], got {list(x.shape)}"
            )
        if not bool(torch.isfinite(x).all()):
            raise ValueError("Sampler.posterior: field 'context' has non-finite values")
        n = x.shape[1]
        ctimes = (start - dt * np.arange(n, 0, -1)).astype("datetime64[ns]")
        return x.to(self._dtype), ctimes

    # ------------------------------------------------------------------ sampling
    def _run(
        self,
        frame_times: np.ndarray,
        starts: list[int],
        size: int,
        keep: list[tuple[int, int]],
        offset: int,
        length: int,
        members: int,
        obs: ObsSet | None,
        known: KnownStates | None,
        row_range: tuple[np.ndarray, np.ndarray] | None,
        row_allowed: np.ndarray | None,
        generator: list[torch.Generator],
        desc: str,
    ) -> tuple[Tensor, PosteriorDenoiser]:
        rest = self.prior.event_shape(size)[1:]
        den = PosteriorDenoiser(
            self.prior, frame_times, starts, size, keep, offset, length, obs=obs, known=known,
            row_range=row_range, row_allowed=row_allowed, guidance=self._guide(), on_failure=self.on_failure,
        )  # fmt: skip
        sigmas = sigma_grid(self.prior.schedule, self.steps)
        z = init_noise((members, length, *rest), float(sigmas[0]), generator, self._dtype, self.device)
        bar = tqdm(total=self.steps, desc=desc, disable=not self.progress, leave=False)

        def callback(i: int, st: float, ss: float) -> None:
            den.step = i
            if i > 0:
                bar.update(1)

        try:
            z = self._diffusion_sampler()(den, z, sigmas.to(self._dtype), generator, callback)
            bar.update(1)
        finally:
            bar.close()
        return z.detach(), den

    def sample(
        self,
        obs: ObsSet | ObsOperator | Sequence[ObsOperator] | None = None,
        start: object = None,
        length: int | None = None,
        members: int = 1,
        seed: int | None = None,
        context: object = None,
        *,
        hours: float | None = None,
        duration: object = None,
    ) -> PosteriorSample:
        """Posterior sampling at the tensor level (see :meth:`posterior` for the arguments)."""
        prior = self.prior
        if length is not None or hours is not None or duration is not None:
            length = window_states(prior.timestep, length=length, hours=hours, duration=duration)
        if start is None or length is None:
            raise ValueError(
                "Sampler.posterior: field 'start' and one of 'hours', 'duration' or 'length' (states) are required"
            )
        for field, v in (("length", length), ("members", members)):
            if isinstance(v, bool) or not float(v).is_integer():  # type: ignore[arg-type]
                raise ValueError(f"Sampler.posterior: field {field!r} has value {v!r}; must be a whole number")
        if int(length) < 1 or int(members) < 1:
            raise ValueError(f"Sampler.posterior: need length >= 1 and members >= 1, got {length}, {members}")
        length, members = int(length), int(members)
        t0 = np.datetime64(start, "ns") if not isinstance(start, np.datetime64) else start.astype("datetime64[ns]")
        times = (t0 + prior.timestep * np.arange(length)).astype("datetime64[ns]")
        ctx, ctimes = self._context(context, t0, members)
        n_ctx = 0 if ctx is None else ctx.shape[1]
        frame_times = np.concatenate([ctimes, times])
        frame_len = frame_times.size
        k = min(self._window(frame_len), frame_len)
        if prior.event_shape(1)[0] != 1:
            raise ValueError("Sampler: the prior's diffusion variable must have time as its first event axis")
        obsset = _as_obsset(obs)
        rank, world = self._ranks()
        batches = member_batches(members, self.batch)
        if world > len(batches):
            raise ValueError(
                f"Sampler.posterior: {len(batches)} batches of members (members={members}, batch={self.batch}) "
                f"cannot be shared by {world} processes; sample at least one batch per process"
            )
        if seed is None:  # one random base seed for the whole ensemble, drawn by rank 0
            seed = int(torch.randint(0, 2**62, (1,)).item())
            if world > 1:
                seed = _dist.broadcast_object(seed)
        my_batches = batches[_dist.shard(len(batches), rank, world)]
        mine = slice(my_batches[0].start, my_batches[-1].stop)
        row_range = None
        if obsset is not None:
            _check_output_names(obsset)
            obsset.prepare(prior.grid, prior.spec, frame_times)  # refuses observations outside grid/window
            if self.guidance != "none":
                row_range = observation_time_ranges(
                    obsset, prior, frame_len, generator=torch.Generator().manual_seed(0)
                )
        qc_result = None
        if obsset is not None and self.qc is not None and self.guidance != "none":
            # on rank 0 only (the same prior ensemble whatever the number of processes), flags broadcast
            outcome: QCResult | BaseException | None = None
            if rank == 0:
                try:
                    outcome = self._quality_control(obsset, t0, length, seed, ctx)
                except Exception as exc:  # raised on every process below
                    outcome = exc
            if world > 1:
                outcome = _dist.broadcast_object(outcome)
            if isinstance(outcome, BaseException):
                raise outcome
            qc_result = outcome
        qc_ok = None if qc_result is None else qc_result.passed

        per_member_ctx = ctx is not None and ctx.shape[0] == members and members > 1
        if per_member_ctx:
            ctx = ctx[mine]  # type: ignore[index]  # this process's members
        # the progress bar says what is sampled: an unguided (prior) ensemble is not labelled "posterior"
        label = "posterior" if obsset is not None and self.guidance != "none" else "prior"
        failure: BaseException | None = None
        zs: list[Tensor] = []
        xs: list[Tensor] = []
        batch_reports: list[list[GuidanceReport]] = []
        calls = 0
        try:
            # every batch is sampled, encoded and decoded on its own: a member's numbers depend on its batch only
            for b in my_batches:
                known = None
                if ctx is not None:
                    cb = ctx[b.start - mine.start : b.stop - mine.start] if per_member_ctx else ctx
                    zc = self._chunks(prior.encode, cb.to(self.device), k).detach()
                    known = KnownStates(np.arange(n_ctx), zc, self.context_std)
                where = label if len(batches) == 1 else f"{label} (members {b.start}-{b.stop - 1})"
                z, reports, _, calls = self._sample_members(
                    frame_times, frame_len, k, n_ctx, b.stop - b.start, obsset, known, row_range, qc_ok,
                    _dist.member_generators(int(seed), range(b.start, b.stop)), where,
                )  # fmt: skip
                zs.append(z)
                xs.append(self._chunks(prior.decode, z, k).detach())
                batch_reports.append(reports)
        except Exception as exc:  # every process learns that one failed (no process waits in a collective)
            failure = exc
        if world > 1:
            _dist.agree(failure, "Sampler.posterior")
        elif failure is not None:
            raise failure
        if world > 1:
            batch_reports = [r for per_rank in _dist.gather_objects(batch_reports) for r in per_rank]
        reports, unconverged = self._merge_reports(batch_reports)
        if rank == 0:
            self._warn(reports)
        z, x = torch.cat(zs), torch.cat(xs)
        return PosteriorSample(
            x[:, n_ctx:], z[:, n_ctx:], times, obsset, frame_times, n_ctx, unconverged, ctx, calls,
            solve_summary(reports), qc_result, members, mine.start, tuple(b.stop - b.start for b in my_batches),
        )  # fmt: skip

    def _merge_reports(self, per_batch: list[list[GuidanceReport]]) -> tuple[list[GuidanceReport], int]:
        """The reports of the whole ensemble from those of its batches: call by call, converged where every batch
        converged, the most iterations and the worst residuals (as one batched solve: it iterates until its last
        system converges and reports its worst residual). Returns ``(reports, unconverged calls)``."""
        merged = []
        for calls in zip(*per_batch, strict=True):
            per_op: dict[str, float] = {}
            for r in calls:
                for key, v in r.operator_residuals.items():
                    per_op[key] = max(per_op.get(key, float("-inf")), v)
            residuals = [r.residual for r in calls]
            worst = max(residuals) if all(np.isfinite(residuals)) else float("nan")
            merged.append(
                GuidanceReport(
                    all(r.converged for r in calls), max(r.iterations for r in calls), worst, per_op, calls[0].where
                )
            )
        unconverged = 0 if self.on_failure == "ignore" else sum(not r.converged for r in merged)
        return merged, unconverged

    def _sample_members(
        self,
        frame_times: np.ndarray,
        frame_len: int,
        k: int,
        n_ctx: int,
        members: int,
        obsset: ObsSet | None,
        known: KnownStates | None,
        row_range: tuple[np.ndarray, np.ndarray] | None,
        qc_ok: np.ndarray | None,
        generator: list[torch.Generator],
        label: str,
    ) -> tuple[Tensor, list[GuidanceReport], int, int]:
        """Sample ``members`` trajectories in diffusion space (blankets or autoregressive chunks).

        Returns:
            ``(z [members, frame_len, ...], reports, unconverged calls, denoiser calls per member)``.
        """
        unconverged = 0
        reports: list[GuidanceReport] = []
        calls = 0
        if self.strategy == "blanket" or frame_len <= k:
            overlap = k // 2 if self.overlap is None else int(self.overlap)
            bl = Blanket(frame_len, k, min(overlap, k - 1))
            if row_range is not None:
                _check_coverage(obsset, row_range, bl.starts, bl.size)  # type: ignore[arg-type]
            z, den = self._run(
                frame_times, bl.starts, bl.size, bl.keep, 0, frame_len, members, obsset, known, row_range, qc_ok,
                generator, label,
            )  # fmt: skip
            unconverged += len(den.failures)
            reports += den.reports
            calls += den.calls
        else:
            carry = k // 2 if self.ar_context is None else int(self.ar_context)
            if not 1 <= carry < k:
                raise ValueError(f"Sampler: field 'ar_context' has value {carry}; must be in [1, {k})")
            chunks, a = [], 0
            while True:
                end = min(a + k, frame_len)
                chunks.append((a, end))
                if end == frame_len:
                    break
                a = end - carry
            if row_range is not None:
                _check_coverage(obsset, row_range, [c[0] for c in chunks], k, ends=[c[1] for c in chunks])  # type: ignore[arg-type]
            assigned = np.zeros(obsset.size if obsset is not None else 0, dtype=bool)
            parts: list[Tensor] = []
            prev: Tensor | None = None
            prev_end = 0
            for ci, (a, end) in enumerate(chunks):
                idx, vals = [], []
                if known is not None and a < n_ctx:
                    sel = np.arange(a, min(end, n_ctx))
                    idx.append(sel)
                    vals.append(known.values[:, sel].expand(members, *known.values.shape[1:]))
                if prev is not None:
                    sel = np.arange(a, prev_end)
                    sel = sel[sel >= n_ctx]
                    idx.append(sel)
                    vals.append(prev[:, sel - (prev_end - prev.shape[1])])
                kn = KnownStates(np.concatenate(idx), torch.cat(vals, dim=1), self.context_std) if idx else None
                allowed = None if obsset is None else ~assigned if qc_ok is None else ~assigned & qc_ok
                zc, den = self._run(
                    frame_times, [a], end - a, [(a, end)], a, end - a, members, obsset, kn, row_range, allowed,
                    generator, f"{label} chunk {ci + 1}/{len(chunks)}",
                )  # fmt: skip
                if obsset is not None and den.used_rows.size:
                    assigned |= den.used_rows[: obsset.size]
                unconverged += len(den.failures)
                reports += den.reports
                calls += den.calls
                parts.append(zc[:, prev_end - a :])
                prev, prev_end = zc, end
            z = torch.cat(parts, dim=1)
        return z, reports, unconverged, calls

    def _quality_control(
        self,
        obs: ObsSet,
        start: np.datetime64,
        length: int,
        seed: int | None,
        ctx: Tensor | None,
    ) -> QCResult:
        """Plausibility and background checks (:mod:`appa_core.obs.qc`); raises :class:`QCError` when more than
        ``qc.max_rejected`` of the observations fail."""
        qc = self.qc
        assert qc is not None
        var = obs.noise.variance()
        flags = (
            bounds_flags(obs.operators, obs.slices, obs.values, var.sqrt())
            if qc.bounds
            else np.zeros(obs.size, np.int8)
        )
        departure = np.full(obs.size, np.nan)
        if qc.background:
            bg_context = None if ctx is None else ctx[torch.arange(qc.members) % ctx.shape[0]]  # per-member contexts
            background = attrs.evolve(
                self, steps=qc.steps, sampler="lms", guidance="none", qc=None, progress=False, distributed=False
            ).sample(None, start, length, qc.members, None if seed is None else int(seed) + 1_000_003, bg_context)
            with torch.no_grad():
                pred = obs(_frame_states(background).to(torch.float64))
            bad = [n for n, sl in obs.slices.items() if not bool(torch.isfinite(pred[:, sl]).all())]
            if bad:
                raise GuidanceError(
                    f"Sampler.posterior: quality control: operator(s) {bad} predict non-finite values for states "
                    "drawn from the prior; check the operator's forward map"
                )
            flags, departure = background_flags(obs.values, pred, var, qc.threshold(), flags)
        result = QCResult(flags, departure, dict(obs.slices))
        rejected = float((flags != 0).mean())
        if rejected > qc.max_rejected:
            raise QCError(
                f"Sampler.posterior: quality control rejected {rejected:.0%} of the {obs.size} observations "
                f"(more than max_rejected = {qc.max_rejected:.0%}); check units, times and locations. "
                + result.summary().replace("\n", "; ")
            )
        return result

    def _warn(self, reports: list[GuidanceReport]) -> None:
        """One summary warning of the unconverged solves of the whole ensemble (``on_failure="warn"``)."""
        failures = [r for r in reports if not r.converged]
        if failures and self.on_failure == "warn":
            msg = _failure_message(failures, len(reports), self._guide())
            warnings.warn(msg, RuntimeWarning, stacklevel=3)

    def posterior(
        self,
        obs: ObsSet | ObsOperator | Sequence[ObsOperator] | None = None,
        start: object = None,
        length: int | None = None,
        members: int = 1,
        seed: int | None = None,
        context: object = None,
        *,
        hours: float | None = None,
        duration: object = None,
    ) -> xr.Dataset:
        """Sample ``members`` posterior trajectories from ``start`` over ``hours`` (or ``duration``, or ``length``
        states).

        Args:
            obs: observation operators (a list, an ``ObsSet`` or one operator; ``None`` for prior samples). They
                are prepared here on ``(prior.grid, prior.spec, window times)``; observations outside the grid,
                the window or the prior's variables are refused before sampling.
            start: first valid time (``datetime64`` or ISO string); states are ``prior.timestep`` apart.
            length: number of states ``L``, not hours: ``length=24`` is 24 states (138 h at 6-hourly states).
                Give exactly one of ``length``, ``hours`` and ``duration``.
            members: ensemble size ``B``.
            seed: seed of the ``torch.Generator`` (initial noise and stochastic steps).
            context: known states just before ``start`` (physical units): ``[n, C, H, W]``,
                ``[1 or B, n, C, H, W]`` or a WeatherBench2 Dataset with those times.
            hours: the window's span in hours, both ends included: ``hours / dt + 1`` states (``hours=24`` with
                6-hourly states is 5 states, 00 to 24 UTC), as ``[window] hours`` of ``appa assimilate``.
            duration: the same span as a string (``"24h"``, ``"2d"``, ``"90min"``), a ``datetime.timedelta`` or a
                ``numpy.timedelta64``.

        Returns:
            Dataset with dims ``member, time, (level,) latitude, longitude`` and the observation diagnostics
            described in the module docstring.
        """
        from appa_core.state import tensor_to_dataset

        res = self.sample(obs, start, length, members, seed, context, hours=hours, duration=duration)
        ds = tensor_to_dataset(res.x, self.prior.spec, self.prior.grid, res.times, member_dim="member")
        n_mine = int(res.x.shape[0])
        ds = ds.assign_coords(member=np.arange(res.member_offset, res.member_offset + n_mine, dtype=np.int64))
        names: list[str] = []
        if res.obs is not None:
            with torch.no_grad():
                xf = _frame_states(res).to(torch.float64)
                pred = torch.cat([res.obs(part) for part in torch.split(xf, list(res.batches or [n_mine]))])
                pmean = res.obs(ensemble_mean(xf, res.members or n_mine, res.members > n_mine)[None])[0]
            y = res.obs.values
            std = res.obs.noise.variance().sqrt()
            for name, sl in res.obs.slices.items():
                key = output_key(name)
                dim = f"obs_{key}"
                ds[f"obs_{key}_value"] = xr.Variable((dim,), y[sl].numpy())
                ds[f"obs_{key}_std"] = xr.Variable((dim,), std[sl].numpy())
                ds[f"obs_{key}_predicted"] = xr.Variable(("member", dim), pred[:, sl].numpy())
                ds[f"obs_{key}_innovation"] = xr.Variable((dim,), (y[sl] - pmean[sl]).numpy())
                located, described = _obs_locations(res.obs.operators[res.obs.names.index(name)], sl)
                for field, values in located.items():
                    ds[f"obs_{key}_{field}"] = xr.Variable((dim,), values)
                for field in ("value", "std", "predicted", "innovation"):
                    ds[f"obs_{key}_{field}"].attrs.update(described)
                if res.qc is not None:
                    ds[f"obs_{key}_qc"] = xr.Variable(
                        (dim,), res.qc.flags[sl],
                        {"flag_values": list(range(len(FLAG_MEANINGS))), "flag_meanings": " ".join(FLAG_MEANINGS)},
                    )  # fmt: skip
                    ds[f"obs_{key}_departure"] = xr.Variable((dim,), res.qc.departure[sl])
                names.append(key)
        ds.attrs["appa_operators"] = json.dumps(names)
        ds.attrs["appa_sampler"] = json.dumps(
            {
                "steps": self.steps, "sampler": self.sampler, "guidance": self.guidance, "solver": self.solver,
                "solver_iters": self.solver_iters, "solver_tol": self.solver_tol, "warm_start": self.warm_start,
                "strategy": self.strategy,
                "unconverged_solves": res.unconverged, "members": int(res.members or n_mine),
                "denoiser_calls": res.calls,
            }
        )  # fmt: skip
        if res.members and n_mine != res.members:  # one block of a distributed ensemble: save_zarr writes its region
            ds.attrs[SHARD_ATTR] = json.dumps(
                {"members": res.members, "start": res.member_offset, "stop": res.member_offset + n_mine}
            )
        if res.solve is not None:
            ds.attrs["appa_solve"] = json.dumps(res.solve)
        if res.qc is not None:
            ds.attrs["appa_qc"] = json.dumps(res.qc.counts())
        return ds


#: 0.1's names of the solve's fields (they configure GMRES as well as CG): accepted for one release, with a warning.
_RENAMED_FIELDS = {"cg_iters": "solver_iters", "cg_tol": "solver_tol"}


def _warn_renamed(old: str, stacklevel: int) -> None:
    warnings.warn(
        f"Sampler: field {old!r} is deprecated and will be removed in the next release; use {_RENAMED_FIELDS[old]!r}",
        DeprecationWarning,
        stacklevel=stacklevel + 1,
    )


def _renamed(old: str) -> property:
    new = _RENAMED_FIELDS[old]

    def get(self: Sampler) -> object:
        _warn_renamed(old, 2)
        return getattr(self, new)

    def set_(self: Sampler, value: object) -> None:
        _warn_renamed(old, 2)
        setattr(self, new, value)

    return property(get, set_, doc=f"Deprecated alias of :attr:`{new}`.")


def _init_accepting_renamed_fields(init):  # type: ignore[no-untyped-def]
    """Wrap the attrs ``__init__`` of :class:`Sampler` so that ``Sampler(prior, cg_iters=2, cg_tol=None)`` (0.1) still
    works, with a :class:`DeprecationWarning` naming the new field."""

    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        for old, new in _RENAMED_FIELDS.items():
            if old in kwargs:
                if new in kwargs:
                    raise TypeError(f"Sampler: give {new!r} only ({old!r} is its deprecated name)")
                _warn_renamed(old, 2)
                kwargs[new] = kwargs.pop(old)
        init(self, *args, **kwargs)

    __init__.__doc__ = init.__doc__
    __init__.__signature__ = inspect.signature(init)  # type: ignore[attr-defined]
    return __init__


Sampler.__init__ = _init_accepting_renamed_fields(Sampler.__init__)  # type: ignore[method-assign]
for _old in _RENAMED_FIELDS:
    setattr(Sampler, _old, _renamed(_old))


def member_batches(members: int, batch: int | None) -> list[slice]:
    """The batches ``[0, b), [b, 2b), ...`` of an ensemble of ``members`` (one batch of all when ``batch`` is
    ``None``): the unit of work that processes share and that fixes a member's rounding."""
    size = members if batch is None else max(1, int(batch))
    return [slice(a, min(a + size, members)) for a in range(0, members, size)]


def ensemble_mean(x: Tensor, members: int, distributed: bool | None = None) -> Tensor:
    """The mean over the leading (member) axis of an ensemble of ``members`` states, of which ``x`` holds this
    process's contiguous block, on every process (``distributed``: the blocks are spread over the processes of the
    ``torch.distributed`` group, in rank order; ``None``: when one with more than one process is initialised).

    The members are summed one after the other in member order (the running sum passes from rank to rank under
    ``torch.distributed``), then divided by ``members``: the same floating-point operations whatever the number of
    processes, so the mean is bitwise the one a single process computes.
    """
    acc: Tensor | None = None
    distributed = _dist.is_distributed() if distributed is None else distributed
    if distributed:
        import torch.distributed as dist

        rank, world = dist.get_rank(), dist.get_world_size()
        if rank > 0:
            acc = torch.empty_like(x[0])
            dist.recv(acc, src=rank - 1)
    for i in range(x.shape[0]):
        acc = x[i].clone() if acc is None else acc + x[i]
    assert acc is not None
    if distributed:
        if rank < world - 1:
            dist.send(acc, dst=rank + 1)
        else:
            acc = acc / members
        dist.broadcast(acc, src=world - 1)
        return acc
    return acc / members


def _frame_states(res: PosteriorSample) -> Tensor:
    """States on the operators' frame: the context (physical, given) then the sampled window."""
    if res.context is None:
        return res.x
    ctx = res.context.to(res.x.dtype).expand(res.x.shape[0], *res.context.shape[1:])
    return torch.cat([ctx, res.x], dim=1)


def output_key(name: str) -> str:
    """The diagnostics key of an operator name: ``obs_<key>_*`` with ``key`` = ``name`` sanitised to ``\\w``."""
    return re.sub(r"\W", "_", name)


def _check_output_names(obs: ObsSet) -> None:
    """Two operators whose names sanitise to the same key would overwrite each other's diagnostics after sampling;
    refuse before sampling."""
    seen: dict[str, str] = {}
    for name in obs.names:
        key = output_key(name)
        if key in seen:
            raise ValueError(
                f"Sampler.posterior: operator names {seen[key]!r} and {name!r} both give the output key {key!r}; "
                "rename one (field 'name')"
            )
        seen[key] = name


def _check_coverage(
    obs: ObsSet, row_range: tuple[np.ndarray, np.ndarray], starts: list[int], size: int, ends: list[int] | None = None
) -> None:
    """Every observation row must lie entirely inside some window; otherwise refuse up front."""
    tmin, tmax = row_range
    ends = ends or [a + size for a in starts]
    ok = np.zeros(tmin.size, dtype=bool)
    for a, e in zip(starts, ends, strict=True):
        ok |= (tmin >= a) & (tmax < e)
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        name = next(n for n, s in obs.slices.items() if s.start <= i < s.stop)
        raise ValueError(
            f"{name}: observation {i - obs.slices[name].start} depends on states {tmin[i]}..{tmax[i]} of the window, "
            f"which no sampling window of {size} states covers; shorten its time span or enlarge the overlap"
        )


def window_states(
    timestep: np.timedelta64, *, length: int | None = None, hours: float | None = None, duration: object = None
) -> int:
    """The number of states ``L`` of a window given as exactly one of ``length`` (states), ``hours`` or ``duration``.

    Args:
        timestep: the prior's timestep ``dt`` (``prior.timestep``).
        length: number of states, returned unchanged.
        hours: the span from the first to the last state in hours, both ends included: ``hours / dt + 1`` states.
        duration: the same span as a string understood by ``pandas.Timedelta`` (``"24h"``, ``"2d"``, ``"90min"``),
            a ``datetime.timedelta`` or a ``numpy.timedelta64``.

    Raises:
        ValueError: none or several of the three given, a negative span, or a span that is not a multiple of ``dt``.
    """
    given = [n for n, v in (("length", length), ("hours", hours), ("duration", duration)) if v is not None]
    if len(given) != 1:
        raise ValueError(
            "Sampler.posterior: give exactly one of 'hours' (e.g. hours=24), 'duration' (e.g. '24h') or 'length' "
            f"(a number of states), got {', '.join(given) or 'none'}"
        )
    if length is not None:
        return length  # validated by the caller
    import pandas as pd

    dt_h = float(np.timedelta64(timestep, "ns") / np.timedelta64(1, "h"))
    if hours is not None:
        if isinstance(hours, bool) or not isinstance(hours, int | float | np.number):
            raise ValueError(f"Sampler.posterior: field 'hours' has value {hours!r}; must be a number of hours")
        span, field, value = float(hours), "hours", hours
    else:
        try:
            span = pd.Timedelta(duration).total_seconds() / 3600.0  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ValueError(
                f"Sampler.posterior: field 'duration' has value {duration!r}; must be a duration such as '24h', '2d' "
                "or a timedelta"
            ) from None
        field, value = "duration", duration
    n = span / dt_h
    if not np.isfinite(n) or n < 0 or abs(n - round(n)) > 1e-9:
        raise ValueError(
            f"Sampler.posterior: field {field!r} has value {value!r}; must be a non-negative multiple of the prior's "
            f"timestep ({dt_h:g} h)"
        )
    return round(n) + 1


def _obs_locations(op: ObsOperator, sl: slice) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Where and what a prepared operator observes, for maps, from its
    :meth:`~appa_core.obs.base.ObsOperator.metadata`.

    Returns:
        ``(arrays, attributes)``: arrays ``lat``, ``lon`` (degrees north / east, longitudes in [0, 360)) and ``time``
        ``[M]`` each when the metadata has ``lat``/``lon`` (or grid ``row``/``col``), and ``variable`` ``[M]``
        (strings) when the observations are of several variables; attributes ``variable`` (when they are all of
        one variable or channel) and ``units`` (when the spec knows that variable's).
    """
    from appa_core.spec import UNITS

    m = sl.stop - sl.start
    try:
        meta = op.metadata()
    except Exception:  # diagnostics only: an operator whose metadata fails still samples
        return {}, {}
    described: dict[str, str] = {}
    located: dict[str, np.ndarray] = {}
    for field in ("variable", "channel"):
        if field in meta:
            try:
                per_obs = np.array(np.broadcast_to(np.asarray(meta[field]).astype(str), (m,)))
            except ValueError:
                continue
            names = np.unique(per_obs)
            if names.size == 1:
                described["variable"] = str(names[0])
            else:
                located["variable"] = per_obs
            break
    base = described.get("variable", "").partition("@")[0]
    units = (op.spec.units.get(base) if op.spec is not None else None) or UNITS.get(base)
    if units:
        described["units"] = units
    if "lat" in meta and "lon" in meta:
        lat, lon = np.asarray(meta["lat"], dtype=np.float64), np.asarray(meta["lon"], dtype=np.float64)
    elif "row" in meta and "col" in meta and op.grid is not None:
        lat = np.asarray(op.grid.lat, dtype=np.float64)[np.asarray(meta["row"], dtype=np.int64)]
        lon = np.asarray(op.grid.lon, dtype=np.float64)[np.asarray(meta["col"], dtype=np.int64)]
    else:
        return located, described
    if lat.shape != (m,) or lon.shape != (m,):
        return located, described
    located["lat"], located["lon"] = lat, np.mod(lon, 360.0)
    if "time" in meta:
        try:
            time = np.broadcast_to(np.asarray(meta["time"]).astype("datetime64[ns]"), (m,))
        except (TypeError, ValueError):
            return located, described
        located["time"] = np.array(time)
    return located, described


def split_diagnostics(ds: xr.Dataset) -> tuple[xr.Dataset, xr.Dataset]:
    """``(states, diagnostics)``: the ``obs_*`` variables of a :meth:`Sampler.posterior` result apart."""
    diag = [v for v in ds.data_vars if str(v).startswith("obs_")]
    return ds.drop_vars(diag), ds[diag]
