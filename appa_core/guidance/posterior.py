"""Guided denoisers the sampler calls: :func:`guided_denoiser` (any denoiser and observation map) and
:class:`PosteriorDenoiser` (blankets guided one window at a time with their own observations, known states,
masks)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
import numpy as np
import torch
from torch import Tensor

from appa_core.guidance.dps import DPS
from appa_core.guidance.mmps import MMPS, WarmStart
from appa_core.guidance.observation_map import ObservationMap, decode_with_tangent
from appa_core.guidance.report import GuidanceError, GuidanceReport, _failure_message
from appa_core.nn.denoiser import first_order_only
from appa_core.obs.errors import BlockDiagonal, DiagonalGaussian, NoiseModel
from appa_core.obs.obsset import ObsSet
from appa_core.priors.base import DiffusionPrior

__all__ = ["KnownStates", "PosteriorDenoiser", "guided_denoiser", "observation_time_ranges"]


def guided_denoiser(
    denoise: Callable[[Tensor, Tensor], Tensor],
    observe: Callable[[Tensor], Tensor],
    y: Tensor,
    noise: NoiseModel,
    guidance: MMPS | DPS | None = None,
    names: dict[str, slice] | None = None,
) -> Callable[[Tensor, Tensor], Tensor]:
    """The simplest form: ``d(z_t [B, *], sigma [B]) -> E[z | z_t, y]`` for any denoiser and observation map.

    Args:
        denoise: ``denoise(z_t, sigma) -> E[z | z_t]`` (differentiable).
        observe: ``observe(z) -> [B, M]`` (e.g. ``lambda z: obsset(prior.decode(z))``; with
            ``ObservationMap.through_decoder(prior, obsset)`` each solver iteration runs the linearized decoder).
        y: ``[M]`` or ``[B, M]``; noise: size ``M``; guidance: default ``MMPS()``.

    The returned function is meant for one sampling trajectory: with ``MMPS(warm_start=True)`` each call's solve
    starts from the previous call's solution (use a new function per trajectory, or ``warm_start=False`` for
    independent calls).
    """
    guidance = guidance or MMPS()
    warm = WarmStart()

    def d(z_t: Tensor, sigma: Tensor) -> Tensor:
        with torch.enable_grad():
            leaf = z_t.detach().requires_grad_(True)
            with first_order_only():  # the guidance takes VJPs of the denoiser only: its fused attention kernels
                z_hat = denoise(leaf, sigma)
            with_tangent = getattr(observe, "with_tangent", None) if isinstance(guidance, MMPS) else None
            y_hat, tangent = with_tangent(z_hat) if with_tangent is not None else (observe(z_hat), None)
            out, _ = guidance.guide(
                leaf, z_hat, y_hat, observe, y, noise, sigma, names=names, warm=warm, tangent=tangent
            )
        return out

    return d


@attrs.define
class KnownStates:
    """States known in diffusion space (e.g. encoded initial conditions, or the previous forecast window).

    Attributes:
        index: frame time indices ``[n]`` of the known states.
        values: ``[B or 1, n, *event_rest]`` in diffusion units.
        std: observation-error std in diffusion units (Appa: :math:`\\sigma_z` / latent std).
    """

    index: np.ndarray
    values: Tensor
    std: float = 1e-2

    @property
    def size(self) -> int:
        return int(self.values[0].numel())


def _latent_rows(known: KnownStates) -> np.ndarray:
    per = int(known.values[0, 0].numel())
    return np.repeat(np.asarray(known.index, dtype=np.int64), per)


def observation_time_ranges(
    obs: ObsSet, prior: DiffusionPrior, length: int, generator: torch.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """For each row of a prepared ``obs`` (on ``length`` frame times), the first and last state it depends on.

    Linear operators: from the sparse matrix's columns. Nonlinear operators: by forward-mode probing (one JVP
    per frame time, with a tangent supported on that time only) at a plausible decoded state. Rows that depend on
    no state get ``(0, 0)``.

    Returns:
        ``(tmin, tmax)`` int arrays ``[M]``.
    """
    tmin_all, tmax_all = [], []
    shape = (length, prior.spec.n_channels, *prior.grid.shape)
    chw = int(np.prod(shape[1:]))
    probe = None
    for op in obs:
        m = op.size
        tmin = np.full(m, length, dtype=np.int64)
        tmax = np.full(m, -1, dtype=np.int64)
        if op.linear:
            a = op.matrix().tocoo()
            t = a.col.astype(np.int64) // chw
            np.minimum.at(tmin, a.row, t)
            np.maximum.at(tmax, a.row, t)
        else:
            if probe is None:
                z = 0.1 * torch.randn((length, *prior.event_shape(1)), generator=generator, dtype=torch.float64)
                dtype = getattr(prior, "dtype", torch.float32)
                with torch.no_grad():
                    probe = prior.decode(z.to(dtype)).reshape(1, *shape).to(torch.float64)
            for tau in range(length):
                tan = torch.zeros_like(probe)
                tan[:, tau] = torch.randn(shape[1:], generator=generator, dtype=torch.float64)
                _, jv = torch.func.jvp(op, (probe,), (tan,))
                dep = (jv[0].abs() > 0).numpy()
                tmin[dep] = np.minimum(tmin[dep], tau)
                tmax[dep] = np.maximum(tmax[dep], tau)
        none = tmax < 0
        tmin[none], tmax[none] = 0, 0
        tmin_all.append(tmin)
        tmax_all.append(tmax)
    return np.concatenate(tmin_all), np.concatenate(tmax_all)


class PosteriorDenoiser:
    """The guided denoiser the sampler calls on (part of) a trajectory, with blankets and known states.

    The sampler's state ``z`` ``[B, Lz, *event_rest]`` covers frame times ``[offset, offset + Lz)`` of a frame of
    ``len(frame_times)`` states on which the operators were prepared. It is split into windows of ``size`` states
    starting at ``starts`` (frame indices); each window is denoised independently by the prior (with its own
    times), guided by the observation rows that lie entirely inside it (``mask``), and the trajectory is
    re-assembled from each window's ``keep`` range (frame indices, a partition of the state's range).

    Args:
        prior: the diffusion prior.
        frame_times: ``datetime64[ns]`` ``[L]``.
        starts, size, keep, offset, length: the window layout (see above).
        obs: prepared operators (on ``frame_times``) or ``None``.
        known: known states or ``None``.
        row_range: ``(tmin, tmax)`` per row of ``obs`` (see :func:`observation_time_ranges`).
        row_allowed: bool ``[M_obs]``: rows this call may use (autoregressive chunks use each row once).
        guidance: :class:`MMPS`, :class:`DPS` or ``None`` (unguided).
        on_failure: ``"warn"`` (unconverged solves are listed in :attr:`failures`; the sampler warns once),
            ``"raise"`` (raise :class:`GuidanceError` at once) or ``"ignore"``.
        windowed: denoise and guide the windows one after the other, each with only its own observations
            (:meth:`~appa_core.obs.ObsOperator.select` of its rows, prepared on its ``size`` times) and only its
            own graph: memory is bounded by one window, whatever the trajectory's length. ``None`` (default): when
            there are several windows and every operator has observation times and can select its rows
            (:meth:`~appa_core.obs.ObsOperator.observation_times`, :meth:`~appa_core.obs.ObsOperator.select`);
            ``False``: all windows at once, on operators prepared on the whole frame (memory grows with windows x
            frame length). The two agree to rounding for Gaussian noise (the windows' systems are independent in
            both); robust models' Hutchinson estimates use other probes.

    Every guided call's :class:`GuidanceReport` is kept in :attr:`reports` (windowed: one report per call, the
    worst over the windows).
    """

    def __init__(
        self,
        prior: DiffusionPrior,
        frame_times: np.ndarray,
        starts: Sequence[int],
        size: int,
        keep: Sequence[tuple[int, int]],
        offset: int,
        length: int,
        obs: ObsSet | None = None,
        known: KnownStates | None = None,
        row_range: tuple[np.ndarray, np.ndarray] | None = None,
        row_allowed: np.ndarray | None = None,
        guidance: MMPS | DPS | None = None,
        on_failure: str = "warn",
        windowed: bool | None = None,
    ) -> None:
        if on_failure not in ("warn", "raise", "ignore"):
            raise ValueError(f"PosteriorDenoiser: field 'on_failure' has value {on_failure!r}")
        self.prior, self.frame_times = prior, frame_times
        self.starts, self.size, self.keep = list(starts), int(size), list(keep)
        self.offset, self.length = int(offset), int(length)
        self.obs, self.known, self.guidance, self.on_failure = obs, known, guidance, on_failure
        self.step: int = 0
        self.reports: list[GuidanceReport] = []
        self.calls = 0
        frame_len = len(frame_times)
        self._embed = len(self.starts) > 1 or self.size != frame_len
        # rows and masks
        m_obs = obs.size if obs is not None else 0
        m_k = known.size if known is not None else 0
        self.names: dict[str, slice] = dict(obs.slices) if obs is not None else {}
        if known is not None:
            self.names["known_states"] = slice(m_obs, m_obs + m_k)
        tmin = np.zeros(0, dtype=np.int64)
        tmax = np.zeros(0, dtype=np.int64)
        if obs is not None:
            if row_range is None:
                row_range = observation_time_ranges(obs, prior, frame_len)
            tmin, tmax = row_range
        allowed = np.ones(m_obs, dtype=bool) if row_allowed is None else np.asarray(row_allowed, dtype=bool)
        if known is not None:
            kr = _latent_rows(known)
            tmin, tmax = np.concatenate([tmin, kr]), np.concatenate([tmax, kr])
            allowed = np.concatenate([allowed, np.ones(m_k, dtype=bool)])
        masks = [allowed & (tmin >= a) & (tmax < a + self.size) for a in self.starts]
        self.mask = torch.as_tensor(np.stack(masks)) if masks and tmin.size else None  # [W, M]
        self.used_rows = np.any(np.stack(masks), axis=0) if masks and tmin.size else np.zeros(0, dtype=bool)
        self.active = guidance is not None and self.mask is not None and bool(self.mask.any())
        if self.active:
            models: list[NoiseModel] = []
            if obs is not None:
                models.append(obs.noise)
            if known is not None:
                models.append(DiagonalGaussian(known.std).expand(m_k))
            self.noise: NoiseModel = models[0] if len(models) == 1 else BlockDiagonal(models)
        self._fill: Tensor | None = None
        self._warm = [WarmStart() for _ in range(len(self.starts) + 1)]  # per window (windowed), then all at once
        self._unit_rows = None
        if known is not None:
            self._unit_rows = torch.cat([torch.zeros(m_obs), torch.ones(m_k)]).to(torch.float64)
        self.windows: list[_Window | None] | None = None
        if self.active and (windowed or (windowed is None and len(self.starts) > 1)):
            assert self.mask is not None
            try:
                self.windows = [_Window.build(self, a, self.mask[i].numpy(), m_obs) for i, a in enumerate(self.starts)]
            except TypeError:  # an operator that cannot select its rows: all windows at once
                if windowed:
                    raise
                self.windows = None

    @property
    def failures(self) -> list[GuidanceReport]:
        """The reports of unconverged solves (empty with ``on_failure="ignore"``)."""
        return [] if self.on_failure == "ignore" else [r for r in self.reports if not r.converged]

    # -------------------------------------------------------------- helpers
    def _fill_state(self, like: Tensor) -> Tensor:
        if self._fill is None:
            ev1 = self.prior.event_shape(1)
            with torch.no_grad():
                x0 = self.prior.decode(torch.zeros((1, *ev1), dtype=like.dtype, device=like.device))
            self._fill = x0.detach()
        return self._fill.to(dtype=like.dtype, device=like.device)

    def _embed_time(self, parts: Tensor, fill: Tensor) -> Tensor:
        """``[W, N, K, *] -> [W*N, L, *]`` placing window ``w`` at ``starts[w]``, ``fill`` ``[1, 1, *]`` elsewhere."""
        frame_len = len(self.frame_times)
        out = []
        for i, a in enumerate(self.starts):
            n = parts.shape[1]
            before = fill.expand(n, a, *fill.shape[2:])
            after = fill.expand(n, frame_len - a - self.size, *fill.shape[2:])
            out.append(torch.cat([before, parts[i], after], dim=1))
        return torch.cat(out, dim=0)

    def _observe(self, zh: Tensor) -> Tensor:
        """``[W, B, K, *event_rest] -> [W, B, M]``."""
        nw, b = zh.shape[:2]
        ys = []
        if self.obs is not None:
            x = self.prior.decode(zh.reshape(nw * b, *zh.shape[2:]))
            ys.append(self.obs(self._frame(x.reshape(nw, b, *x.shape[1:]), self._fill_state(x))).reshape(nw, b, -1))
        if self.known is not None:
            ys.append(self._known_rows(zh))
        return torch.cat(ys, dim=-1)

    def _frame(self, x: Tensor, fill: Tensor) -> Tensor:
        """``[W, B, K, *] -> [W*B, L or K, *]``: the windows' states placed in the frame (``fill`` elsewhere)."""
        return self._embed_time(x, fill) if self._embed else x.reshape(-1, *x.shape[2:])

    def _known_rows(self, zh: Tensor) -> Tensor:
        """The known-state rows ``[W, B, M_known]`` of ``zh`` (linear in ``zh``)."""
        assert self.known is not None
        nw, b = zh.shape[:2]
        z_frame = self._frame(zh, torch.zeros((1, 1, *zh.shape[3:]), dtype=zh.dtype, device=zh.device))
        idx = torch.as_tensor(np.asarray(self.known.index), device=zh.device)
        return z_frame[:, idx].reshape(nw, b, -1)

    def _linearize_observe(self, zh: Tensor) -> Callable[[Tensor], Tensor] | None:
        """The tangent map of :meth:`_observe` at ``zh`` (see :class:`ObservationMap`); ``None`` when the prior has
        no ``linearize_decode``."""
        linearize_decode = getattr(self.prior, "linearize_decode", None)
        if self.obs is not None and linearize_decode is None:
            return None
        nw, b = zh.shape[:2]
        if self.obs is None:
            return self._tangent(nw, b, None, None)
        x, dx_of = linearize_decode(zh.reshape(nw * b, *zh.shape[2:]))
        frame = self._frame(x.reshape(nw, b, *x.shape[1:]), self._fill_state(x))
        return self._tangent(nw, b, dx_of, self.obs.linearize(frame))

    def _observe_with_tangent(self, zh: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor] | None]:
        """``(_observe(zh)`` with its graph, its tangent map at ``zh)`` from one decoder pass when the prior's
        ``linearize_decode`` takes ``graph`` (:func:`~appa_core.guidance.observation_map.decode_with_tangent`);
        else ``(_observe(zh), None)``."""
        nw, b = zh.shape[:2]
        if self.obs is None:
            return self._observe(zh), self._tangent(nw, b, None, None)
        decoded = decode_with_tangent(self.prior, zh.reshape(nw * b, *zh.shape[2:]))
        if decoded is None:
            return self._observe(zh), None
        x, dx_of = decoded
        frame = self._frame(x.reshape(nw, b, *x.shape[1:]), self._fill_state(x))
        ys = [self.obs(frame).reshape(nw, b, -1)]
        if self.known is not None:
            ys.append(self._known_rows(zh))
        return torch.cat(ys, dim=-1), self._tangent(nw, b, dx_of, self.obs.linearize(frame.detach()))

    def _tangent(
        self,
        nw: int,
        b: int,
        dx_of: Callable[[Tensor], Tensor] | None,
        h: Callable[[Tensor], Tensor] | None,
    ) -> Callable[[Tensor], Tensor]:
        """The tangent map of :meth:`_observe` from the decoder's (``dx_of``) and the operators' (``h``, on the
        frame) tangent maps; both ``None`` without operators."""

        def tangent(v: Tensor) -> Tensor:
            ys = []
            if dx_of is not None and h is not None:
                dx = dx_of(v.reshape(nw * b, *v.shape[2:]))
                dx_frame = self._frame(dx.reshape(nw, b, *dx.shape[1:]), torch.zeros_like(self._fill_state(dx)))
                ys.append(h(dx_frame).reshape(nw, b, -1))
            if self.known is not None:
                ys.append(self._known_rows(v))
            return torch.cat(ys, dim=-1)

        return tangent

    def _targets(self, nw: int, b: int, like: Tensor) -> Tensor:
        ys = []
        if self.obs is not None:
            ys.append(self.obs.values.to(device=like.device).expand(nw, b, -1))
        if self.known is not None:
            kv = self.known.values.reshape(self.known.values.shape[0], -1).to(torch.float64).to(like.device)
            ys.append(kv.expand(b, -1).expand(nw, b, -1))
        return torch.cat(ys, dim=-1)

    # -------------------------------------------------------------- call
    def __call__(self, z: Tensor, sigma: Tensor) -> Tensor:
        """``z`` ``[B, Lz, *event_rest]``, ``sigma`` ``[B]`` -> guided :math:`E[z \\mid z_t, y]`."""
        self.calls += 1
        b = z.shape[0]
        sig0 = float(sigma.reshape(-1)[0])
        where = f"step {self.step} (sigma={sig0:.4g})"
        if self.windows is not None:
            return self._call_windowed(z, sigma, where)
        zw = torch.stack([z[:, a - self.offset : a - self.offset + self.size] for a in self.starts]).detach()
        with torch.set_grad_enabled(self.active):  # unguided (no observation to use): no graph
            if self.active:
                zw.requires_grad_(True)
            with first_order_only():  # the guidance takes VJPs of the denoiser only: its fused attention kernels
                zh = torch.stack(
                    [
                        self.prior.denoise(zw[i], sigma, self.frame_times[a : a + self.size])
                        for i, a in enumerate(self.starts)
                    ]
                )
            if not bool(torch.isfinite(zh).all()):
                raise GuidanceError(f"{where}: the prior's denoiser returned non-finite values")
            if self.active:
                assert self.guidance is not None and self.mask is not None
                nw = len(self.starts)
                if isinstance(self.guidance, MMPS):  # its solver's products need the tangent map; DPS does not
                    y_hat, tangent = self._observe_with_tangent(zh)
                else:
                    y_hat, tangent = self._observe(zh), None
                y = self._targets(nw, b, y_hat)
                mask = self.mask[:, None, :].to(y_hat.device).expand(nw, b, -1)
                sig_wb = sigma.reshape(1, b).expand(nw, b)
                out, report = self.guidance.guide(
                    zw,
                    zh,
                    y_hat,
                    ObservationMap(self._observe, self._linearize_observe),
                    y,
                    self.noise,
                    sig_wb,
                    mask,
                    self.names,
                    where,
                    self._unit_rows,
                    self._warm[-1],
                    tangent,
                )
                self.reports.append(report)
                if not report.converged and self.on_failure == "raise":
                    raise GuidanceError(_failure_message([report], self.calls, self.guidance))
            else:
                out = zh.detach()
        parts = [out[i, :, lo - a : hi - a] for i, (a, (lo, hi)) in enumerate(zip(self.starts, self.keep, strict=True))]
        return torch.cat(parts, dim=1)

    def _call_windowed(self, z: Tensor, sigma: Tensor, where: str) -> Tensor:
        """One window after the other, each with its own observations and graph (see ``windowed``)."""
        assert self.windows is not None and self.guidance is not None
        b = z.shape[0]
        outs, reports = [], []
        for a, win, warm in zip(self.starts, self.windows, self._warm[:-1], strict=True):
            zi = z[:, a - self.offset : a - self.offset + self.size].detach()
            times = self.frame_times[a : a + self.size]
            if win is None:  # no observation in this window
                with torch.no_grad():
                    outs.append(self.prior.denoise(zi, sigma, times).detach())
                continue
            with torch.enable_grad():
                leaf = zi[None].requires_grad_(True)
                with first_order_only():
                    zh = self.prior.denoise(leaf[0], sigma, times)[None]
                if not bool(torch.isfinite(zh).all()):
                    raise GuidanceError(f"{where}: the prior's denoiser returned non-finite values")
                if isinstance(self.guidance, MMPS):
                    y_hat, tangent = win.observe_with_tangent(zh)
                else:
                    y_hat, tangent = win.observe(zh), None
                y = win.targets(b, y_hat)
                out, report = self.guidance.guide(
                    leaf, zh, y_hat, ObservationMap(win.observe, win.linearize), y, win.noise, sigma.reshape(1, b),
                    None, win.names, where, win.unit_rows, warm, tangent,
                )  # fmt: skip
            reports.append(report)
            outs.append(out[0])
            del leaf, zh, y_hat, y, tangent  # this window's graph: freed before the next window's is built
        if reports:
            per_op: dict[str, float] = {}
            for r in reports:
                for k, v in r.operator_residuals.items():
                    per_op[k] = max(per_op.get(k, 0.0), v)
            report = GuidanceReport(
                all(r.converged for r in reports),
                max(r.iterations for r in reports),
                max(r.residual for r in reports),
                per_op,
                where,
            )
            self.reports.append(report)
            if not report.converged and self.on_failure == "raise":
                raise GuidanceError(_failure_message([report], self.calls, self.guidance))
        parts = [o[:, lo - a : hi - a] for o, a, (lo, hi) in zip(outs, self.starts, self.keep, strict=True)]
        return torch.cat(parts, dim=1)


