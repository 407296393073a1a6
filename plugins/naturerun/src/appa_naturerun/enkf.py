"""Ensemble Kalman filter (LETKF) cycling the nature-run GCM itself: the strongest classical baseline.

The forecast model knows the true dynamics (same jcm configuration as the nature run); only the initial state
is uncertain. One 6-hour cycle ending at ``t``:

1. every member is integrated 6 h with jcm (members are looped; one compiled step function is shared);
2. each member's output is converted to the WeatherBench2 layout with :func:`appa_naturerun.convert.convert_chunk`
   and gathered on the state spec's channels (default ``appa_core.data.DEMO_SPEC``);
3. the observations of the window ``[t - 6 h, t]`` are simulated from the truth store by
   :class:`appa_workflows.observing.ObservingSystem` (seed ``seed`` + cycle index) and evaluated 4-D on each member's
   window ``[analysis at t - 6 h, background at t]`` (asynchronous observations are interpolated in time by the
   operators); observations at exactly ``t - 6 h`` were used by the previous cycle and are dropped;
4. LETKF weights ``[H, W, N, N]`` per WB2 column (:func:`appa_naturerun.letkf.letkf`, Gaspari-Cohn R-localisation,
   multiplicative inflation + RTPP, diagonal R, a gross-error check);
5. the weights are applied (a) to the members' WB2 fields: the analysis written to ``analysis.zarr``, and (b) to the
   members' **model state**: every spectral prognostic (vorticity, divergence, temperature variation, log surface
   pressure, specific humidity) is transformed to the model's Gaussian grid, each model column takes the weights
   of the nearest WB2 column (same longitudes; nearest latitude), and the result is transformed back to spectral
   space (which truncates the small scales that column-varying weights create). Each member keeps its own physics
   carry. Both representations are the same linear combination of the same members, so they agree up to the
   nonlinearity of the sigma -> pressure conversion.

After the last cycle the analysis ensemble is integrated freely to ``forecast_hours`` (6-hourly output) into
``forecast.zarr``.

Initial ensemble (``initial``):

- ``"climatology"`` (the default of the CLI, and the fair start used by ``benchmarks/twin.py``): the members are
  model states of **another** nature run (``--climate``, e.g. the training run), drawn at the ``members`` dates
  nearest in day of year to ``t_init`` (every ``bank_days`` days; dates closer than ``exclude_days`` to ``t_init``
  are skipped when the climate run is the truth itself, as when tuning on training dates). Nothing about the truth
  enters the ensemble. The training run's model states are not in its store, so they are replayed from its
  spin-up checkpoint once (jcm is deterministic) and kept as jcm checkpoints in a *bank* directory
  (:func:`climate_bank`); the truth is replayed to ``t_init`` only for the model clock. Each member keeps its own
  physics carry; its dynamics' ``sim_time`` is set to the clock's. Then cycle several days before scoring
  (``--spinup-cycles``): the filter must pull a climatological ensemble onto the truth.
- ``"perturbed"``: the truth's own state at ``t_init`` (replayed from ``<truth>.state/``) with independent
  spectrum-matched perturbations (random-sign multiples of the state's own spherical-harmonic coefficients,
  ``perturbation`` = 5 %, total wavenumbers >= 1, for vorticity, temperature and log p_s), run freely for
  ``spinup_hours``. A favourable start that knows the truth; kept for tests and comparison only.

See docs/baselines.md.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time as _time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import xarray as xr

from .convert import convert_chunk

log = logging.getLogger("appa_naturerun.enkf")

STEP = np.timedelta64(6, "h")
#: Variables scored in the summary: (label, variable, level or None).
SCORED: tuple[tuple[str, str, int | None], ...] = (
    ("Z500", "geopotential", 500),
    ("T850", "temperature", 850),
    ("U850", "u_component_of_wind", 850),
    ("Q700", "specific_humidity", 700),
    ("T2M", "2m_temperature", None),
    ("MSLP", "mean_sea_level_pressure", None),
)
#: Spectral prognostics to which the weights are applied (names in the nodal dict of an ensemble model).
#: The model-state fields the analysis weights are applied to, on the model's Gaussian grid (``winds="uv"``: the
#: winds are analysed as ``u, v``, converted from / back to the prognostic vorticity and divergence; ``"vordiv"``:
#: as vorticity and divergence). Neither is exact with column-varying weights: combining vorticity columns is not
#: combining winds (the wind is a non-local function of the vorticity), and combining wind columns creates
#: divergence ``v . grad(T)`` (so a surface-pressure tendency) where the weights vary.
PROGNOSTICS = ("u", "v", "temperature_variation", "log_surface_pressure", "specific_humidity")
PROGNOSTICS_VORDIV = ("vorticity", "divergence", *PROGNOSTICS[2:])


class EnsembleModel(Protocol):
    """What :func:`run_enkf` needs from a forecast model (jcm: :class:`JcmEnsemble`; tests: a fake)."""

    members: int
    native_lat: np.ndarray  # [48] degrees, model order
    native_lon: np.ndarray  # [96] degrees
    phis_native: np.ndarray  # (lat, lon) m2/s2

    def now(self) -> np.datetime64: ...
    def advance(self, hours: int, save_hours: int) -> list[xr.Dataset]: ...  # native output per member
    def get_nodal(self) -> dict[str, np.ndarray]: ...  # name -> [N, L, lon, lat]
    def set_nodal(self, fields: dict[str, np.ndarray]) -> None: ...


# ------------------------------------------------------------------------------------------------------------
# weights on the model grid
# ------------------------------------------------------------------------------------------------------------


def nearest_index(src: np.ndarray, dst: np.ndarray, periodic: float | None = None) -> np.ndarray:
    """For every ``dst`` coordinate, the index of the nearest ``src`` coordinate (``periodic``: the period)."""
    d = np.asarray(dst, dtype=np.float64)[:, None] - np.asarray(src, dtype=np.float64)[None]
    if periodic:
        d = (d + periodic / 2) % periodic - periodic / 2
    return np.abs(d).argmin(axis=1)


def weights_to_native(
    weights: np.ndarray, wb2_lat: np.ndarray, wb2_lon: np.ndarray, native_lat: np.ndarray, native_lon: np.ndarray
) -> np.ndarray:
    """Map WB2-column weights ``[H, W, N, N]`` to the model grid ``[lon, lat, N, N]`` (nearest WB2 column)."""
    w = np.asarray(weights)
    ih = nearest_index(wb2_lat, native_lat)
    iw = nearest_index(wb2_lon, native_lon, periodic=360.0)
    return w[ih][:, iw].transpose(1, 0, 2, 3)


def apply_native(fields: dict[str, np.ndarray], weights_native: np.ndarray) -> dict[str, np.ndarray]:
    """Apply ``[lon, lat, N, N]`` weights to nodal fields ``[N, ..., lon, lat]``: ``x_a[j] = sum_i T_ij x[i]``."""
    out = {}
    for k, v in fields.items():
        out[k] = np.einsum("xyij,i...xy->j...xy", weights_native, np.asarray(v, dtype=np.float64))
    return out


# ------------------------------------------------------------------------------------------------------------
# jcm ensemble
# ------------------------------------------------------------------------------------------------------------


def _list_truth_checkpoints(state_dir: Path) -> list[tuple[np.datetime64, Path]]:
    from .run import _list_checkpoints

    out = list(_list_checkpoints(state_dir))
    meta = state_dir / "spinup.json"
    if meta.exists() and (state_dir / "spinup.msgpack").exists():
        t = np.datetime64(json.loads(meta.read_text())["time"], "m")
        out.append((t, state_dir / "spinup.msgpack"))
    return sorted(out, key=lambda tp: tp[0])


def _stamp(t: np.datetime64) -> str:
    return str(np.datetime64(t, "m")).replace("-", "").replace(":", "")[:13]


def _run_driver(store: str | Path):  # -> JcmDriver
    """A jcm driver configured as the nature run of ``store`` was (its seed; its clock starting at ``start -
    spinup_days - 6 h``, see :mod:`appa_naturerun.run`), ready to ``load`` one of that run's checkpoints."""
    from .gcm import JcmDriver
    from .run import state_dir_for

    cfg = json.loads((state_dir_for(store) / "run.json").read_text())
    model_start = np.datetime64(cfg["start"], "m") - np.timedelta64(int(cfg["spinup_days"]) * 24 * 60 + 6 * 60, "m")
    return JcmDriver(seed=int(cfg["seed"]), start_time=model_start)


