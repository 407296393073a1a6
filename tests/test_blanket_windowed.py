"""Blankets with windowed observations (issue 14, item 4): each window is guided by its own observations,
selected and prepared on its own times, one window at a time. It must give what the all-windows-at-once path
gives (to rounding), stay exact for a white-in-time Gaussian prior, and include known (context) states."""

from __future__ import annotations

import attrs
import numpy as np
import pytest
import torch
from _guided_helpers import ar1_prior, make_spec, window_times

from appa_core.diffusion.blanket import Blanket
from appa_core.grid import Grid
from appa_core.guidance import DPS, MMPS, KnownStates, PosteriorDenoiser, observation_time_ranges
from appa_core.obs import ObsSet, PointOperator
from appa_core.spec import StateSpec

SPEC = make_spec()
F64 = torch.float64


@attrs.define(kw_only=True, eq=False)
class Points(PointOperator):
    """One surface or model-level channel per observation (level from ``variable`` ``"name@level"``)."""

    def _channel_stencil(self, spec: StateSpec) -> tuple[np.ndarray, np.ndarray]:
        ch = []
        for v in self.variable:
            name, _, lev = str(v).partition("@")
            ch.append(spec.index(name, float(lev) if lev else None, owner=str(self.name)))
        return np.asarray(ch)[:, None], np.ones((self.size, 1))


def _setup(rho: float, k: int, length: int, n_obs: int = 40, on_states: bool = False):  # type: ignore[no-untyped-def]
    grid = Grid.equiangular(3, 4)
    prior = ar1_prior(k, grid, SPEC, rho=rho, gen=torch.Generator().manual_seed(0))
    full = ar1_prior(length, grid, SPEC, rho=rho, gen=torch.Generator().manual_seed(0))
    times = window_times(length)
    g = np.random.default_rng(1)
    span = (times[-1] - times[0]).astype("int64")
    variables = np.array(SPEC.surface + tuple(f"{v}@{lev}" for v in SPEC.atmospheric for lev in SPEC.levels))
    op = Points(
        variable=variables[g.integers(0, variables.size, n_obs)],
        lat=g.uniform(-80, 80, n_obs),
        lon=g.uniform(0, 360, n_obs),
        time=times[g.integers(0, length, n_obs)]
        if on_states
        else times[0] + g.integers(0, span + 1, n_obs).astype("timedelta64[ns]"),
        value=g.normal(0, 1, n_obs),
        error=0.3,
        name="points",
    )
    return grid, prior, full, op, times


def _denoisers(prior, obs, times, bl, **kw):  # type: ignore[no-untyped-def]
    common = dict(obs=obs, row_range=observation_time_ranges(obs, prior, times.size), guidance=MMPS("cg", 200, 1e-13))
    common.update(kw)
    args = (prior, times, bl.starts, bl.size, bl.keep, 0, times.size)
    return PosteriorDenoiser(*args, **common, windowed=True), PosteriorDenoiser(*args, **common, windowed=False)


@pytest.mark.parametrize(("rho", "on_states"), [(0.0, True), (0.8, False)])
def test_windowed_equals_all_windows_at_once(rho: float, on_states: bool) -> None:
    grid, prior, full, op, times = _setup(rho, k=4, length=11, on_states=on_states)
    obs = ObsSet([op]).prepare(grid, SPEC, times)
    bl = Blanket(11, 4, 2)
    win, batched = _denoisers(prior, obs, times, bl)
    assert win.windows is not None and batched.windows is None
    # each window holds only its own observations, prepared on its own 4 times
    held = [w.ops[0] for w in win.windows if w is not None]
    assert all(o.window.size == 4 for o in held) and max(o.size for o in held) < op.size
    g = torch.Generator().manual_seed(0)
    for sigma in (0.01, 0.3, 3.0, 100.0):
        z = full.encode(full.sample(2, g)) + sigma * torch.randn(2, *full.state_shape, generator=g, dtype=F64)
        sig = torch.full((2,), sigma, dtype=F64)
        assert float((win(z, sig) - batched(z, sig)).abs().max()) < 1e-9
    assert len(win.reports) == len(batched.reports) == 4  # one report per call, windowed or not
    if rho == 0.0:  # independent times, observations at state times: the exact full-trajectory posterior denoiser
        post = full.condition(obs.matrix(), obs.values, obs.noise.dense_cov())
        z = full.encode(full.sample(2, g)) + 0.5 * torch.randn(2, *full.state_shape, generator=g, dtype=F64)
        sig = torch.full((2,), 0.5, dtype=F64)
        assert float((win(z, sig) - post.denoise(z, sig)).abs().max()) < 1e-9


