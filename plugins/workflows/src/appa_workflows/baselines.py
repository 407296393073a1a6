r"""Classical baselines in the same harness as the diffusion prior: climatology, persistence, optimal interpolation.

* :class:`Climatology`: per-grid-point mean and standard deviation of each channel **by time of day** (00/06/12/18
  UTC for a 6-hourly store) over a training split, computed streaming (blocks of time steps read through dask,
  float64 sums of shifted values), saved as a small int16-packed zipped zarr. :meth:`Climatology.forecast` gives the
  climatological mean at any times in the WeatherBench2 layout, :meth:`Climatology.ensemble` a climatological
  ensemble (independent Gaussian draws from the per-point mean and std, for CRPS and spread).
  :func:`load_climatology` reads the one bundled with the package (DEMO_SPEC, from the nature-run training year).
* :func:`persistence`: the last state of an analysis (or of the truth) repeated at later times.
* :func:`oi_prior`: the optimal-interpolation baseline's climatological
  :class:`~appa_core.priors.gaussian.GaussianPrior` (sample mean and low-rank + diagonal sample covariance of
  training windows), to be run through the very same :class:`~appa_core.sampler.Sampler` as the learned prior.

**Climatology.** For channel :math:`c`, grid point :math:`(h, w)` and hour of day :math:`k`, over the training
times :math:`\mathcal{T}_k` with that hour (NaNs excluded), with a per-point shift :math:`s` (the first sample, to
avoid cancellation in :math:`E[x^2]-E[x]^2`):

.. math:: \mu = s + \frac{1}{n}\sum_{t\in\mathcal{T}_k}(x_t - s),\qquad
          \sigma^2 = \frac{1}{n-1}\Big(\sum_t (x_t - s)^2 - \frac{1}{n}\big(\sum_t (x_t - s)\big)^2\Big).

Regenerate the bundled climatology (``appa_workflows/assets/climatology.zarr.zip``, about 1.5 MB) with::

    python -m appa_workflows.baselines data/naturerun_train.zarr --start 2000-01-01 --end 2000-11-30

(the demo prior's training split; see ``appa_core/assets/demo_prior/train.toml``).

**OI prior.** Training windows of ``window`` consecutive states ``x_i`` ``[T, C, H, W]`` (``N`` of them, evenly spaced
over the split) give the sample mean :math:`\mu`, the per-element std :math:`s` and the standardized anomalies
:math:`X = [(x_i - \mu)/s]/\sqrt{N-1}` ``[N, D]``. The covariance is that of
:meth:`GaussianPrior.from_data(rank=r) <appa_core.priors.gaussian.GaussianPrior.from_data>`: the ``r`` leading principal
components plus the diagonal remainder, :math:`\Sigma = S (F F^\top + \mathrm{diag}(\max(1 - \|F_i\|^2,
v_{min}))) S`, with :math:`F = X^\top U_r` from the eigenvectors :math:`U_r` of the ``N x N`` Gram matrix
:math:`X X^\top` (the same :math:`F` as the SVD, computed without holding a second ``[N, D]`` float64 copy).
Gaspari-Cohn localization needs the dense form, which :class:`GaussianPrior` allows only for ``D <= 8192``: at the
demo's size (24 channels x 48 x 96 = 110,592 values per state) only the low-rank form is available.
"""

from __future__ import annotations

import argparse
import importlib.resources
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from appa_core.data.packing import int16_packing, write_zarr
from appa_core.data.reader import TimeSelection, open_wb2
from appa_core.grid import Grid
from appa_core.linalg import woodbury_capacitance, woodbury_solve
from appa_core.priors.gaussian import GaussianPrior, LowRankDiag
from appa_core.spec import StateSpec
from appa_core.state import dataset_to_tensor, normalize_layout, tensor_to_dataset

__all__ = [
    "CLIMATOLOGY_NAME",
    "Climatology",
    "load_climatology",
    "oi_prior",
    "persistence",
]

#: File name of the bundled climatology inside ``appa_workflows/assets/``.
CLIMATOLOGY_NAME = "climatology.zarr.zip"
_FORMAT = "appa-climatology"
_EPOCH = np.datetime64("1970-01-01T00", "ns")
_HOUR_NS = 3_600 * 10**9
_DAY_NS = 24 * _HOUR_NS