def climate_bank(store: str | Path, bank: str | Path, times: Sequence[np.datetime64]) -> dict[np.datetime64, Path]:
    """jcm checkpoints of a nature run's model state at ``times``, replayed from its saved checkpoints.

    Args:
        store: the nature-run store whose ``.state/`` directory holds its spin-up checkpoint and ``run.json``.
        bank: directory of the checkpoints (``state-YYYYMMDDTHHMM.msgpack``; created, extended, reused: only the
            missing times are computed, replaying from the latest bank or run checkpoint before each).
        times: wanted times (multiples of 6 h within the run).
    Returns:
        ``{time: checkpoint path}`` for every wanted time.
    """
    from .run import _list_checkpoints, state_dir_for

    state_dir = state_dir_for(store)
    bank = Path(bank)
    bank.mkdir(parents=True, exist_ok=True)
    wanted = sorted({np.datetime64(t, "m") for t in times})
    have = dict(_list_checkpoints(bank))
    missing = [t for t in wanted if t not in have]
    if missing:
        driver = _run_driver(store)
        sources = sorted([*_list_truth_checkpoints(state_dir), *have.items()], key=lambda tp: tp[0])
        t_now = None
        for t in missing:
            base = [(tc, pc) for tc, pc in sources if tc <= t]
            if not base:
                raise ValueError(f"climate_bank: no checkpoint of {store} at or before {t}")
            tc, pc = max(base, key=lambda tp: tp[0])
            if t_now is None or t_now > t or tc > t_now:  # (re)load when the replay cannot simply continue
                driver.load(pc)
                t_now = tc
            gap_h = int((t - t_now) / np.timedelta64(1, "h"))
            if gap_h % 6:
                raise ValueError(f"climate_bank: {t} is not a multiple of 6 h after the checkpoint {t_now}")
            if gap_h:
                log.info("climate bank: replaying %s %d h from %s to %s", store, gap_h, t_now, t)
                driver.advance(gap_h / 24, gap_h / 24)
            t_now = t
            path = bank / f"state-{_stamp(t)}.msgpack"
            driver.save(path)
            have[t] = path
            sources.append((t, path))
    return {t: have[t] for t in wanted}


