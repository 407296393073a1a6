r"""The bundled truth slice: a few days of the held-out nature run, shipped inside ``appa-core``.

``appa_core/assets/truth_slice.zarr.zip`` is a zipped zarr (format v2, readable by zarr 2 and 3) holding
:data:`~appa_core.data.DEMO_SPEC`'s variables (+ ``land_sea_mask`` and ``geopotential_at_surface`` where the source
has them), 6-hourly, in the WeatherBench2 layout. Values are **packed to int16** with per-variable CF
``scale_factor`` / ``add_offset`` (decoded transparently by xarray):

.. math:: x \approx \mathrm{add\_offset} + \mathrm{scale\_factor}\cdot q,\quad q\in[-32766, 32766],\quad
    \mathrm{scale\_factor} = \frac{\max x - \min x}{65532},

so the round-off is at most ``scale_factor / 2`` per variable (about 0.001 K for temperature, 0.1 Pa for MSLP,
1 m^2 s^-2 for geopotential). Plain float16 would overflow: MSLP (~1e5 Pa) and geopotential at 250 hPa
(~1e5 m^2 s^-2) exceed float16's maximum of 65504. NaNs (if any) are stored as the fill value -32768.

Regenerate with (from the repository root)::

    python -m appa_core.data data/naturerun_heldout.zarr --days 4
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
from collections.abc import Sequence
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from appa_core.data.packing import int16_packing, write_zarr
from appa_core.data.reader import open_wb2
from appa_core.spec import StateSpec
from appa_core.state import _level_indices, _select_channels, normalize_layout

__all__ = [
    "DEMO_SPEC",
    "TRUTH_SLICE_NAME",
    "load_truth_slice",
    "make_truth_slice",
    "read_truth_slice",
    "truth_slice_resource",
]

#: State of the embedded default (demo) configuration: 4 surface variables + 5 atmospheric variables on 4 levels
#: (24 channels).
DEMO_SPEC = StateSpec(
    surface=("2m_temperature", "10m_u_component_of_wind", "10m_v_component_of_wind", "mean_sea_level_pressure"),
    atmospheric=("temperature", "u_component_of_wind", "v_component_of_wind", "specific_humidity", "geopotential"),
    levels=(250, 500, 700, 850),
)

#: File name of the bundled truth slice inside ``appa_core/assets/``.
TRUTH_SLICE_NAME = "truth_slice.zarr.zip"
_STATICS = ("land_sea_mask", "geopotential_at_surface")


def truth_slice_resource() -> Traversable:
    """The package resource of the bundled truth slice (may not exist in a source checkout without assets)."""
    return importlib.resources.files("appa_core") / "assets" / TRUTH_SLICE_NAME


def read_truth_slice(path: str | os.PathLike[str]) -> xr.Dataset:
    """Read a truth slice written by :func:`make_truth_slice` fully into memory, decoded to float32."""
    ds = open_wb2(path, chunks=None)
    try:
        ds = ds.load()
    finally:
        ds.close()
    out = ds.astype({name: np.float32 for name in ds.data_vars})
    for var in out.variables.values():
        var.encoding = {}
    return out


def load_truth_slice() -> xr.Dataset:
    """The bundled truth slice as an in-memory float32 Dataset in the WeatherBench2 layout.

    Dims ``time`` (6-hourly), ``level`` (hPa), ``latitude`` (descending), ``longitude`` ([0, 360)); provenance in
    ``attrs`` (``source``, ``seed``, ``start``, ``days``, ``spec``).
    """
    resource = truth_slice_resource()
    if not resource.is_file():
        raise FileNotFoundError(
            f"load_truth_slice: the bundled asset {TRUTH_SLICE_NAME!r} is missing from appa_core/assets; regenerate "
            "it with `python -m appa_core.data data/naturerun_heldout.zarr --days 4`"
        )
    with importlib.resources.as_file(resource) as path:
        return read_truth_slice(path)


def make_truth_slice(
    src_store: str | os.PathLike[str] | xr.Dataset,
    out: str | os.PathLike[str],
    start: object | None,
    days: float,
    spec: StateSpec | None = None,
    *,
    statics: Sequence[str] = _STATICS,
    attrs: dict[str, Any] | None = None,
) -> Path:
    """Cut ``days`` days from ``start`` out of a WeatherBench2-layout store and write a small packed zarr.

    Args:
        src_store: source store path / URL (or Dataset), e.g. the held-out nature run.
        out: destination; a ``*.zip`` path gives one zipped store (what ``appa_core/assets`` ships), anything else
            a directory store. Overwritten if present.
        start: first time (anything ``np.datetime64`` accepts); ``None`` takes the store's first time.
        days: length; times in ``[start, start + days)`` are kept.
        spec: variables/levels (default :data:`~appa_core.data.DEMO_SPEC`).
        statics: static fields copied when the source has them.
        attrs: extra global attributes (provenance: seed, split...).

    Returns:
        The path written. Values are int16-packed (see the module docstring).
    """
    spec = spec or DEMO_SPEC
    owner = "make_truth_slice"
    if days <= 0:
        raise ValueError(f"{owner}: field 'days' must be positive, got {days}")
    if isinstance(src_store, xr.Dataset):
        probe = normalize_layout(src_store, owner=owner)
    else:
        probe = open_wb2(src_store, chunks=None)
    _select_channels(probe, spec, owner)  # clear errors for missing variables / levels
    present = [s for s in statics if s in probe.data_vars and s not in spec.variables]
    t_all = np.asarray(probe["time"].values).astype("datetime64[ns]")
    t0 = t_all[0] if start is None else np.datetime64(start, "ns")  # type: ignore[call-overload]
    t1 = t0 + np.timedelta64(round(days * 86400), "s") - np.timedelta64(1, "ns")
    ds = probe[[*spec.variables, *present]].sel(time=slice(t0, t1))
    if ds.sizes.get("time", 0) == 0:
        raise ValueError(f"{owner}: no time step in [{t0}, {t1}]; the store covers {t_all[0]}..{t_all[-1]}")
    if spec.levels:
        available = np.asarray(ds["level"].values, dtype=np.float64)
        ds = ds.isel(level=_level_indices(available, spec.levels, spec.atmospheric[0], owner))
    ds = ds.load()
    order = {v: [d for d in ("time", "level", "latitude", "longitude") if d in ds[v].dims] for v in ds.data_vars}
    ds = xr.Dataset({v: ds[v].transpose(*order[v]).astype(np.float32) for v in ds.data_vars}, attrs={})
    if "level" in ds.coords:
        ds = ds.assign_coords(level=("level", np.rint(ds["level"].values).astype(np.int64), {"units": "hPa"}))
    ds.attrs = {
        "title": "appa-core bundled truth slice",
        "source": str(src_store) if not isinstance(src_store, xr.Dataset) else "<dataset>",
        "start": str(ds["time"].values[0]),
        "days": float(days),
        "timestep_hours": float(np.diff(ds["time"].values).mean() / np.timedelta64(1, "h"))
        if ds.sizes["time"] > 1
        else 0.0,
        "packing": "int16 with per-variable scale_factor/add_offset; error <= scale_factor/2",
        "spec": str(spec.to_dict()),
        **{k: v for k, v in (getattr(probe, "attrs", {}) or {}).items() if k in ("seed", "model", "split")},
        **(attrs or {}),
    }
    encoding = {v: {**int16_packing(ds[v].values), "chunks": ds[v].shape} for v in ds.data_vars}
    return write_zarr(ds, out, encoding)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m appa_core.data SRC [--out PATH] [--start DATE] [--days N]``."""
    parser = argparse.ArgumentParser(prog="python -m appa_core.data", description=make_truth_slice.__doc__)
    parser.add_argument("src", help="source WeatherBench2-layout store (the held-out nature run)")
    default_out = Path(__file__).resolve().parents[1] / "assets" / TRUTH_SLICE_NAME
    parser.add_argument("--out", default=str(default_out), help=f"destination (default {default_out})")
    parser.add_argument("--start", default=None, help="first time (default: the store's first time + 28 days)")
    parser.add_argument("--days", type=float, default=4.0)
    args = parser.parse_args(argv)
    start = args.start
    if start is None:
        times = np.asarray(open_wb2(args.src, chunks=None)["time"].values).astype("datetime64[ns]")
        start = times[0] + np.timedelta64(28, "D")
        if start + np.timedelta64(int(args.days * 86400), "s") > times[-1]:
            start = times[0]
    path = make_truth_slice(args.src, args.out, start, args.days)
    ds = read_truth_slice(path)
    size_mb = path.stat().st_size / 1e6
    print(f"wrote {path} ({size_mb:.2f} MB): {dict(ds.sizes)}, start {ds.attrs['start']}, {list(ds.data_vars)}")


if __name__ == "__main__":
    main()
