"""Data layer: WeatherBench2 / ERA5 reader, normalization statistics, training windows, the bundled truth slice.

* :func:`open_wb2` -- lazy reader for WeatherBench2-layout zarr stores (local, zipped, ``gs://``...).
* :class:`NormStats`, :func:`compute_stats` -- area-weighted per-channel mean/std over the training split.
* :func:`time_features`, :class:`TrajectoryWindows`, :func:`split_by_date` -- training windows.
* :func:`load_truth_slice`, :func:`make_truth_slice` -- a few days of the held-out nature run bundled in the package.
* :data:`DEMO_SPEC` -- the state of the embedded default (demo) configuration.
"""

from __future__ import annotations

from appa_core.data.reader import WB2_ERA5, open_wb2, wb2_era5_url
from appa_core.data.stats import NormStats, compute_stats
from appa_core.data.synthetic import synthetic_wb2
from appa_core.data.truth import DEMO_SPEC, load_truth_slice, make_truth_slice, read_truth_slice
from appa_core.data.windows import TrajectoryWindows, split_by_date, time_features

__all__ = [
    "DEMO_SPEC",
    "WB2_ERA5",
    "NormStats",
    "TrajectoryWindows",
    "compute_stats",
    "load_truth_slice",
    "make_truth_slice",
    "open_wb2",
    "read_truth_slice",
    "split_by_date",
    "synthetic_wb2",
    "time_features",
    "wb2_era5_url",
]