def climatological_dates(
    store: str | Path, t_init: np.datetime64, members: int, every_days: int = 3, exclude_days: float = 0.0
) -> list[np.datetime64]:
    """The ``members`` dates of a nature run (00 UTC, every ``every_days`` days from its start) nearest in day of
    year to ``t_init`` (cyclic), skipping dates within ``exclude_days`` of ``t_init`` itself."""
    from .run import state_dir_for

    cfg = json.loads((state_dir_for(store) / "run.json").read_text())
    start = np.datetime64(cfg["start"], "D")
    last = np.datetime64(cfg["last_time"], "m")
    cands = np.arange(start, np.datetime64(last, "D") + 1, np.timedelta64(every_days, "D"))
    cands = np.array([np.datetime64(c, "m") for c in cands if np.datetime64(c, "m") <= last])
    t_init = np.datetime64(t_init, "m")
    doy = lambda t: (t - np.datetime64(t, "Y")) / np.timedelta64(1, "D")  # noqa: E731
    d = np.array([abs(doy(c) - doy(t_init)) for c in cands])
    d = np.minimum(d, 365.25 - d)
    far = np.array([abs((c - t_init) / np.timedelta64(1, "D")) >= exclude_days for c in cands])
    order = [i for i in np.lexsort((cands, d)) if far[i]]
    if len(order) < members:
        raise ValueError(
            f"climatological_dates: {store} has {len(order)} dates every {every_days} d outside "
            f"{exclude_days} d of {t_init}, need members={members}"
        )
    return sorted(cands[order[:members]])


