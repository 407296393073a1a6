"""Regenerate ``stations.csv`` (used by ``forecast.toml``): synthetic synop reports from the bundled truth slice.

    python docs/examples/make_stations_csv.py

40 stations (area-uniform random locations, seed 0) report 2 m temperature (1 K error) and mean sea-level pressure
(100 Pa error) at 00, 03 and 06 UTC on 2000-01-31; values are the truth interpolated to the station (bilinear in
space, linear in time) plus Gaussian noise. Station elevations are the model's surface height there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from appa_core.data import DEMO_SPEC, load_truth_slice
from appa_core.plugins import get_registry
from appa_core.state import dataset_to_tensor
from appa_op_stations import write_station_csv

G = 9.80665


def main() -> None:
    truth = load_truth_slice()
    times = np.array(["2000-01-31T00:00", "2000-01-31T06:00"], dtype="datetime64[ns]")
    x, _, grid = dataset_to_tensor(truth.sel(time=times), DEMO_SPEC)
    phis = truth["geopotential_at_surface"]
    rng = np.random.default_rng(0)
    n = 40
    lat = np.round(np.rad2deg(np.arcsin(rng.uniform(-0.95, 0.95, n))), 2)
    lon = np.round(rng.uniform(0.0, 360.0, n), 2)
    report = np.array(["2000-01-31T00:00", "2000-01-31T03:00", "2000-01-31T06:00"], dtype="datetime64[ns]")
    station_cls = get_registry().operator("station")
    elevation = np.round(phis.interp(latitude=("s", lat), longitude=("s", lon)).values / G, 1)
    ops = []
    for variable, error in (("2m_temperature", 1.0), ("mean_sea_level_pressure", 100.0)):
        op = station_cls(
            variable=variable,
            lat=np.tile(lat, report.size),
            lon=np.tile(lon, report.size),
            time=np.repeat(report, n),
            value=np.zeros(n * report.size),
            error=error,
            elevation=np.tile(elevation, report.size),
            surface_geopotential=phis,
            station_id=np.tile([f"ST{i:03d}" for i in range(n)], report.size),
        )
        ops.append(op.simulate(x, grid, DEMO_SPEC, times, generator=torch.Generator().manual_seed(len(ops))))
    out = Path(__file__).with_name("stations.csv")
    tables = []
    for op in ops:
        write_station_csv(out, op)
        tables.append(pd.read_csv(out))
    df = pd.concat(tables).round({"lat": 2, "lon": 2, "elevation": 1, "value": 2})
    df.to_csv(out, index=False)
    print(f"wrote {out}: {sum(op.size for op in ops)} observations")


if __name__ == "__main__":
    main()
