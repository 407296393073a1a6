"""The first example of docs/operators/stations.md runs as written and gives the truth's values at the stations."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

DOC = Path(__file__).resolve().parents[3] / "docs" / "operators" / "stations.md"


def test_stations_doc_example_runs_and_interpolates_the_truth() -> None:
    text = DOC.read_text()
    block = re.search(r"## Examples\n.*?```python\n(.*?)```", text, re.S).group(1)
    ns: dict = {}
    exec(compile(block, str(DOC), "exec"), ns)
    y = ns["y_pred"]
    assert tuple(y.shape) == (1, 3)
    # plausible values in the state's units: 2-m temperature (K), sea-level pressure (Pa), 500-hPa temperature (K)
    t2m, mslp, t500 = (float(v) for v in y[0])
    assert 220.0 < t2m < 320.0 and 95_000.0 < mslp < 106_000.0 and 200.0 < t500 < 280.0
    # the 500-hPa temperature is the truth interpolated at (40.5 N, 80.2 W): within the range of the 4 grid points
    truth, times = ns["truth"], ns["times"]
    box = truth["temperature"].sel(level=500, time=times[2]).sel(latitude=slice(45, 36), longitude=slice(275, 283))
    assert float(box.min()) - 1e-3 <= t500 <= float(box.max()) + 1e-3
    assert np.isfinite(y.numpy()).all()