class JcmEnsemble:
    """``N`` jcm members sharing one compiled :class:`appa_naturerun.gcm.JcmDriver` (looped, not vmapped).

    Args:
        truth_store: the nature-run store whose ``.state/`` directory holds the truth's checkpoints.
        t_init: time of the initial ensemble (the truth is replayed from the latest checkpoint at or before it).
        members: ensemble size.
        seed: perturbation seed (``initial="perturbed"``).
        perturbation: relative amplitude of the spectrum-matched perturbations (``initial="perturbed"``).
        initial: ``"climatology"`` (members from ``climate_store``'s model states, see the module docstring) or
            ``"perturbed"`` (perturbed truth).
        climate_store, bank, bank_days, exclude_days: the climate run, its checkpoint bank directory, the
            spacing of its dates (days) and the dates skipped around ``t_init`` (``initial="climatology"``).
    """

    def __init__(
        self,
        truth_store: str | Path,
        t_init: np.datetime64,
        members: int,
        seed: int = 0,
        perturbation: float = 0.05,
        *,
        initial: str = "perturbed",
        climate_store: str | Path | None = None,
        bank: str | Path | None = None,
        bank_days: int = 3,
        exclude_days: float = 0.0,
        winds: str = "uv",
    ):
        if winds not in ("uv", "vordiv"):
            raise ValueError(f"JcmEnsemble: field 'winds' has value {winds!r}, expected uv or vordiv")
        self.winds = winds
        if initial not in ("perturbed", "climatology"):
            raise ValueError(f"JcmEnsemble: field 'initial' has value {initial!r}, expected perturbed or climatology")
        if initial == "climatology" and (climate_store is None or bank is None):
            raise ValueError("JcmEnsemble: initial='climatology' needs climate_store and bank")
        from .run import state_dir_for

        state_dir = state_dir_for(truth_store)
        t_init = np.datetime64(t_init, "m")
        usable = [(t, p) for t, p in _list_truth_checkpoints(state_dir) if t <= t_init]
        if not usable:
            raise ValueError(f"JcmEnsemble: no truth checkpoint in {state_dir} at or before t_init {t_init}")
        t_ck, path = usable[-1]
        self.driver = _run_driver(truth_store)
        self.driver.load(path)
        gap_h = int((t_init - t_ck) / np.timedelta64(1, "h"))
        if gap_h % 6:
            raise ValueError(f"JcmEnsemble: t_init {t_init} is not a multiple of 6 h after the checkpoint {t_ck}")
        if gap_h:
            log.info("replaying the truth %d h from %s to %s", gap_h, t_ck, t_init)
            self.driver.advance(gap_h / 24, gap_h / 24)
        if np.datetime64(self.driver.now(), "m") != t_init:
            raise RuntimeError(f"JcmEnsemble: clock {self.driver.now()} after replay, expected {t_init}")
        self.model = self.driver.model
        self.horizontal = self.driver.coords.horizontal
        self.members = int(members)
        static = self.driver.static()
        self.native_lat = np.asarray(static["lat"].values, dtype=np.float64)
        self.native_lon = np.asarray(static["lon"].values, dtype=np.float64)
        self.phis_native = np.asarray(static["phis"].transpose("lat", "lon").values)
        rs = self.model.run_state
        self._time, self._step = rs.time, rs.step
        self.initial_dates: list[str] = []
        if initial == "perturbed":
            rng = np.random.default_rng(seed)
            self.dyn = [self._perturb(rs.dynamics, rng, perturbation) for _ in range(self.members)]
            self.phys = [rs.physics for _ in range(self.members)]
            return
        dates = climatological_dates(climate_store, t_init, self.members, bank_days, exclude_days)
        paths = climate_bank(climate_store, bank, dates)
        other = _run_driver(climate_store)
        self.dyn, self.phys = [], []
        for t in dates:
            other.load(paths[t])
            ms = other.model.run_state
            self.dyn.append(dataclasses.replace(ms.dynamics, sim_time=rs.dynamics.sim_time))
            self.phys.append(ms.physics)
            self.initial_dates.append(str(t))
        log.info("climatological initial ensemble from %s: %s", climate_store, ", ".join(self.initial_dates))

    @staticmethod
    def _perturb(state: Any, rng: np.random.Generator, amplitude: float) -> Any:
        import jax.numpy as jnp

        def pert(c: Any) -> Any:
            a = np.asarray(c)
            noise = rng.normal(size=a.shape) * amplitude
            noise[..., 0] = 0.0  # keep the global means (total wavenumber 0)
            return jnp.asarray(a * (1.0 + noise), dtype=a.dtype)

        return dataclasses.replace(
            state,
            vorticity=pert(state.vorticity),
            temperature_variation=pert(state.temperature_variation),
            log_surface_pressure=pert(state.log_surface_pressure),
        )

    def now(self) -> np.datetime64:
        return np.datetime64(self.driver.now(), "m")

    def advance(self, hours: int, save_hours: int) -> list[xr.Dataset]:
        from .gcm import NATIVE_VARS

        outs = []
        for i in range(self.members):
            self.model.restore_state(self.dyn[i], self.phys[i], time=self._time, step=self._step)
            pred = self.model.resume(forcing=self.driver.forcing, save_interval=save_hours / 24, total_time=hours / 24)
            ds = pred.to_xarray()
            outs.append(ds[[v for v in NATIVE_VARS if v in ds]].load())
            rs = self.model.run_state
            self.dyn[i], self.phys[i] = rs.dynamics, rs.physics
        self._time, self._step = rs.time, rs.step
        return outs

    def get_nodal(self) -> dict[str, np.ndarray]:
        from dinosaur.spherical_harmonic import vor_div_to_uv_nodal

        h = self.horizontal
        names = PROGNOSTICS if self.winds == "uv" else PROGNOSTICS_VORDIV
        out: dict[str, list[np.ndarray]] = {k: [] for k in names}
        for s in self.dyn:
            if self.winds == "uv":
                u, v = vor_div_to_uv_nodal(h, s.vorticity, s.divergence)
                out["u"].append(np.asarray(u, dtype=np.float64))
                out["v"].append(np.asarray(v, dtype=np.float64))
            for k in names[2:] if self.winds == "uv" else names:
                c = s.tracers[k] if k == "specific_humidity" else getattr(s, k)
                out[k].append(np.asarray(h.to_nodal(c), dtype=np.float64))
        return {k: np.stack(v) for k, v in out.items()}

    def set_nodal(self, fields: dict[str, np.ndarray]) -> None:
        import jax.numpy as jnp
        from dinosaur.spherical_harmonic import uv_nodal_to_vor_div_modal

        h = self.horizontal
        for i, s in enumerate(self.dyn):
            dt = s.vorticity.dtype
            names = PROGNOSTICS[2:] if self.winds == "uv" else PROGNOSTICS_VORDIV
            modal = {k: jnp.asarray(h.to_modal(jnp.asarray(fields[k][i])), dtype=dt) for k in names}
            if self.winds == "uv":
                vor, div = uv_nodal_to_vor_div_modal(h, jnp.asarray(fields["u"][i]), jnp.asarray(fields["v"][i]))
                modal.update(vorticity=jnp.asarray(vor, dtype=dt), divergence=jnp.asarray(div, dtype=dt))
            tracers = dict(s.tracers)
            tracers["specific_humidity"] = modal.pop("specific_humidity")
            self.dyn[i] = dataclasses.replace(s, tracers=tracers, **modal)