def _hour_of_day(times: np.ndarray, owner: str) -> np.ndarray:
    """Whole UTC hours ``[T]`` int64 of ``times``; refuses times that are not on the hour."""
    t = np.asarray(times).astype("datetime64[ns]").reshape(-1)
    if np.isnat(t).any():
        raise ValueError(f"{owner}: field 'times' contains NaT")
    ns = t.astype(np.int64) % _DAY_NS
    if np.any(ns % _HOUR_NS):
        bad = t[np.flatnonzero(ns % _HOUR_NS)[0]]
        raise ValueError(f"{owner}: field 'times' has value {bad}, which is not on the hour")
    return ns // _HOUR_NS


class Climatology:
    """Per-grid-point mean and std of each channel by hour of day (see the module docstring).

    Attributes:
        mean: ``[K, C, H, W]`` float32, physical units, for the hours ``hours`` ``[K]`` (int, UTC).
        std: ``[K, C, H, W]`` float32 (sample std, ``n - 1`` in the denominator).
        count: ``[K]`` number of training times per hour (the most finite samples of any point).
        grid, spec: layout of the states.
        metadata: provenance (source store, time range...), saved with the file.
    """

    def __init__(
        self,
        mean: np.ndarray | Tensor,
        std: np.ndarray | Tensor,
        hours: Sequence[int] | np.ndarray,
        grid: Grid,
        spec: StateSpec,
        count: Sequence[int] | np.ndarray | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        owner = "Climatology"
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.hours = np.asarray(hours, dtype=np.int64).reshape(-1)
        shape = (self.hours.size, spec.n_channels, *grid.shape)
        for field, value in (("mean", self.mean), ("std", self.std)):
            if value.shape != shape:
                raise ValueError(f"{owner}: field {field!r} has shape {value.shape}, expected {shape} [K, C, H, W]")
        if np.unique(self.hours).size != self.hours.size or np.any((self.hours < 0) | (self.hours > 23)):
            raise ValueError(f"{owner}: field 'hours' has value {self.hours.tolist()}; expected distinct hours 0..23")
        if np.any(self.std < 0):
            raise ValueError(f"{owner}: field 'std' has a negative value {float(self.std.min())}")
        self.grid, self.spec = grid, spec
        self.count = np.zeros(self.hours.size, np.int64) if count is None else np.asarray(count, np.int64)
        self.metadata = dict(metadata or {})

    def __repr__(self) -> str:
        return (
            f"Climatology(hours={self.hours.tolist()}, channels={self.spec.n_channels}, grid={self.grid.shape}, "
            f"count={self.count.tolist()})"
        )

    # ------------------------------------------------------------------ computing
    @classmethod
    def compute(
        cls,
        source: str | os.PathLike[str] | xr.Dataset,
        spec: StateSpec,
        time: TimeSelection = None,
        block: int = 64,
    ) -> Climatology:
        """Mean and std by hour of day over ``time`` of a WeatherBench2-layout store, streaming.

        Args:
            source: store path / URL (or a Dataset, possibly dask-backed).
            spec: channels.
            time: the training split (``slice`` or ``(start, end)``, inclusive).
            block: time steps read at once (memory ``block * C * H * W * 4`` bytes, plus float64 accumulators
                ``3 * K * C * H * W * 8`` bytes).

        Returns:
            The climatology, with ``metadata`` holding the source, the time range and the sample counts.
        """
        owner = "Climatology.compute"
        if not isinstance(block, int) or block < 1:
            raise ValueError(f"{owner}: field 'block' must be a positive integer, got {block!r}")
        if isinstance(source, xr.Dataset):
            ds = normalize_layout(source, owner=owner)
            if time is not None:
                ds = ds.sel(time=time if isinstance(time, slice) else slice(*time))
        else:
            ds = open_wb2(source, time=time, chunks={})
        if "time" not in ds.dims or ds.sizes["time"] == 0:
            raise ValueError(f"{owner}: the selection has no time step")
        times = np.asarray(ds["time"].values).astype("datetime64[ns]")
        hours_all = _hour_of_day(times, owner)
        hours = np.unique(hours_all)
        grid = Grid(lat=ds["latitude"].values, lon=ds["longitude"].values)
        shape = (hours.size, spec.n_channels, *grid.shape)
        shift = np.full(shape, np.nan)
        n = np.zeros(shape)
        s1 = np.zeros(shape)
        s2 = np.zeros(shape)
        for a in range(0, times.size, block):
            x, _, _ = dataset_to_tensor(ds.isel(time=slice(a, a + block)), spec, grid)
            xb = x.numpy().astype(np.float64)
            for k, hour in enumerate(hours):
                sel = xb[hours_all[a : a + block] == hour]
                if sel.shape[0] == 0:
                    continue
                fresh = np.isnan(shift[k])
                if fresh.any():  # first finite sample of each point
                    first = np.where(np.isfinite(sel), sel, np.nan)
                    idx = np.argmax(np.isfinite(first), axis=0)
                    cand = np.take_along_axis(first, idx[None], axis=0)[0]
                    shift[k] = np.where(fresh, cand, shift[k])
                d = sel - np.nan_to_num(shift[k])
                ok = np.isfinite(d)
                d = np.where(ok, d, 0.0)
                n[k] += ok.sum(0)
                s1[k] += d.sum(0)
                s2[k] += (d * d).sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.nan_to_num(shift) + s1 / n
            var = (s2 - s1 * s1 / n) / (n - 1)
        std = np.sqrt(np.clip(np.where(n > 1, var, 0.0), 0.0, None))
        counts = np.asarray([int((hours_all == h).sum()) for h in hours])
        meta = {
            "source": str(source) if not isinstance(source, xr.Dataset) else "<dataset>",
            "start": str(times[0]),
            "end": str(times[-1]),
            "steps": int(times.size),
            "count_per_hour": counts.tolist(),
            "std": "sample std (n - 1), per grid point and hour of day",
        }
        return cls(mean, std, hours, grid, spec, count=counts, metadata=meta)

    # ------------------------------------------------------------------ use
    def _index(self, times: np.ndarray, owner: str) -> np.ndarray:
        hours = _hour_of_day(times, owner)
        lookup = {int(h): i for i, h in enumerate(self.hours)}
        missing = [int(h) for h in hours if int(h) not in lookup]
        if missing:
            raise ValueError(
                f"{owner}: field 'times' has hour {missing[0]} UTC; the climatology has hours {self.hours.tolist()}"
            )
        return np.asarray([lookup[int(h)] for h in hours], dtype=np.int64)

    def forecast(self, times: Sequence[object] | np.ndarray) -> xr.Dataset:
        """The climatological mean at ``times`` ``[T]``: a WeatherBench2-layout Dataset (float32, no member dim)."""
        t = np.asarray(times).astype("datetime64[ns]").reshape(-1)
        idx = self._index(t, "Climatology.forecast")
        return tensor_to_dataset(self.mean[idx], self.spec, self.grid, t)

    def ensemble(self, times: Sequence[object] | np.ndarray, members: int, seed: int = 0) -> xr.Dataset:
        """A climatological ensemble at ``times``: ``mean + std * N(0, 1)``, independent per member, time and point.

        Returns a Dataset with dims ``member, time, (level,) latitude, longitude`` (float32).
        """
        if not isinstance(members, int) or members < 1:
            raise ValueError(f"Climatology.ensemble: field 'members' must be a positive integer, got {members!r}")
        t = np.asarray(times).astype("datetime64[ns]").reshape(-1)
        idx = self._index(t, "Climatology.ensemble")
        rng = np.random.default_rng(seed)
        eps = rng.standard_normal((members, *self.mean[idx].shape), dtype=np.float32)
        x = self.mean[idx][None] + self.std[idx][None] * eps
        return tensor_to_dataset(x, self.spec, self.grid, t, member_dim="member")

    # ------------------------------------------------------------------ I/O
    def to_dataset(self) -> xr.Dataset:
        """Variables ``<var>`` (mean) and ``<var>_std`` with dims ``hour, (level,) latitude, longitude``."""
        fake = _EPOCH + self.hours * np.timedelta64(1, "h")
        mean = tensor_to_dataset(self.mean, self.spec, self.grid, fake)
        std = tensor_to_dataset(self.std, self.spec, self.grid, fake, name_prefix="std_")
        std = std.rename({f"std_{v}": f"{v}_std" for v in self.spec.variables})
        ds = xr.merge([mean, std]).rename(time="hour").assign_coords(hour=("hour", self.hours, {"units": "h UTC"}))
        ds = ds.assign_coords(count=("hour", self.count))
        ds.attrs = {
            "format": _FORMAT,
            "title": "appa-core climatology: per-grid-point mean and std by hour of day",
            "spec": str(self.spec.to_dict()),
            **{k: str(v) for k, v in self.metadata.items()},
        }
        return ds

    @classmethod
    def from_dataset(cls, ds: xr.Dataset, spec: StateSpec | None = None) -> Climatology:
        """Inverse of :meth:`to_dataset` (``spec`` defaults to the one recorded in the attributes)."""
        owner = "Climatology.from_dataset"
        if "hour" not in ds.dims:
            raise ValueError(f"{owner}: the dataset has no 'hour' dimension; dims are {list(ds.dims)}")
        if spec is None:
            import ast

            spec = StateSpec.from_dict(ast.literal_eval(ds.attrs["spec"]))
        hours = np.asarray(ds["hour"].values, dtype=np.int64)
        fake = _EPOCH + hours * np.timedelta64(1, "h")
        base = ds.drop_vars("count", errors="ignore").rename(hour="time").assign_coords(time=fake)
        mean, _, grid = dataset_to_tensor(base[list(spec.variables)], spec)
        std_ds = base[[f"{v}_std" for v in spec.variables]].rename({f"{v}_std": v for v in spec.variables})
        std, _, _ = dataset_to_tensor(std_ds, spec)
        count = np.asarray(ds["count"].values) if "count" in ds.coords else None
        meta = {k: v for k, v in ds.attrs.items() if k not in ("format", "title", "spec")}
        return cls(mean.numpy(), std.numpy(), hours, grid, spec, count=count, metadata=meta)

    def save(self, path: str | os.PathLike[str], packed: bool = True) -> Path:
        """Write a zarr store (format v2): a ``*.zip`` path gives one zipped file, anything else a directory.

        ``packed``: int16 with per-variable ``scale_factor`` / ``add_offset`` (round-off at most half a step,
        ``(max - min) / 65532 / 2``: ~0.001 K, ~0.1 Pa, ~1 m^2 s^-2), as the bundled truth slice.
        """
        ds = self.to_dataset()
        encoding: dict[str, dict[str, Any]] = {}
        for name in ds.data_vars:
            enc: dict[str, Any] = {"chunks": ds[name].shape}
            if packed:
                enc.update(int16_packing(ds[name].values))
            encoding[str(name)] = enc
        return write_zarr(ds, path, encoding)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Climatology:
        """Read a climatology written by :meth:`save` (zipped or directory store)."""
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"Climatology.load: {str(p)!r} does not exist")
        import zarr.storage

        store: Any = zarr.storage.ZipStore(str(p), mode="r") if p.is_file() else str(p)
        ds = xr.open_zarr(store, consolidated=True, chunks=None)
        try:
            ds = ds.load()
        finally:
            ds.close()
        if ds.attrs.get("format") != _FORMAT:
            raise ValueError(
                f"Climatology.load: file {str(p)!r} has format {ds.attrs.get('format')!r}, expected {_FORMAT!r}"
            )
        return cls.from_dataset(ds)