def test_windowed_with_known_states() -> None:
    grid, prior, full, op, times = _setup(0.5, k=4, length=9)
    obs = ObsSet([op]).prepare(grid, SPEC, times)
    bl = Blanket(9, 4, 2)
    x0 = full.encode(full.sample(1, torch.Generator().manual_seed(3)))
    known = KnownStates(np.array([0, 1]), x0[:, :2], 1e-2)
    win, batched = _denoisers(prior, obs, times, bl, known=known)
    assert win.windows is not None and "known_states" in win.windows[0].names
    assert "known_states" not in win.windows[-1].names
    g = torch.Generator().manual_seed(4)
    z = full.encode(full.sample(2, g)) + 1.0 * torch.randn(2, *full.state_shape, generator=g, dtype=F64)
    sig = torch.full((2,), 1.0, dtype=F64)
    assert float((win(z, sig) - batched(z, sig)).abs().max()) < 1e-9


@pytest.mark.parametrize("windowed", [True, False])
def test_latent_prior_linearized_products_equal_forward_mode(windowed: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """MMPS's products through the latent prior's linearized decoder (``Prior.linearize_decode``, built once per
    call) give the guided output that ``torch.func.jvp`` of the whole observation map gives, windowed or not,
    with known states; and the linearization is what runs."""
    from _guided_helpers import tiny_latent_prior

    prior = tiny_latent_prior()
    spec, grid, length = prior.spec, prior.grid, 6
    times = window_times(length)
    g = np.random.default_rng(2)
    variables = np.array(spec.surface + tuple(f"{v}@{lev}" for v in spec.atmospheric for lev in spec.levels))
    n_obs = 30
    op = Points(
        variable=variables[g.integers(0, variables.size, n_obs)],
        lat=g.uniform(-80, 80, n_obs),
        lon=g.uniform(0, 360, n_obs),
        time=times[g.integers(0, length, n_obs)],
        value=g.normal(280, 5, n_obs),
        error=0.5,
        name="points",
    )
    obs = ObsSet([op]).prepare(grid, spec, times)
    bl = Blanket(length, prior.window, 2)
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(2, length, *prior.latent_shape, generator=gen)
    known = KnownStates(np.array([0]), torch.randn(1, 1, *prior.latent_shape, generator=gen), 1e-2)
    sig = torch.full((2,), 1.5)
    calls = []
    linearize = prior.linearize_decode

    def counted(zz: torch.Tensor):  # type: ignore[no-untyped-def]
        calls.append(zz.shape)
        return linearize(zz)

    def guided() -> torch.Tensor:
        den = PosteriorDenoiser(
            prior, times, bl.starts, bl.size, bl.keep, 0, length, obs=obs, known=known, windowed=windowed,
            row_range=observation_time_ranges(obs, prior, length), guidance=MMPS("gmres", 4, None, warm_start=False),
        )  # fmt: skip
        assert (den.windows is not None) == windowed
        return den(z, sig)

    monkeypatch.setattr(prior, "linearize_decode", counted)
    fast = guided()
    assert calls, "the linearized decoder was not used"
    monkeypatch.setattr(prior, "linearize_decode", None)  # no linearization: torch.func.jvp per product
    slow = guided()
    assert float((fast - z).abs().max()) > 1e-2  # the guidance moved the state
    assert float((fast - slow).abs().max() / (slow - z).abs().max()) < 1e-4


@pytest.mark.parametrize("windowed", [False, True])
def test_one_decoder_pass_per_guided_call(windowed: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a prior whose ``linearize_decode`` takes ``graph`` (the latent ``Prior``), a guided call decodes the
    denoised state once: the pass that observes it, with its graph for the VJPs, also gives the tangent map of the
    solver's products. Before, it decoded twice (a forward for the observations, a linearization); a prior without
    ``graph`` still takes that path. The two give the same output to float32 rounding."""

    import appa_core.guidance.observation_map as om

    prior, times, obs, bl = _latent_blankets(2, 30, ["2m_temperature", "temperature@500", "temperature@850"])
    length = times.size
    den = _denoisers(prior, obs, times, bl, guidance=MMPS("gmres", 3, None, warm_start=False))[0 if windowed else 1]
    assert (den.windows is not None) == windowed
    z = torch.randn(2, *prior.event_shape(length), generator=torch.Generator().manual_seed(1))
    sigma = torch.full((2,), 0.8)
    ae = prior.autoencoder
    counts = {"decode": 0, "linearize": 0}
    decode, linearize = ae.decode, ae.linearize_decode

    def counted_decode(zz: torch.Tensor) -> torch.Tensor:
        counts["decode"] += 1
        return decode(zz)

    def counted_linearize(zz: torch.Tensor, graph: bool = False):  # type: ignore[no-untyped-def]
        counts["linearize"] += 1
        return linearize(zz, graph)

    monkeypatch.setattr(ae, "decode", counted_decode)
    monkeypatch.setattr(ae, "linearize_decode", counted_linearize)
    import appa_core.nn.denoiser as denoiser_module

    math_kernel: list[object] = []
    sdpa_kernel = denoiser_module.sdpa_kernel
    monkeypatch.setattr(denoiser_module, "sdpa_kernel", lambda *a: (math_kernel.append(a), sdpa_kernel(*a))[1])
    den(z, sigma)  # warm-up: the frame's fill state is decoded once and kept
    assert math_kernel == []  # the guidance takes VJPs only: the denoiser keeps its fused attention kernel
    passes = len(bl.starts) if windowed else 1  # decoder calls per guided call (each one batched)
    counts.update(decode=0, linearize=0)
    one_pass = den(z, sigma)
    assert counts == {"decode": 0, "linearize": passes}
    monkeypatch.setattr(om, "_takes_graph", lambda method: False)  # a prior whose linearize_decode has no graph
    counts.update(decode=0, linearize=0)
    two_passes = den(z, sigma)
    assert counts == {"decode": passes, "linearize": passes}
    step = float((two_passes - z).abs().max())
    assert step > 1e-2
    assert float((one_pass - two_passes).abs().max()) < 1e-5 * step
    monkeypatch.undo()
    # DPS needs no tangent map: one decoder pass, no linearization
    dps = _denoisers(prior, obs, times, bl, guidance=DPS(zeta=0.01))[0 if windowed else 1]
    dps(z, sigma)
    monkeypatch.setattr(ae, "decode", counted_decode)
    monkeypatch.setattr(ae, "linearize_decode", counted_linearize)
    counts.update(decode=0, linearize=0)
    dps(z, sigma)
    assert counts == {"decode": passes, "linearize": 0}


def _latent_blankets(windows: int, n_obs: int, variables: list[str]):  # type: ignore[no-untyped-def]
    """The tiny latent prior on ``windows`` blankets of its window with overlap 1, and ``n_obs`` point observations
    of ``variables`` at random places and states, prepared: ``(prior, times, obs, blanket)``."""
    from _guided_helpers import tiny_latent_prior

    prior = tiny_latent_prior()
    length = windows * (prior.window - 1) + 1
    times = window_times(length)
    g = np.random.default_rng(0)
    op = Points(
        variable=np.array(variables)[g.integers(0, len(variables), n_obs)],
        lat=g.uniform(-80, 80, n_obs), lon=g.uniform(0, 360, n_obs), time=times[g.integers(0, length, n_obs)],
        value=g.normal(270, 10, n_obs), error=1.0, name="points",
    )  # fmt: skip
    return prior, times, ObsSet([op]).prepare(prior.grid, prior.spec, times), Blanket(length, prior.window, 1)


def test_windowed_graph_is_freed_before_the_next_window() -> None:
    """Windowed guidance holds one window's graph at a time (``windowed``'s memory bound), also when one decoder
    pass gives both the observations and the tangent map (latent prior): when a window's denoiser runs, no tensor
    saved for backward by an earlier window is alive."""
    import weakref

    prior, times, obs, bl = _latent_blankets(3, 40, ["2m_temperature", "temperature@500"])
    den = _denoisers(prior, obs, times, bl, guidance=MMPS("gmres", 2, None, warm_start=False))[0]
    assert den.windows is not None and sum(w is not None for w in den.windows) >= 3
    weights = {id(t) for t in [*prior.autoencoder.parameters(), *prior.autoencoder.buffers()]}
    weights |= {id(t) for t in [*prior.denoiser.parameters(), *prior.denoiser.buffers()]}
    saved: list[weakref.ref[torch.Tensor]] = []
    alive_at_denoise: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:  # a detached alias: alive exactly as long as the graph saves it
        alias = t.detach()
        if id(t) not in weights:
            saved.append(weakref.ref(alias))
        return alias

    denoise = prior.denoise

    def watched(*args, **kwargs):  # type: ignore[no-untyped-def]
        alive_at_denoise.append(sum(r() is not None for r in saved))
        saved.clear()
        return denoise(*args, **kwargs)

    prior.denoise = watched  # type: ignore[method-assign]
    z = torch.randn(2, *prior.event_shape(times.size), generator=torch.Generator().manual_seed(1))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        den(z, torch.full((2,), 0.8))
    assert len(alive_at_denoise) == len(bl.starts) and alive_at_denoise == [0] * len(bl.starts)