# ------------------------------------------------------------------------------------------------------------
# cycling
# ------------------------------------------------------------------------------------------------------------


def _members_to_tensor(natives: Sequence[xr.Dataset], phis: np.ndarray, spec, levels: Sequence[int]):
    """Convert native member outputs to ``([N, T, C, H, W] float64 tensor, times, grid)``."""
    import torch

    from appa_core.state import dataset_to_tensor

    xs, times, grid = [], None, None
    for nat in natives:
        ds = convert_chunk(nat, phis, levels=levels)
        x, times, grid = dataset_to_tensor(ds, spec)
        xs.append(x.to(torch.float64))
    return torch.stack(xs), np.asarray(times).astype("datetime64[ns]"), grid


def _observe(ops, xwin, t_prev: np.datetime64 | None):
    """Stack ``(HX [N, M], y, r, lat, lon)`` of every operator on ``xwin [N, T, C, H, W]``; drop times <= t_prev."""
    import torch

    hx, y, r, lat, lon, keep = [], [], [], [], [], []
    for op in ops:
        with torch.no_grad():
            hx.append(op(xwin).to(torch.float64))
        y.append(op.values.to(torch.float64))
        r.append(op.noise.variance().to(torch.float64).expand(op.size))
        meta = op.metadata()
        lat.append(np.asarray(meta["lat"], dtype=np.float64))
        lon.append(np.asarray(meta["lon"], dtype=np.float64))
        ot = np.asarray(meta["time"]).astype("datetime64[ns]")
        keep.append(np.ones(op.size, bool) if t_prev is None else ot > t_prev)
    k = torch.as_tensor(np.concatenate(keep))
    return (
        torch.cat(hx, 1)[:, k],
        torch.cat(y)[k],
        torch.cat(r)[k],
        np.concatenate(lat)[k.numpy()],
        np.concatenate(lon)[k.numpy()],
    )


def area_rmse(err, grid) -> np.ndarray:
    """Area-weighted RMSE over the last two axes of ``err [..., H, W]``."""
    w = np.asarray(grid.area_weights(), dtype=np.float64)[:, None]
    e = np.asarray(err, dtype=np.float64)
    return np.sqrt((e**2 * w).mean(axis=(-2, -1)))


def _scores(mean, truth, spec, grid) -> dict[str, float]:
    """RMSE of ``mean [C, H, W]`` vs ``truth [C, H, W]`` for the :data:`SCORED` channels present in ``spec``."""
    out = {}
    for label, var, level in SCORED:
        try:
            c = spec.index(var, level)
        except ValueError:
            continue
        out[label] = float(area_rmse(np.asarray(mean[c]) - np.asarray(truth[c]), grid))
    return out


@dataclasses.dataclass
class EnKFResult:
    analysis: Path
    forecast: Path | None
    summary: dict