def climatology_resource() -> Any:
    """The package resource of the bundled climatology (a ``Traversable``)."""
    return importlib.resources.files("appa_workflows") / "assets" / CLIMATOLOGY_NAME


def load_climatology() -> Climatology:
    """The bundled DEMO_SPEC climatology (nature-run training year, by hour of day, 48 x 96)."""
    ref = climatology_resource()
    if not ref.is_file():
        raise FileNotFoundError(
            f"load_climatology: the bundled asset {CLIMATOLOGY_NAME!r} is missing from appa_workflows/assets; "
            "regenerate it with `python -m appa_workflows.baselines data/naturerun_train.zarr`"
        )
    with importlib.resources.as_file(ref) as path:
        return Climatology.load(path)


# ---------------------------------------------------------------------------------------------- persistence
def persistence(state: xr.Dataset, times: Sequence[object] | np.ndarray) -> xr.Dataset:
    """Persistence: the last state of ``state`` (truth or an analysis, with or without ``member``) at ``times``.

    Args:
        state: a WeatherBench2-layout Dataset; if it has a ``time`` dim its last time is used. Variables without
            ``latitude``/``longitude`` (e.g. observation diagnostics) are dropped.
        times: ``[T]`` valid times of the forecast.

    Returns:
        Dataset with dims ``([member,] time, [level,] latitude, longitude)``, each time equal to that state.
    """
    owner = "persistence"
    if not isinstance(state, xr.Dataset):
        raise TypeError(f"{owner}: field 'state' must be an xarray.Dataset, got {type(state).__name__}")
    t = np.asarray(times).astype("datetime64[ns]").reshape(-1)
    if t.size == 0:
        raise ValueError(f"{owner}: field 'times' is empty")
    keep = [v for v in state.data_vars if {"latitude", "longitude"} <= set(state[v].dims)]
    if not keep:
        raise ValueError(f"{owner}: field 'state' has no gridded variable; variables are {list(state.data_vars)}")
    s = state[keep]
    if "time" in s.dims:
        s = s.isel(time=-1)
    s = s.drop_vars("time", errors="ignore")
    out = s.expand_dims(time=t)
    order = {v: [d for d in ("member", "time", "level", "latitude", "longitude") if d in out[v].dims] for v in keep}
    return xr.Dataset({v: out[v].transpose(*order[v], ...) for v in keep}, attrs=dict(state.attrs))


