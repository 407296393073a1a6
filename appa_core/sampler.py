r"""``Sampler``: posterior trajectories from any ``DiffusionPrior`` and any set of observation operators.

One call, three tasks (recipes in ``docs/tasks.md``)::

    sampler = Sampler(prior, steps=32)                         # PC, 2 corrections, delta 0.1; MMPS guidance
    ds = sampler.posterior(obs=[op1, op2], start=t0, length=24, members=8, seed=0)   # reanalysis
    ds.isel(time=-1)                                                                   # filtering
    sampler.posterior(obs=past_obs, start=t0, length=24 + 48, strategy="autoregressive")  # forecasting

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
``[member, obs_<name>]`` (H(x) of each member) and ``obs_<name>_innovation`` (y - H(ensemble mean));
``ds.attrs["appa_operators"]`` lists the names. :func:`split_diagnostics` separates them; :func:`save_zarr`
writes atomically.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import attrs
import numpy as np
import torch
import xarray as xr
from torch import Tensor
from tqdm.auto import tqdm

from appa_core.diffusion.blanket import Blanket
from appa_core.diffusion.denoiser import DiffusionPrior
from appa_core.diffusion.samplers import init_noise, make_sampler, sigma_grid
from appa_core.guidance import (
    DPS,
    MMPS,
    KnownStates,
    PosteriorDenoiser,
    failure_summary,
    observation_time_ranges,
)
from appa_core.obs.base import ObsOperator
from appa_core.obs.obsset import ObsSet

__all__ = ["PosteriorSample", "Sampler", "save_zarr", "split_diagnostics"]


@attrs.frozen
class PosteriorSample:
    """Tensor-level result of :meth:`Sampler.sample`.

    Attributes:
        x: states ``[B, L, C, H, W]`` physical units. z: diffusion variable ``[B, L, *event_rest]``.
        times: ``[L]`` datetime64[ns]. obs: the prepared ``ObsSet`` (on ``frame_times``) or ``None``.
        frame_times: context times followed by ``times``. n_context: number of context states.
        unconverged: number of guided calls whose solve missed its tolerance.
        context: the context states ``[1 or B, n, C, H, W]`` (physical) or ``None``.
    """

    x: Tensor
    z: Tensor
    times: np.ndarray
    obs: ObsSet | None
    frame_times: np.ndarray
    n_context: int
    unconverged: int
    context: Tensor | None = None


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
    """Guided diffusion sampler over a :class:`~appa_core.diffusion.denoiser.DiffusionPrior`.

    Attributes:
        prior: the prior (latent ``Prior`` or ``GaussianPrior``).
        steps: diffusion steps.
        sampler: ``"pc"`` (predictor-corrector; ``corrections``, ``delta``), ``"ddim"`` (``eta``) or ``"lms"``
            (``order``).
        guidance: ``"mmps"``, ``"dps"`` (``zeta``) or ``"none"``.
        solver: ``"gmres"`` (default, robust for learned denoisers whose Jacobian is not symmetric) or ``"cg"``.
        cg_iters: iteration cap of the MMPS solve. cg_tol: its relative tolerance (``None``: fixed iterations,
            no convergence check, as Appa's 2 GMRES iterations).
        on_failure: an unconverged solve -> ``"warn"`` (one summary warning per call of :meth:`sample`),
            ``"raise"`` (:class:`~appa_core.guidance.GuidanceError`) or ``"ignore"``.
        overlap: blanket overlap (default ``K // 2``). strategy: ``"blanket"`` or ``"autoregressive"``.
        ar_context: states carried between autoregressive chunks (default ``K // 2``).
        context_std: std (diffusion units) of known states (``context`` and autoregressive carries).
        dtype: working dtype (default ``prior.dtype`` if it has one, else float32). device: torch device.
        progress: show a tqdm bar over steps.
    """

    prior: DiffusionPrior
    steps: int = 32
    sampler: str = "pc"
    guidance: str = "mmps"
    solver: str = "gmres"
    cg_iters: int = 16
    cg_tol: float | None = 1e-4
    irls: bool = True
    eta: float = 0.0
    corrections: int = 2
    delta: float = 0.1
    order: int = 3
    zeta: float = 0.1
    on_failure: str = "warn"
    overlap: int | None = None
    strategy: str = "blanket"
    ar_context: int | None = None
    context_std: float = 1e-2
    dtype: torch.dtype | None = None
    device: str | torch.device = "cpu"
    progress: bool = True

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

    # ------------------------------------------------------------------ helpers
    @property
    def _dtype(self) -> torch.dtype:
        return self.dtype or getattr(self.prior, "dtype", torch.float32)

    def _guide(self) -> MMPS | DPS | None:
        if self.guidance == "mmps":
            return MMPS(solver=self.solver, maxiter=self.cg_iters, tol=self.cg_tol, irls=self.irls)
        if self.guidance == "dps":
            return DPS(zeta=self.zeta, irls=self.irls)
        return None

    def _diffusion_sampler(self):  # type: ignore[no-untyped-def]
        return make_sampler(
            self.sampler, eta=self.eta, corrections=self.corrections, delta=self.delta, order=self.order
        )

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
        generator: torch.Generator,
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
    ) -> PosteriorSample:
        """Posterior sampling at the tensor level (see :meth:`posterior` for the arguments)."""
        prior = self.prior
        if start is None or length is None:
            raise ValueError("Sampler.posterior: fields 'start' and 'length' are required")
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
        generator = torch.Generator(device="cpu")
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(int(seed))
        row_range = None
        if obsset is not None:
            obsset.prepare(prior.grid, prior.spec, frame_times)  # refuses observations outside grid/window
            if self.guidance != "none":
                row_range = observation_time_ranges(
                    obsset, prior, frame_len, generator=torch.Generator().manual_seed(0)
                )
        known = None
        if ctx is not None:
            zc = self._chunks(prior.encode, ctx.to(self.device), k).detach()
            known = KnownStates(np.arange(n_ctx), zc, self.context_std)

        unconverged = 0
        if self.strategy == "blanket" or frame_len <= k:
            overlap = k // 2 if self.overlap is None else int(self.overlap)
            bl = Blanket(frame_len, k, min(overlap, k - 1))
            if row_range is not None:
                _check_coverage(obsset, row_range, bl.starts, bl.size)  # type: ignore[arg-type]
            z, den = self._run(
                frame_times, bl.starts, bl.size, bl.keep, 0, frame_len, members, obsset, known, row_range, None,
                generator, "posterior",
            )  # fmt: skip
            unconverged += len(den.failures)
            self._warn(den)
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
                allowed = ~assigned if obsset is not None else None
                zc, den = self._run(
                    frame_times, [a], end - a, [(a, end)], a, end - a, members, obsset, kn, row_range, allowed,
                    generator, f"chunk {ci + 1}/{len(chunks)}",
                )  # fmt: skip
                if obsset is not None and den.used_rows.size:
                    assigned |= den.used_rows[: obsset.size]
                unconverged += len(den.failures)
                self._warn(den)
                parts.append(zc[:, prev_end - a :])
                prev, prev_end = zc, end
            z = torch.cat(parts, dim=1)
        x = self._chunks(prior.decode, z, k).detach()
        return PosteriorSample(x[:, n_ctx:], z[:, n_ctx:], times, obsset, frame_times, n_ctx, unconverged, ctx)

    def _warn(self, den: PosteriorDenoiser) -> None:
        msg = failure_summary(den)
        if msg is not None and self.on_failure == "warn":
            warnings.warn(msg, RuntimeWarning, stacklevel=3)

    def posterior(
        self,
        obs: ObsSet | ObsOperator | Sequence[ObsOperator] | None = None,
        start: object = None,
        length: int | None = None,
        members: int = 1,
        seed: int | None = None,
        context: object = None,
    ) -> xr.Dataset:
        """Sample ``members`` posterior trajectories of ``length`` states from ``start``.

        Args:
            obs: observation operators (a list, an ``ObsSet`` or one operator; ``None`` for prior samples). They
                are prepared here on ``(prior.grid, prior.spec, window times)``; observations outside the grid,
                the window or the prior's variables are refused before sampling.
            start: first valid time (``datetime64`` or ISO string); states are ``prior.timestep`` apart.
            length: number of states ``L``.
            members: ensemble size ``B``.
            seed: seed of the ``torch.Generator`` (initial noise and stochastic steps).
            context: known states just before ``start`` (physical units): ``[n, C, H, W]``,
                ``[1 or B, n, C, H, W]`` or a WeatherBench2 Dataset with those times.

        Returns:
            Dataset with dims ``member, time, (level,) latitude, longitude`` and the observation diagnostics
            described in the module docstring.
        """
        from appa_core.state import tensor_to_dataset

        res = self.sample(obs, start, length, members, seed, context)
        ds = tensor_to_dataset(res.x, self.prior.spec, self.prior.grid, res.times, member_dim="member")
        names: list[str] = []
        if res.obs is not None:
            with torch.no_grad():
                xf = _frame_states(res).to(torch.float64)
                pred = res.obs(xf)
                pmean = res.obs(xf.mean(0, keepdim=True))[0]
            y = res.obs.values
            std = res.obs.noise.variance().sqrt()
            for name, sl in res.obs.slices.items():
                key = re.sub(r"\W", "_", name)
                dim = f"obs_{key}"
                ds[f"obs_{key}_value"] = xr.Variable((dim,), y[sl].numpy())
                ds[f"obs_{key}_std"] = xr.Variable((dim,), std[sl].numpy())
                ds[f"obs_{key}_predicted"] = xr.Variable(("member", dim), pred[:, sl].numpy())
                ds[f"obs_{key}_innovation"] = xr.Variable((dim,), (y[sl] - pmean[sl]).numpy())
                names.append(key)
        ds.attrs["appa_operators"] = json.dumps(names)
        ds.attrs["appa_sampler"] = json.dumps(
            {
                "steps": self.steps, "sampler": self.sampler, "guidance": self.guidance, "solver": self.solver,
                "cg_iters": self.cg_iters, "cg_tol": self.cg_tol, "strategy": self.strategy,
                "unconverged_solves": res.unconverged, "members": int(res.x.shape[0]),
            }
        )  # fmt: skip
        return ds


def _frame_states(res: PosteriorSample) -> Tensor:
    """States on the operators' frame: the context (physical, given) then the sampled window."""
    if res.context is None:
        return res.x
    ctx = res.context.to(res.x.dtype).expand(res.x.shape[0], *res.context.shape[1:])
    return torch.cat([ctx, res.x], dim=1)


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


def split_diagnostics(ds: xr.Dataset) -> tuple[xr.Dataset, xr.Dataset]:
    """``(states, diagnostics)``: the ``obs_*`` variables of a :meth:`Sampler.posterior` result apart."""
    diag = [v for v in ds.data_vars if str(v).startswith("obs_")]
    return ds.drop_vars(diag), ds[diag]


def save_zarr(ds: xr.Dataset, path: str | os.PathLike[str]) -> Path:
    """Write ``ds`` to a zarr store atomically: into a temporary sibling directory, then renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        # zarr format 2 with consolidated metadata: the WeatherBench2 layout, readable by every zarr version
        ds.to_zarr(tmp / "store.zarr", mode="w", zarr_format=2, consolidated=True)
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp / "store.zarr", path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