def run_enkf(
    model: EnsembleModel,
    truth: xr.Dataset,
    out: str | Path,
    *,
    cycles: int,
    observing: Any,
    spec: Any = None,
    seed: int = 0,
    radius_km: float = 2500.0,
    inflation: float = 1.05,
    rtpp: float = 0.5,
    rtps: float = 0.0,
    gross_error: float = 5.0,
    forecast_hours: int = 72,
    levels: Sequence[int] | None = None,
    climatology: np.ndarray | None = None,
    progress: bool = True,
) -> EnKFResult:
    """Cycle the LETKF ``cycles`` times from ``model.now()`` (must be 6 h before the first analysis).

    Args:
        model: the ensemble (its clock is ``t0``; the first analysis is at ``t0 + 6 h``).
        truth: WB2-layout truth store (lazy is fine) covering ``t0 .. t0 + 6 h * cycles + forecast_hours``.
        out: output directory; writes ``analysis.zarr``, ``forecast.zarr`` (if ``forecast_hours``) and
            ``summary.json``.
        observing: an :class:`appa_workflows.observing.ObservingSystem`.
        spec: the state spec of the written fields and of the observations (default ``DEMO_SPEC``).
        radius_km, inflation, rtpp: LETKF settings; rtps: relaxation to prior spread (Whitaker & Hamill 2012),
            applied elementwise to the model's nodal prognostics and to the written WB2 analysis;
        gross_error: reject observations whose innovation exceeds
            ``gross_error * sqrt(r + var(HX))``.
        climatology: optional ``[C, H, W]`` climatological mean (same spec) to score against.
    Returns:
        paths and the summary dict (per-cycle RMSE of background and analysis means, forecast RMSE per lead).
    """
    import torch

    from appa_core.data import DEMO_SPEC
    from appa_core.state import dataset_to_tensor, tensor_to_dataset
    from appa_naturerun.letkf import letkf
    from appa_naturerun.letkf import rtps as relax_to_prior_spread

    spec = spec or DEMO_SPEC
    levels = list(levels or sorted({int(v) for v in truth["level"].values}))
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    a_path, f_path = out / "analysis.zarr", out / "forecast.zarr"
    t_wall = _time.perf_counter()

    def truth_at(times: np.ndarray):
        x, _, _ = dataset_to_tensor(truth.sel(time=times.astype("datetime64[ns]")), spec)
        return x.to(torch.float64)

    t0 = model.now()
    # the members' WB2 state at t0: from a 0-length step is impossible, so the first cycle uses its background
    # at t0 + 6 h twice (persistence within the first window) unless the caller provides prev states
    prev = getattr(model, "initial_wb2", None)
    summary: dict[str, Any] = {"cycles": [], "forecast": {}, "config": {}}
    summary["config"] = {
        "members": model.members,
        "cycles": cycles,
        "radius_km": radius_km,
        "inflation": inflation,
        "rtpp": rtpp,
        "rtps": rtps,
        "gross_error": gross_error,
        "observing": attrs_dict(observing),
        "seed": seed,
        "first_analysis": str(t0 + STEP),
        "spec": spec.channel_names(),
    }
    grid = None
    t_prev: np.datetime64 | None = None
    t_model = 0.0
    for k in range(cycles):
        tic = _time.perf_counter()
        natives = model.advance(6, 6)
        t_model += _time.perf_counter() - tic
        xb, times, grid = _members_to_tensor(natives, model.phis_native, spec, levels)  # [N, 1, C, H, W]
        xb = xb[:, 0]
        t = times[0]
        if prev is None:
            prev = xb
        window = np.array([t - STEP, t], dtype="datetime64[ns]")
        ops = observing.build(truth_at(window), grid, spec, window, seed=seed * 100_003 + k)
        hx, y, r, olat, olon = _observe(ops, torch.stack([prev, xb], 1), t_prev)
        n_all = y.numel()
        if gross_error and n_all:
            ok = (y - hx.mean(0)).abs() <= gross_error * torch.sqrt(r + hx.var(0))
            hx, y, r, olat, olon = hx[:, ok], y[ok], r[ok], olat[ok.numpy()], olon[ok.numpy()]
        xa, weights = letkf(
            xb, hx, y, r, obs_lat=olat, obs_lon=olon, grid=grid, radius_km=radius_km, inflation=inflation, rtpp=rtpp
        )
        wn = weights_to_native(weights.numpy(), grid.lat, grid.lon, model.native_lat, model.native_lon)
        nodal_b = model.get_nodal()
        nodal = apply_native(nodal_b, wn)
        if rtps:
            xa = relax_to_prior_spread(xb, xa, rtps)
            nodal = {k: relax_to_prior_spread(nodal_b[k], v, rtps).numpy() for k, v in nodal.items()}
        if "specific_humidity" in nodal:
            nodal["specific_humidity"] = np.maximum(nodal["specific_humidity"], 0.0)
        model.set_nodal(nodal)
        prev, t_prev = xa, np.datetime64(t)
        xt = truth_at(np.array([t]))[0]
        rec = {
            "time": str(np.datetime64(t, "m")),
            "n_obs": int(y.numel()),
            "n_rejected": int(n_all - y.numel()),
            "background": _scores(xb.mean(0), xt, spec, grid),
            "analysis": _scores(xa.mean(0), xt, spec, grid),
            "analysis_spread": _spread(xa, spec, grid),
            "wall_s": round(_time.perf_counter() - tic, 2),
        }
        summary["cycles"].append(rec)
        if progress:
            log.info("cycle %d %s: %s", k, rec["time"], json.dumps(rec["analysis"]))
        ds = tensor_to_dataset(xa[:, None].float(), spec, grid, np.array([t]))
        ds.attrs.update(kind="analysis", method="LETKF cycling the jcm nature-run GCM (appa_naturerun.enkf)")
        if k == 0:
            enc = {"time": {"units": "hours since 1970-01-01", "dtype": "int64"}}
            ds.to_zarr(a_path, mode="w", zarr_format=2, consolidated=True, encoding=enc)
        else:
            ds.to_zarr(a_path, mode="a", append_dim="time", zarr_format=2, consolidated=True)
    if climatology is not None and grid is not None:
        summary["climatology_analysis_times"] = _mean_scores(
            [
                _scores(torch.as_tensor(climatology), truth_at(np.array([np.datetime64(c["time"])]))[0], spec, grid)
                for c in summary["cycles"]
            ]
        )
    f_written = None
    if forecast_hours:
        tic = _time.perf_counter()
        natives = model.advance(int(forecast_hours), 6)
        t_model += _time.perf_counter() - tic
        xf, ftimes, grid = _members_to_tensor(natives, model.phis_native, spec, levels)  # [N, L, C, H, W]
        xt = truth_at(ftimes)
        init = np.datetime64(summary["cycles"][-1]["time"]) if summary["cycles"] else t0
        for j, ft in enumerate(ftimes):
            lead = int((np.datetime64(ft, "m") - np.datetime64(init, "m")) / np.timedelta64(1, "h"))
            rec = {"forecast": _scores(xf[:, j].mean(0), xt[j], spec, grid), "spread": _spread(xf[:, j], spec, grid)}
            if climatology is not None:
                rec["climatology"] = _scores(torch.as_tensor(climatology), xt[j], spec, grid)
            summary["forecast"][str(lead)] = rec
        ds = tensor_to_dataset(xf.float(), spec, grid, ftimes)
        lead_h = ((ftimes - np.datetime64(init, "ns")) / np.timedelta64(1, "h")).astype(np.int64)
        ds = ds.assign_coords(lead_hours=("time", lead_h))
        ds.attrs.update(
            kind="forecast", init_time=str(init), method="free jcm ensemble forecast from the LETKF analysis"
        )
        ds.to_zarr(f_path, mode="w", zarr_format=2, consolidated=True)
        f_written = f_path
    summary["wall_s"] = round(_time.perf_counter() - t_wall, 1)
    summary["model_wall_s"] = round(t_model, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return EnKFResult(analysis=a_path, forecast=f_written, summary=summary)


def _spread(x, spec, grid) -> dict[str, float]:
    """Area-weighted RMS ensemble spread (std, ddof 1) of the scored channels of ``x [N, C, H, W]``."""
    sd = x.std(0).numpy()
    out = {}
    for label, var, level in SCORED:
        try:
            c = spec.index(var, level)
        except ValueError:
            continue
        out[label] = float(area_rmse(sd[c], grid))
    return out


def _mean_scores(recs: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in recs])) for k in recs[0]} if recs else {}