# ---------------------------------------------------------------------------------------------- OI
class _SharedSigmaGaussianPrior(GaussianPrior):
    """A low-rank :class:`GaussianPrior` whose Woodbury solve factors the ``r x r`` system once per noise level.

    The sampler calls the denoiser with the same ``sigma`` for every member; the base class forms
    :math:`I + F^\\top (D + \\sigma^2)^{-1} F` per member (``O(B D r^2)``); here it is formed once (``O(D r^2)``)
    and cached per ``sigma`` value, which makes the OI baseline ~``B`` times cheaper at ``D ~ 5e5``. Same numbers.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._kcache: dict[tuple[float, torch.dtype], Tensor] = {}

    def _solve_shifted(self, v: Tensor, sigma: Tensor) -> Tensor:
        if self._eig is not None or sigma.numel() == 0 or not bool((sigma == sigma.reshape(-1)[0]).all()):
            return super()._solve_shifted(v, sigma)
        f, dg = self._tensors(v.dtype, v.device)[:2]
        s2 = float(sigma.reshape(-1)[0]) ** 2
        dinv = 1.0 / (dg + s2)  # [D]
        key = (s2, v.dtype)
        if key not in self._kcache:
            if len(self._kcache) > 64:
                self._kcache.clear()
            self._kcache[key] = woodbury_capacitance(f, dinv)
        return woodbury_solve(v, f, dinv, self._kcache[key])


def _low_rank_cov(x: Tensor, rank: int, min_var: float) -> tuple[Tensor, LowRankDiag]:
    """Sample mean ``[D]`` and ``from_data``'s low-rank + diagonal covariance of ``x`` ``[N, D]`` (float32 ok)."""
    n = x.shape[0]
    mean = x.to(torch.float64).mean(0)
    d = x.shape[1]
    std = torch.empty(d, dtype=torch.float64)
    gram = torch.zeros(n, n, dtype=torch.float64)
    chunk = 1 << 16
    for a in range(0, d, chunk):  # standardized anomalies, column block by column block, in float64
        xs = x[:, a : a + chunk].to(torch.float64) - mean[a : a + chunk]
        sd = xs.std(0, correction=1).clamp_min(1e-12)
        std[a : a + chunk] = sd
        xs = xs / sd / math.sqrt(n - 1)
        gram += xs @ xs.T
    lam, u = torch.linalg.eigh(gram)
    u = u[:, torch.argsort(lam, descending=True)[:rank]]  # [N, r]
    f = torch.empty(d, rank, dtype=torch.float64)
    for a in range(0, d, chunk):
        xs = (x[:, a : a + chunk].to(torch.float64) - mean[a : a + chunk]) / std[a : a + chunk] / math.sqrt(n - 1)
        f[a : a + chunk] = xs.T @ u
    diag = (1.0 - (f**2).sum(-1)).clamp_min(min_var)
    return mean, LowRankDiag(f * std[:, None], diag * std**2)


