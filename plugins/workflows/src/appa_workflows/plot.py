"""``appa plot POSTERIOR``: maps of a posterior store, and the score-vs-lead plot of ``appa evaluate --plot``.

For each plotted channel (default: up to four of T2M, MSLP, T850, Z500, U10, or the store's first channels) one PNG
``map_<channel>.png`` at one time: the truth (when the store's run had one, or ``--truth`` gives one), the
posterior mean, mean - truth and the ensemble spread, on one colour scale for truth and mean, with coastlines,
the locations of the observations of that variable, titles and colour bars in the variable's units. For each
operator whose observations have locations (``obs_<name>_lat``/``_lon`` in the store, written by
:meth:`appa_core.sampler.Sampler.posterior`), one PNG ``departures_<name>.png``: the observation departures
``y - H(posterior mean)`` at the observations' locations over the whole window.

**Coastlines work offline**: they are the 0.5 contour of a land-sea mask (land fraction): the posterior's or the
truth's ``land_sea_mask`` when they carry one, else the one of the truth slice bundled with appa-core
(:func:`appa_core.data.load_truth_slice`, the nature run's 48 x 96 model orography), drawn in longitude/latitude
on any grid. Nothing is downloaded.

Everything is drawn with Matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

__all__ = [
    "DEFAULT_CHANNELS",
    "PlotError",
    "channels_of",
    "coastlines",
    "land_sea_mask",
    "main",
    "plot_departures",
    "plot_posterior",
    "plot_scores_by_lead",
    "scores_by_lead",
]

#: Channels plotted by default, in this order, when the store has them (at most ``--max-channels``).
DEFAULT_CHANNELS = (
    "2m_temperature",
    "mean_sea_level_pressure",
    "temperature@850",
    "geopotential@500",
    "10m_u_component_of_wind",
)
#: Operators with more observing sites than this (satellite footprints) are not marked on the maps (their
#: departures map shows them).
MAX_SITES = 2000
#: Maps are this wide and high in inches per panel (at ``--dpi``).
PANEL_SIZE = (4.6, 2.9)


class PlotError(ValueError):
    """A bad ``appa plot`` input (missing store, unknown channel or time); the message says which."""


# ============================================================================================ coastlines
def land_sea_mask(*sources: xr.Dataset | None) -> xr.DataArray:
    """The first ``land_sea_mask`` (land fraction 0..1 on ``latitude, longitude``) among ``sources``, else the one of
    the bundled truth slice (offline, 48 x 96)."""
    for ds in sources:
        if ds is not None and "land_sea_mask" in ds.data_vars:
            lsm = ds["land_sea_mask"]
            return lsm.isel(time=0) if "time" in lsm.dims else lsm
    from appa_core.data import load_truth_slice

    return load_truth_slice()["land_sea_mask"].load()


def coastlines(mask: xr.DataArray, level: float = 0.5) -> list[np.ndarray]:
    """Coastlines as closed paths: the ``level`` contour of a land fraction on a regular global grid.

    Args:
        mask: land fraction on ``latitude, longitude`` (degrees; any latitude order, longitudes in [0, 360)).
        level: contour level (0.5: half land).

    Returns:
        Closed paths ``[N, 2]`` of ``(longitude, latitude)`` in degrees (first point == last point). Longitudes are
        continued cyclically past 0 and 360 so that a coast crossing the meridian of the grid's first column is
        drawn; a path may therefore reach a little outside [0, 360) (clip the axes to the grid).
    """
    import contourpy

    lat = np.asarray(mask["latitude"].values, dtype=np.float64)
    lon = np.mod(np.asarray(mask["longitude"].values, dtype=np.float64), 360.0)
    z = np.asarray(mask.transpose("latitude", "longitude").values, dtype=np.float64)
    z = z[np.argsort(lat)][:, np.argsort(lon)]
    lat, lon = np.sort(lat), np.sort(lon)
    if lat.size < 2 or lon.size < 2:
        raise ValueError(f"coastlines: the mask needs at least 2 x 2 points, got {lat.size} x {lon.size}")
    # cyclic columns on both sides, then a frame below the level around everything: every contour closes
    z = np.concatenate([z[:, -2:], z, z[:, :2]], axis=1)
    lon = np.concatenate([lon[-2:] - 360.0, lon, lon[:2] + 360.0])
    low = min(float(np.nanmin(z)), level) - 1.0
    z = np.pad(np.nan_to_num(z, nan=low), 1, constant_values=low)
    dlat, dlon = lat[1] - lat[0], lon[1] - lon[0]
    lat = np.concatenate([[lat[0] - dlat], lat, [lat[-1] + dlat]])
    lon = np.concatenate([[lon[0] - dlon], lon, [lon[-1] + dlon]])
    lines = contourpy.contour_generator(lon, lat, z, line_type="Separate").lines(level)
    out = []
    for path in lines:
        path = np.asarray(path, dtype=np.float64)
        if len(path) >= 3 and not np.allclose(path[0], path[-1]):
            path = np.vstack([path, path[:1]])
        out.append(path)
    return out


def _draw_coasts(ax: Any, paths: list[np.ndarray], extent: tuple[float, float, float, float]) -> None:
    from matplotlib.collections import LineCollection

    ax.add_collection(LineCollection(paths, colors="k", linewidths=0.6, alpha=0.8))
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])


# ============================================================================================ channels
def channels_of(ds: xr.Dataset) -> list[str]:
    """Gridded channels of a store: ``variable`` or ``variable@level`` (hPa), in the store's order."""
    out = []
    for name, da in ds.data_vars.items():
        if str(name).startswith("obs_") or not {"latitude", "longitude"} <= set(da.dims) or name == "land_sea_mask":
            continue
        if name == "geopotential_at_surface":
            continue
        if "level" in da.dims:
            out.extend(f"{name}@{int(lev)}" for lev in da["level"].values)
        else:
            out.append(str(name))
    return out