@attrs.define(eq=False)
class _Window:
    """One window's observations for :meth:`PosteriorDenoiser._call_windowed`: its rows of every operator
    (selected and prepared on the window's times) and its known states, with their noise and names."""

    prior: DiffusionPrior
    ops: list[Any]
    known: KnownStates | None
    names: dict[str, slice]
    noise: NoiseModel
    unit_rows: Tensor | None
    values: Tensor

    @classmethod
    def build(cls, den: PosteriorDenoiser, start: int, mask: np.ndarray, m_obs: int) -> _Window | None:
        times = den.frame_times[start : start + den.size]
        ops, names, models, values, pos = [], {}, [], [], 0
        if den.obs is not None:
            for op in den.obs.operators:  # TypeError for operators without times: they cannot move to a window
                op.observation_times()
            rows = np.flatnonzero(mask[:m_obs])
            for name, op in zip(den.obs.names, den.obs.operators, strict=True):
                sl = den.obs.slices[name]
                local = rows[(rows >= sl.start) & (rows < sl.stop)] - sl.start
                if local.size == 0:
                    continue
                sub = op.select(local).prepare(op.grid, op.spec, times)  # type: ignore[arg-type]
                ops.append(sub)
                names[name] = slice(pos, pos + sub.size)
                models.append(sub.noise)
                values.append(sub.values)
                pos += sub.size
        known, unit_rows = None, None
        if den.known is not None:
            index = np.asarray(den.known.index)
            sel = np.flatnonzero((index >= start) & (index < start + den.size))
            if sel.size:
                known = KnownStates(index[sel] - start, den.known.values[:, sel], den.known.std)
                m_k = known.size
                names["known_states"] = slice(pos, pos + m_k)
                models.append(DiagonalGaussian(known.std).expand(m_k))
                unit_rows = torch.cat([torch.zeros(pos), torch.ones(m_k)]).to(torch.float64)
        if not models:
            return None
        noise = models[0] if len(models) == 1 else BlockDiagonal(models)
        obs_values = torch.cat(values).to(torch.float64) if values else torch.zeros(0, dtype=torch.float64)
        return cls(den.prior, ops, known, names, noise, unit_rows, obs_values)

    def observe(self, zh: Tensor) -> Tensor:
        """``[1, B, K, *event_rest] -> [1, B, M_w]``."""
        ys = []
        if self.ops:
            x = self.prior.decode(zh[0])
            ys.extend(op(x) for op in self.ops)
        if self.known is not None:
            ys.append(self._known_rows(zh))
        return torch.cat(ys, dim=-1)[None]

    def _known_rows(self, zh: Tensor) -> Tensor:
        """The known-state rows ``[B, M_known]`` of ``zh`` ``[1, B, K, *]`` (linear in ``zh``)."""
        assert self.known is not None
        idx = torch.as_tensor(np.asarray(self.known.index), device=zh.device)
        return zh[0][:, idx].reshape(zh.shape[1], -1)

    def linearize(self, zh: Tensor) -> Callable[[Tensor], Tensor] | None:
        """The tangent map of :meth:`observe` at ``zh`` (``None`` when the prior has no ``linearize_decode``)."""
        linearize_decode = getattr(self.prior, "linearize_decode", None)
        if self.ops and linearize_decode is None:
            return None
        if not self.ops:
            return self._tangent(None, [])
        x, dx_of = linearize_decode(zh[0])
        return self._tangent(dx_of, [op.linearize(x) for op in self.ops])

    def observe_with_tangent(self, zh: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor] | None]:
        """``(observe(zh)`` with its graph, its tangent map at ``zh)`` from one decoder pass when the prior's
        ``linearize_decode`` takes ``graph``; else ``(observe(zh), None)``."""
        if not self.ops:
            return self.observe(zh), self._tangent(None, [])
        decoded = decode_with_tangent(self.prior, zh[0])
        if decoded is None:
            return self.observe(zh), None
        x, dx_of = decoded
        ys = [op(x) for op in self.ops]
        if self.known is not None:
            ys.append(self._known_rows(zh))
        xd = x.detach()
        return torch.cat(ys, dim=-1)[None], self._tangent(dx_of, [op.linearize(xd) for op in self.ops])

    def _tangent(
        self, dx_of: Callable[[Tensor], Tensor] | None, maps: list[Callable[[Tensor], Tensor]]
    ) -> Callable[[Tensor], Tensor]:
        """The tangent map of :meth:`observe` from the decoder's (``dx_of``) and the operators' (``maps``)."""

        def tangent(v: Tensor) -> Tensor:
            ys = []
            if dx_of is not None:
                dx = dx_of(v[0])
                ys.extend(h(dx) for h in maps)
            if self.known is not None:
                ys.append(self._known_rows(v))
            return torch.cat(ys, dim=-1)[None]

        return tangent

    def targets(self, b: int, like: Tensor) -> Tensor:
        ys = [self.values.to(device=like.device).expand(b, -1)] if self.ops else []
        if self.known is not None:
            kv = self.known.values.reshape(self.known.values.shape[0], -1).to(torch.float64).to(like.device)
            ys.append(kv.expand(b, -1))
        return torch.cat(ys, dim=-1)[None]