def oi_prior(
    store: str | os.PathLike[str] | xr.Dataset,
    spec: StateSpec,
    window: int = 5,
    rank: int | None = 64,
    localization_km: float | None = None,
    time: TimeSelection = None,
    n_samples: int = 256,
    min_var: float = 1e-3,
    stride: int = 1,
    dtype: torch.dtype = torch.float64,
) -> GaussianPrior:
    """The climatological Gaussian prior of the optimal-interpolation baseline, from training windows.

    Args:
        store: training store (path / URL / Dataset) in the WeatherBench2 layout.
        spec: channels.
        window: ``T`` states per window (the prior's window; longer trajectories go through blankets).
        rank: principal components kept (low rank + diagonal remainder, see the module docstring); ``None`` for
            the dense sample correlation (only for ``D = T*C*H*W <= 8192``).
        localization_km: Gaspari-Cohn half-width (km) of a Schur-product localization; dense form only.
        time: the training split.
        n_samples: windows used, evenly spaced over the split (all of them if fewer).
        min_var: floor of the diagonal remainder in standardized units.
        stride: distance between candidate window starts (time steps).
        dtype: working dtype of the prior (and so of the sampler): float64 (exact oracle) or float32 (half the
            memory and time at ``D ~ 5e5``; the MMPS solve stays float64). The statistics are float64 either way.

    Returns:
        A ``GaussianPrior`` with ``window = T`` (a subclass whose low-rank solve is shared across members; same
        numbers as ``GaussianPrior.from_data``).
    """
    from appa_core.data.windows import TrajectoryWindows

    owner = "oi_prior"
    if localization_km is not None and rank is not None:
        raise ValueError(
            f"{owner}: field 'localization_km' has value {localization_km} but GaussianPrior localizes only the dense "
            "form (rank=None, D <= 8192); use rank=None on a small state, or no localization"
        )
    if not isinstance(n_samples, int) or n_samples < 2:
        raise ValueError(f"{owner}: field 'n_samples' must be an integer >= 2, got {n_samples!r}")
    windows = TrajectoryWindows(store, spec, length=window, stride=stride, time=time)
    pick = np.unique(np.linspace(0, len(windows) - 1, min(n_samples, len(windows))).round().astype(np.int64))
    if pick.size < 2:
        raise ValueError(f"{owner}: the split holds {len(windows)} window(s) of {window} states; need at least 2")
    x = torch.stack([windows[int(i)]["x"] for i in pick])  # [N, T, C, H, W] float32
    grid = windows.grid
    if rank is None:
        return GaussianPrior.from_data(
            x, grid, spec, localization=localization_km, timestep=windows.timestep, min_var=min_var, dtype=dtype
        )
    if not 1 <= rank <= x.shape[0]:
        raise ValueError(f"{owner}: field 'rank' has value {rank}; must be in [1, N={x.shape[0]}]")
    shape = x.shape[1:]
    mean, cov = _low_rank_cov(x.reshape(x.shape[0], -1), rank, min_var)
    del x
    return _SharedSigmaGaussianPrior(mean.reshape(shape), cov, grid, spec, timestep=windows.timestep, dtype=dtype)


# ---------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m appa_workflows.baselines STORE [--start D] [--end D] [--out PATH]``: (re)build the climatology."""
    from appa_core.data.truth import DEMO_SPEC

    parser = argparse.ArgumentParser(prog="python -m appa_workflows.baselines", description=main.__doc__)
    parser.add_argument("store", help="training store in the WeatherBench2 layout (the nature-run training year)")
    parser.add_argument("--start", default="2000-01-01", help="first training date (default 2000-01-01)")
    parser.add_argument("--end", default="2000-11-30T18", help="last training time (default 2000-11-30T18)")
    default_out = Path(__file__).resolve().parent / "assets" / CLIMATOLOGY_NAME
    parser.add_argument("--out", default=str(default_out), help=f"destination (default {default_out})")
    parser.add_argument("--float32", action="store_true", help="store float32 instead of int16-packed values")
    args = parser.parse_args(argv)
    clim = Climatology.compute(args.store, DEMO_SPEC, time=(args.start, args.end))
    path = clim.save(args.out, packed=not args.float32)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB): {clim}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