def attrs_dict(obj: Any) -> dict:
    try:
        import attrs

        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in attrs.asdict(obj).items()}
    except Exception:  # best effort for the summary
        return {"repr": repr(obj)}


def climatology_from_store(path: str | Path, spec: Any, cache: Path | None = None) -> np.ndarray:
    """Time mean ``[C, H, W]`` (float64) of ``spec``'s channels over a whole WB2 store, one channel at a time."""
    if cache is not None and cache.exists():
        return np.load(cache)
    ds = xr.open_zarr(path, consolidated=True, chunks=None)
    out = []
    for ch in spec.channels:
        var, level = ch.variable, ch.level
        da = ds[var] if level is None else ds[var].sel(level=level)
        acc = np.zeros(da.shape[-2:], dtype=np.float64)
        n = da.sizes["time"]
        for s in range(0, n, 365):
            acc += np.asarray(da.isel(time=slice(s, s + 365)).values, dtype=np.float64).sum(0)
        out.append(acc / n)
    clim = np.stack(out)
    if cache is not None:
        np.save(cache, clim)
    return clim


def enkf_main(argv: Sequence[str] | None = None) -> int:
    """``appa-naturerun-enkf``: LETKF cycling of the nature-run GCM on a truth store; see ``--help``."""
    import argparse

    p = argparse.ArgumentParser(
        prog="appa-naturerun-enkf",
        description="LETKF cycling the jcm nature-run GCM against a truth store (twin experiment). Writes "
        "OUT/analysis.zarr (member, time, level, latitude, longitude; one analysis per 6-h cycle), "
        "OUT/forecast.zarr (free ensemble forecast from the last analysis, coordinate lead_hours) and "
        "OUT/summary.json (RMSE per cycle and lead).",
    )
    p.add_argument("--truth", required=True, help="nature-run store with its .state/ checkpoints")
    p.add_argument("--start", required=True, help="first scored analysis time, e.g. 2000-06-24T12")
    p.add_argument("--cycles", type=int, default=8, help="scored 6-h cycles from --start (default: %(default)s)")
    p.add_argument(
        "--spinup-cycles",
        type=int,
        default=20,
        help="6-h cycles before --start (written, not meant to be scored; default: %(default)s = 5 days)",
    )
    p.add_argument("--members", type=int, default=20)
    p.add_argument("--observing", default="sparse", help="ObservingSystem preset: sparse, dense or demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--forecast-hours", type=int, default=72)
    p.add_argument(
        "--initial",
        default="climatology",
        choices=["climatology", "perturbed"],
        help="initial ensemble: model states of the --climate run near the same day of year (default), or the "
        "perturbed truth (a favourable start, for comparison)",
    )
    p.add_argument(
        "--winds",
        default="uv",
        choices=["vordiv", "uv"],
        help="model fields the weights apply to for the winds (%(default)s)",
    )
    p.add_argument("--climate", default=None, help="nature-run store (with .state/) the initial members come from")
    p.add_argument("--bank", default=None, help="directory of the climate run's replayed states (default: OUT.bank)")
    p.add_argument("--bank-days", type=int, default=3, help="spacing of the climate dates (days; %(default)s)")
    p.add_argument(
        "--exclude-days",
        type=float,
        default=None,
        help="skip climate dates this close to the start (default: 10 if --climate is --truth, else 0)",
    )
    p.add_argument(
        "--spinup-hours", type=int, default=12, help="--initial perturbed: free run of the members before cycling"
    )
    p.add_argument("--perturbation", type=float, default=0.05, help="--initial perturbed: relative amplitude")
    p.add_argument("--radius-km", type=float, default=2500.0, help="Gaspari-Cohn cut-off (km)")
    p.add_argument("--inflation", type=float, default=1.05)
    p.add_argument("--rtpp", type=float, default=0.5, help="relaxation to prior perturbations (%(default)s)")
    p.add_argument("--rtps", type=float, default=0.0, help="relaxation to prior spread (%(default)s)")
    p.add_argument("--climatology", default=None, help="WB2 store whose time mean is scored as climatology")
    p.add_argument("--out", required=True, help="output directory")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import torch

    from appa_core.data import DEMO_SPEC
    from appa_workflows.observing import ObservingSystem

    torch.set_num_threads(max(1, torch.get_num_threads()))
    start = np.datetime64(a.start, "m")
    if a.spinup_hours < 0 or a.spinup_hours % 6:
        raise SystemExit("appa-naturerun-enkf: --spinup-hours must be a non-negative multiple of 6")
    if a.spinup_cycles < 0 or a.cycles < 1:
        raise SystemExit("appa-naturerun-enkf: --cycles must be >= 1 and --spinup-cycles >= 0")
    if a.initial == "climatology" and not a.climate:
        raise SystemExit(
            "appa-naturerun-enkf: --initial climatology needs --climate STORE (e.g. the training nature run)"
        )
    free_h = a.spinup_hours if a.initial == "perturbed" else 0
    first = start - STEP * a.spinup_cycles
    t_init = first - STEP - np.timedelta64(free_h, "h")
    truth = xr.open_zarr(a.truth, consolidated=True, chunks=None)
    needed = start + STEP * (a.cycles - 1) + np.timedelta64(a.forecast_hours, "h")
    if np.datetime64(truth["time"].values[-1], "m") < needed:
        raise SystemExit(f"appa-naturerun-enkf: the truth ends {truth['time'].values[-1]}, before {needed}")
    clim = None
    if a.climatology:
        out_dir = Path(a.out)
        cache = out_dir.parent / (out_dir.name + ".climatology.npy")
        clim = climatology_from_store(a.climatology, DEMO_SPEC, cache=cache)
    tic = _time.perf_counter()
    exclude = a.exclude_days
    if exclude is None:
        same = a.climate and Path(a.climate).resolve() == Path(a.truth).resolve()
        exclude = 10.0 if same else 0.0
    model = JcmEnsemble(
        a.truth,
        t_init,
        a.members,
        seed=a.seed,
        perturbation=a.perturbation,
        initial=a.initial,
        climate_store=a.climate,
        bank=a.bank or f"{Path(a.out)}.bank",
        bank_days=a.bank_days,
        exclude_days=exclude,
        winds=a.winds,
    )
    t_setup = _time.perf_counter() - tic
    if free_h:
        natives = model.advance(free_h, free_h)
        model.initial_wb2 = _members_to_tensor(natives, model.phis_native, DEMO_SPEC, list(truth["level"].values))[0][
            :, -1
        ]
    t_spin = _time.perf_counter() - tic - t_setup
    res = run_enkf(
        model,
        truth,
        a.out,
        cycles=a.spinup_cycles + a.cycles,
        observing=ObservingSystem.named(a.observing),
        seed=a.seed,
        radius_km=a.radius_km,
        inflation=a.inflation,
        rtpp=a.rtpp,
        rtps=a.rtps,
        forecast_hours=a.forecast_hours,
        climatology=clim,
    )
    scored = [c for c in res.summary["cycles"] if np.datetime64(c["time"], "m") >= start]
    res.summary.update(
        setup_s=round(t_setup, 1),
        spinup_s=round(t_spin, 1),
        command=vars(a),
        initial=a.initial,
        initial_dates=model.initial_dates,
        scored_from=str(start),
        scored_analysis=_mean_scores([c["analysis"] for c in scored]),
    )
    (Path(a.out) / "summary.json").write_text(json.dumps(res.summary, indent=1))
    print(json.dumps({"analysis": str(res.analysis), "forecast": str(res.forecast), "wall_s": res.summary["wall_s"]}))
    return 0


def main() -> None:  # console script
    raise SystemExit(enkf_main())
