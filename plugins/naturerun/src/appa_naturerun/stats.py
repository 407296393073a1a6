"""Physical plausibility summary of a nature-run store (area-weighted global statistics)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import xarray as xr


def _wmean(da: xr.DataArray) -> float:
    w = np.cos(np.deg2rad(da["latitude"].astype(np.float64)))
    return float(da.astype(np.float64).weighted(w).mean(("latitude", "longitude")).mean())


def plausibility(ds: xr.Dataset) -> dict[str, float]:
    """Area-weighted (cos latitude) global means over all times, and extrema, of a few key quantities."""
    t850 = ds["temperature"].sel(level=850)
    t250 = ds["temperature"].sel(level=250)
    u250 = ds["u_component_of_wind"].sel(level=250)
    q = ds["specific_humidity"]
    out = {
        "n_times": int(ds.sizes["time"]),
        "first_time": str(ds["time"].values[0])[:16],
        "last_time": str(ds["time"].values[-1])[:16],
        "T850_mean_K": _wmean(t850),
        "T850_min_K": float(t850.min()),
        "T850_max_K": float(t850.max()),
        "T250_mean_K": _wmean(t250),
        "T250_min_K": float(t250.min()),
        "T250_max_K": float(t250.max()),
        "u250_max_abs_ms": float(abs(u250).max()),
        "u250_zonal_time_mean_max_ms": float(u250.mean(("time", "longitude")).max()),
        "sp_mean_hPa": _wmean(ds["surface_pressure"]) / 100,
        "sp_min_hPa": float(ds["surface_pressure"].min()) / 100,
        "sp_max_hPa": float(ds["surface_pressure"].max()) / 100,
        "mslp_mean_hPa": _wmean(ds["mean_sea_level_pressure"]) / 100,
        "mslp_min_hPa": float(ds["mean_sea_level_pressure"].min()) / 100,
        "mslp_max_hPa": float(ds["mean_sea_level_pressure"].max()) / 100,
        "t2m_mean_K": _wmean(ds["2m_temperature"]),
        "z500_mean_m": _wmean(ds["geopotential"].sel(level=500)) / 9.80665,
        "q_min_gkg": float(q.min()) * 1e3,
        "q1000_mean_gkg": _wmean(q.sel(level=1000)) * 1e3 if 1000 in q["level"] else float("nan"),
        "q850_mean_gkg": _wmean(q.sel(level=850)) * 1e3,
        "q_max_gkg": float(q.max()) * 1e3,
    }
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    for path in argv:
        with xr.open_zarr(Path(path), consolidated=True, chunks=None) as ds:
            print(json.dumps({"store": str(path), **plausibility(ds)}, indent=1))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