def _field(ds: xr.Dataset, channel: str) -> xr.DataArray:
    name, _, level = channel.partition("@")
    da = ds[name]
    return da.sel(level=int(level)) if level else da


def _units(ds: xr.Dataset, channel: str) -> str:
    from appa_core.spec import UNITS

    name = channel.partition("@")[0]
    return str(ds[name].attrs.get("units") or UNITS.get(name, "")) if name in ds else UNITS.get(name, "")


def _label(channel: str, units: str) -> str:
    return f"{channel} [{units}]" if units else channel


def _pick_time(times: np.ndarray, time: str | int | None) -> int:
    if time is None:
        return len(times) // 2
    if isinstance(time, int) or (isinstance(time, str) and time.lstrip("-").isdigit()):
        i = int(time)
        if not -len(times) <= i < len(times):
            raise PlotError(
                f"appa plot: --time has value {time!r}; the store has {len(times)} times (0..{len(times) - 1})"
            )
        return i % len(times)
    try:
        t = np.datetime64(str(time).rstrip("Z"), "ns")
    except ValueError:
        raise PlotError(
            f"appa plot: --time has value {time!r}; give an index or an ISO time such as 2000-01-30T12"
        ) from None
    hits = np.flatnonzero(times.astype("datetime64[ns]") == t)
    if not hits.size:
        span = f"{str(times[0])[:16]}..{str(times[-1])[:16]}"
        raise PlotError(f"appa plot: --time has value {time!r}, which is not a time of the store ({span})")
    return int(hits[0])


# ============================================================================================ maps
def _obs_points(post: xr.Dataset) -> dict[str, dict[str, Any]]:
    """Per operator key: ``lat``, ``lon``, ``time`` (or None), ``innovation``, ``std`` and ``variable`` ``[M]`` each
    (the observed variable or channel of each observation, ``""`` when unknown)."""
    names = json.loads(post.attrs.get("appa_operators", "[]"))
    out = {}
    for key in names:
        if f"obs_{key}_lat" not in post or f"obs_{key}_innovation" not in post:
            continue
        innov = post[f"obs_{key}_innovation"]
        out[key] = {
            "lat": np.asarray(post[f"obs_{key}_lat"].values, dtype=np.float64),
            "lon": np.asarray(post[f"obs_{key}_lon"].values, dtype=np.float64),
            "time": np.asarray(post[f"obs_{key}_time"].values) if f"obs_{key}_time" in post else None,
            "innovation": np.asarray(innov.values, dtype=np.float64),
            "std": np.asarray(post[f"obs_{key}_std"].values, dtype=np.float64),
            "variable": np.asarray(post[f"obs_{key}_variable"].values).astype(str)
            if f"obs_{key}_variable" in post
            else np.full(innov.size, str(innov.attrs.get("variable", ""))),
            "units": str(innov.attrs.get("units", "")),
        }
    return out


def _extent(da: xr.DataArray) -> tuple[float, float, float, float]:
    lon = np.sort(np.asarray(da["longitude"].values, dtype=np.float64))
    dlon = float(lon[1] - lon[0]) if lon.size > 1 else 360.0
    return float(lon[0] - dlon / 2), float(lon[-1] + dlon / 2), -90.0, 90.0


def plot_posterior(
    posterior: xr.Dataset,
    out: str | Path,
    *,
    truth: xr.Dataset | None = None,
    channels: Sequence[str] | None = None,
    time: str | int | None = None,
    max_channels: int = 4,
    departures: bool = True,
    dpi: int = 100,
) -> list[Path]:
    """Write the maps of a posterior to ``out`` (created) and return the PNG paths.

    Args:
        posterior: a :meth:`~appa_core.sampler.Sampler.posterior` result or store (``member, time, (level,)
            latitude, longitude`` in physical units, optionally with ``obs_*`` diagnostics).
        out: output folder.
        truth: the truth (WeatherBench2 layout, physical units) on the posterior's grid and times, or ``None``
            (no truth or error panels).
        channels: channels to map (``"2m_temperature"``, ``"temperature@850"``); default: the first
            ``max_channels`` of :data:`DEFAULT_CHANNELS` the store has, else its first channels.
        time: index or ISO time of the mapped state (default: the middle one).
        departures: also write ``departures_<operator>.png`` for every operator with located observations.
        dpi: resolution; a map of ``n`` panels is ``n * 4.6 x 2.9`` inches.

    Raises:
        PlotError: an unknown channel or time, or a store without members.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if "member" not in posterior.dims:
        raise PlotError(
            f"appa plot: the store has no 'member' dimension (dims {dict(posterior.sizes)}); not a posterior"
        )
    available = channels_of(posterior)
    if channels:
        unknown = [c for c in channels if c not in available]
        if unknown:
            raise PlotError(f"appa plot: --channels has value {unknown[0]!r}; the store has {', '.join(available)}")
        chosen = list(channels)
    else:
        chosen = [c for c in DEFAULT_CHANNELS if c in available][:max_channels] or available[:max_channels]
    times = np.asarray(posterior["time"].values)
    it = _pick_time(times, time)
    t_sel = times[it]
    if truth is not None:
        missing = [c.partition("@")[0] for c in chosen if c.partition("@")[0] not in truth.data_vars]
        has_time = "time" not in truth.dims or np.isin(t_sel, truth["time"].values)
        truth = None if (missing or not has_time) else truth
    mask = land_sea_mask(posterior, truth)
    coasts = coastlines(mask)
    points = _obs_points(posterior)
    paths = []
    for channel in chosen:
        field = _field(posterior, channel).isel(time=it)
        mean, spread = field.mean("member"), field.std("member", ddof=1)
        units = _units(posterior, channel)
        panels: list[tuple[xr.DataArray, str, str, float, float]] = []
        lo, hi = float(mean.min()), float(mean.max())
        if truth is not None:
            tr = _field(truth, channel)
            tr = tr.sel(time=t_sel) if "time" in tr.dims else tr
            tr = tr.sel(latitude=mean["latitude"], longitude=mean["longitude"], method="nearest")
            lo, hi = min(lo, float(tr.min())), max(hi, float(tr.max()))
            panels.append((tr, "truth", "viridis", lo, hi))
        panels.append((mean, "posterior mean", "viridis", lo, hi))
        if truth is not None:
            err = mean - tr.values
            e = float(np.nanmax(np.abs(err))) or 1.0
            panels.append((err, "mean - truth", "RdBu_r", -e, e))
        panels.append((spread, "posterior spread", "magma", 0.0, float(spread.max()) or 1.0))
        fig, axes = plt.subplots(
            1, len(panels), figsize=(PANEL_SIZE[0] * len(panels), PANEL_SIZE[1]), constrained_layout=True, squeeze=False
        )
        extent = _extent(mean)
        variable = channel.partition("@")[0]
        located = []  # observing sites of this variable, per operator with at most MAX_SITES of them (stations)
        for p in points.values():
            keep = np.char.partition(p["variable"], "@")[:, 0] == variable
            sites = np.unique(np.round(np.stack([p["lon"][keep], p["lat"][keep]], axis=1), 3), axis=0)
            if 0 < len(sites) <= MAX_SITES:
                located.append((sites[:, 0], sites[:, 1]))
        for ax, (da, title, cmap, vmin, vmax) in zip(axes[0], panels, strict=True):
            im = ax.pcolormesh(
                da["longitude"], da["latitude"], da.transpose("latitude", "longitude"), cmap=cmap, vmin=vmin,
                vmax=vmax, shading="auto",
            )  # fmt: skip
            _draw_coasts(ax, coasts, extent)
            for x, y in located:
                ax.scatter(x, y, s=5, marker="o", facecolors="none", edgecolors="k", linewidths=0.4)
            ax.set_title(f"{channel}: {title}", fontsize=9)
            ax.set_xlabel("longitude [°E]", fontsize=8)
            ax.tick_params(labelsize=7)
            cb = fig.colorbar(im, ax=ax, shrink=0.85)
            cb.set_label(units, fontsize=8)
            cb.ax.tick_params(labelsize=7)
        axes[0][0].set_ylabel("latitude [°N]", fontsize=8)
        members = posterior.sizes["member"]
        markers = f"; o: {sum(x.size for x, _ in located):,} observing sites of {variable}" if located else ""
        fig.suptitle(f"{_label(channel, units)} at {str(t_sel)[:16]} UTC, {members} members{markers}", fontsize=10)
        path = out / f"map_{channel.replace('@', '')}.png"
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        paths.append(path)
    if departures:
        paths.extend(plot_departures(posterior, out, coasts=coasts, dpi=dpi))
    return paths


def plot_departures(
    posterior: xr.Dataset, out: str | Path, *, coasts: list[np.ndarray] | None = None, dpi: int = 100
) -> list[Path]:
    """One ``departures_<operator>.png`` per operator with located observations: ``y - H(posterior mean)`` at each
    observation (all window times), one panel per observed variable (at most 4, the most observed) in that
    variable's units, on a symmetric colour scale; titles give the count and the normalised RMS
    ``sqrt(mean((y - H(mean))^2 / std^2))``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from appa_core.spec import UNITS

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    coasts = coastlines(land_sea_mask(posterior)) if coasts is None else coasts
    first = next(iter(channels_of(posterior)), None)
    extent = _extent(_field(posterior, first)) if first else (0.0, 360.0, -90.0, 90.0)
    paths = []
    for key, p in _obs_points(posterior).items():
        if not p["innovation"].size:
            continue
        names, counts = np.unique(p["variable"], return_counts=True)
        groups = [str(n) for n in names[np.argsort(-counts, kind="stable")][:4]]
        fig, axes = plt.subplots(
            len(groups), 1, figsize=(2 * PANEL_SIZE[0], 1.5 * PANEL_SIZE[1] * len(groups)), constrained_layout=True,
            squeeze=False,
        )  # fmt: skip
        for ax, group in zip(axes[:, 0], groups, strict=True):
            keep = p["variable"] == group
            d, lon, lat = p["innovation"][keep], p["lon"][keep], p["lat"][keep]
            e = float(np.nanpercentile(np.abs(d), 98)) or 1.0
            order = np.argsort(np.abs(d))  # largest departures drawn last, on top
            sc = ax.scatter(lon[order], lat[order], c=d[order], s=9, cmap="RdBu_r", vmin=-e, vmax=e, linewidths=0)
            _draw_coasts(ax, coasts, extent)
            rms = float(np.sqrt(np.nanmean((d / p["std"][keep]) ** 2)))
            what = group or "observed quantity"
            ax.set_title(
                f"{key}: {what}, departures y - H(posterior mean), {d.size:,} observations, normalised RMS {rms:.2g}",
                fontsize=9,
            )
            ax.set_xlabel("longitude [°E]", fontsize=8)
            ax.set_ylabel("latitude [°N]", fontsize=8)
            units = (p["units"] if len(groups) == 1 else "") or UNITS.get(group.partition("@")[0], "")
            cb = fig.colorbar(sc, ax=ax, shrink=0.85)
            cb.set_label(f"y - H(mean) [{units}]" if units else "y - H(mean)", fontsize=8)
        path = out / f"departures_{key}.png"
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        paths.append(path)
    return paths


# ============================================================================================ scores by lead
def scores_by_lead(posterior: xr.Dataset, truth: xr.Dataset) -> pd.DataFrame:
    """RMSE of the ensemble mean, fair CRPS and spread per channel and lead time.

    The lead time is the store's ``lead_time`` coordinate (forecasts), else the time since its first state.

    Returns:
        A table indexed by ``(variable, lead_hours)`` with columns ``rmse``, ``crps`` and ``spread`` (the variable's
        units; area-weighted over the globe).
    """
    from appa_core.metrics import crps, ensemble_mean_rmse, spread
    from appa_core.sampler import split_diagnostics

    states, _ = split_diagnostics(posterior)
    states = states[[v for v in states.data_vars if v in truth.data_vars]]
    times = np.asarray(states["time"].values).astype("datetime64[ns]")
    if "lead_time" in states.coords:
        lead = np.asarray(states["lead_time"].values).astype("timedelta64[ns]")
    else:
        lead = times - times[0]
    hours = lead / np.timedelta64(1, "h")
    cols = {"rmse": ensemble_mean_rmse(states, truth)}
    if states.sizes.get("member", 1) > 1:
        cols |= {"crps": crps(states, truth), "spread": spread(states)}
    rows = []
    for col, ds in cols.items():
        for name, da in ds.data_vars.items():
            levels = da["level"].values if "level" in da.dims else [None]
            for lev in levels:
                sel = da if lev is None else da.sel(level=lev)
                channel = str(name) if lev is None else f"{name}@{int(lev)}"
                t_index = {t: i for i, t in enumerate(times)}
                for t, v in zip(np.asarray(sel["time"].values).astype("datetime64[ns]"), sel.values, strict=True):
                    rows.append((channel, float(hours[t_index[t]]), col, float(v)))
    table = pd.DataFrame(rows, columns=["variable", "lead_hours", "score", "value"])
    table = table.pivot_table(index=["variable", "lead_hours"], columns="score", values="value")
    table.columns.name = None
    return table


def plot_scores_by_lead(
    table: pd.DataFrame, path: str | Path, *, units: dict[str, str] | None = None, dpi: int = 100
) -> Path:
    """Score-vs-lead plot of :func:`scores_by_lead`: one panel per channel, RMSE (solid), spread (dashed) and
    CRPS (dotted) against the lead time in hours, the y axis in the channel's units."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from appa_core.spec import UNITS

    channels = list(dict.fromkeys(table.index.get_level_values("variable")))
    if not channels:
        raise PlotError("appa evaluate: no scores to plot")
    ncol = min(4, len(channels))
    nrow = -(-len(channels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 2.6 * nrow), constrained_layout=True, squeeze=False)
    for ax, channel in zip(axes.flat, channels, strict=False):
        rows = table.loc[channel]
        lead = rows.index.to_numpy(dtype=np.float64)
        for col, style in (("rmse", "-o"), ("spread", "--s"), ("crps", ":^")):
            if col in rows:
                ax.plot(lead, rows[col].to_numpy(), style, ms=3, label=col.upper() if col != "spread" else "spread")
        unit = (units or {}).get(channel) or UNITS.get(channel.partition("@")[0], "")
        ax.set_title(channel, fontsize=9)
        ax.set_xlabel("lead time [h]", fontsize=8)
        ax.set_ylabel(f"score [{unit}]" if unit else "score", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(channels) :]:
        ax.set_visible(False)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("ensemble-mean RMSE, spread and CRPS by lead time (area-weighted)", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


# ============================================================================================ I/O and CLI
def open_store(path: str, what: str) -> xr.Dataset:
    """A zarr store (``"demo"``: the bundled truth slice), refusing a missing or incomplete one with one line."""
    if what == "truth" and path == "demo":
        from appa_core.data import load_truth_slice

        return load_truth_slice()
    from appa_workflows.evaluate import _open_complete

    try:
        return _open_complete(path, what)
    except (OSError, ValueError) as exc:
        raise PlotError(f"appa plot: {str(exc).splitlines()[0]}") from exc


def truth_of(posterior: xr.Dataset) -> str | None:
    """The truth a posterior written by ``appa assimilate`` was run with, or ``None``: its ``appa_truth`` attribute
    (``"demo"`` or the store's absolute path), else its config's ``[truth] path`` when that is ``"demo"`` or an
    absolute path (a relative one was relative to the config file, unknown here)."""
    recorded = posterior.attrs.get("appa_truth")
    if isinstance(recorded, str) and (recorded == "demo" or Path(recorded).exists()):
        return recorded
    try:
        raw = json.loads(posterior.attrs.get("appa_config", "{}"))
    except ValueError:
        return None
    truth = raw.get("truth") if isinstance(raw, dict) else None
    truth = truth.get("path") if isinstance(truth, dict) else truth
    if truth == "demo" or (isinstance(truth, str) and Path(truth).is_absolute() and Path(truth).exists()):
        return truth
    return None


def build_parser() -> argparse.ArgumentParser:
    """The ``appa plot`` argument parser."""
    from appa_workflows._cli import Parser, positive_int

    parser = Parser(
        prog="appa plot",
        description="Maps of a posterior zarr store (written by appa assimilate or appa demo): truth when known, "
        "posterior mean, mean - truth, spread, with coastlines, observation locations and observation departures.",
    )
    parser.add_argument("posterior", help="posterior zarr store (with a 'member' dimension)")
    parser.add_argument(
        "--truth",
        help="truth zarr store in the WeatherBench2 layout, or 'demo' (the bundled truth slice); "
        "default: the truth the run's config named, if any",
    )
    parser.add_argument("--out", help="output folder (default: the folder holding the store)")
    parser.add_argument("--channels", help="comma-separated channels, e.g. 2m_temperature,temperature@850")
    parser.add_argument("--time", help="index or ISO time of the mapped state (default: the middle state)")
    parser.add_argument("--max-channels", type=positive_int, default=4, help="channels mapped by default")
    parser.add_argument("--no-departures", action="store_true", help="skip the observation-departure maps")
    parser.add_argument("--dpi", type=positive_int, default=100, help="resolution of the PNGs")
    return parser


def run_plot(
    posterior: str,
    *,
    truth: str | None = None,
    out: str | None = None,
    channels: Sequence[str] | None = None,
    time: str | None = None,
    max_channels: int = 4,
    departures: bool = True,
    dpi: int = 100,
) -> list[Path]:
    """``appa plot`` from Python: open the stores, write the PNGs, return their paths (see :func:`plot_posterior`)."""
    post = open_store(posterior, "posterior")
    truth = truth if truth is not None else truth_of(post)
    truth_ds = open_store(truth, "truth") if truth is not None else None
    folder = Path(out) if out is not None else Path(posterior).resolve().parent
    return plot_posterior(
        post, folder, truth=truth_ds, channels=channels, time=time, max_channels=max_channels,
        departures=departures, dpi=dpi,
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """``appa plot POSTERIOR [--truth STORE|demo] [--out DIR] [--channels ...] [--time T]``."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        paths = run_plot(
            args.posterior,
            truth=args.truth,
            out=args.out,
            channels=[c.strip() for c in args.channels.split(",") if c.strip()] if args.channels else None,
            time=args.time,
            max_channels=args.max_channels,
            departures=not args.no_departures,
            dpi=args.dpi,
        )
    except (PlotError, OSError, KeyError) as exc:
        print(str(exc).splitlines()[0] if isinstance(exc, PlotError) else f"appa plot: {exc}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
