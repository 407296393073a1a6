"""Round trips of the station CSV and IODA readers/writers."""

from __future__ import annotations

from pathlib import Path

import netCDF4
import numpy as np
import pytest

from appa_core.grid import Grid
from appa_core.obs.interp import interp_matrix
from appa_core.spec import StateSpec
from appa_op_stations import DEFAULT_ERRORS, StationOp, read_ioda, read_station_csv, write_ioda, write_station_csv

CSV = """station_id,lat,lon,elevation,time,variable,value,error,level
10384,52.47,13.40,48,2020-01-01T06:00:00Z,2m_temperature,275.15,0.8,
10384,52.47,13.40,48,2020-01-01T06:00:00Z,surface_pressure,101020,,
SHIP1,-35.2,-20.5,,2020-01-01T09:30:00,2m_temperature,291.4,1.2,
72520,40.53,-80.22,360,2020-01-01T12:00:00+00:00,temperature,253.2,0.6,500
72520,40.53,-80.22,360,2020-01-02T12:00:00Z,temperature,250.0,0.6,500
"""


def test_station_csv_reads_all_columns(tmp_path: Path) -> None:
    path = tmp_path / "obs.csv"
    path.write_text(CSV)
    op = read_station_csv(path, window=("2020-01-01T00", "2020-01-01T12"), method="nearest")
    assert op.size == 4 and op.method == "nearest"
    np.testing.assert_allclose(op.value, [275.15, 101020, 291.4, 253.2])
    np.testing.assert_allclose(op.lat, [52.47, 52.47, -35.2, 40.53])
    np.testing.assert_allclose(op.lon, [13.40, 13.40, -20.5, -80.22])
    np.testing.assert_array_equal(op.elevation, [48, 48, np.nan, 360])
    np.testing.assert_array_equal(op.level, [np.nan, np.nan, np.nan, 500])
    assert op.variable.tolist() == ["2m_temperature", "surface_pressure", "2m_temperature", "temperature"]
    assert op.station_id.tolist() == ["10384", "10384", "SHIP1", "72520"]
    assert (
        op.time.tolist()
        == np.array(
            ["2020-01-01T06", "2020-01-01T06", "2020-01-01T09:30", "2020-01-01T12"], dtype="datetime64[ns]"
        ).tolist()
    )
    # an empty error cell takes the variable's default
    np.testing.assert_allclose(op.noise.variance().numpy(), [0.64, DEFAULT_ERRORS["surface_pressure"] ** 2, 1.44, 0.36])


def test_station_csv_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    m = 25
    op = StationOp(
        variable=rng.choice(["2m_temperature", "temperature"], m),
        level=np.nan,
        lat=rng.uniform(-90, 90, m),
        lon=rng.uniform(0, 360, m),
        time=np.datetime64("2020-01-01T00", "ns") + rng.integers(0, 12 * 3600, m).astype("timedelta64[s]"),
        value=rng.normal(280, 10, m),
        error=rng.uniform(0.5, 2, m),
        elevation=np.where(rng.random(m) < 0.3, np.nan, rng.uniform(0, 3000, m)),
        station_id=[f"S{i:03d}" for i in range(m)],
    )
    object.__setattr__(op, "level", np.where(op.variable == "temperature", 850.0, np.nan))
    path = tmp_path / "rt.csv"
    write_station_csv(path, op)
    back = read_station_csv(path)
    for field in ("value", "lat", "lon", "elevation", "level"):
        np.testing.assert_array_equal(getattr(back, field), getattr(op, field), err_msg=field)
    np.testing.assert_array_equal(back.time, op.time)
    assert back.variable.tolist() == op.variable.tolist()
    assert back.station_id.tolist() == op.station_id.tolist()
    np.testing.assert_allclose(back.noise.variance().numpy(), op.noise.variance().numpy(), rtol=1e-15)


def test_station_csv_missing_columns_and_empty_window(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("station_id,lat,time,variable,value\nA,1,2020-01-01,2m_temperature,280\n")
    with pytest.raises(ValueError, match=r"read_station_csv: file .* lacks column\(s\) \['lon'\]"):
        read_station_csv(path)
    path.write_text(CSV)
    with pytest.raises(ValueError, match=r"read_station_csv: file .* has no observations in the window"):
        read_station_csv(path, window=("2021-01-01", "2021-01-02"))
    path.write_text(
        CSV.replace(
            "52.47,13.40,48,2020-01-01T06:00:00Z,2m_temperature", "95.0,13.40,48,2020-01-01T06:00:00Z,2m_temperature"
        )
    )
    with pytest.raises(ValueError, match=r"StationOp: field 'lat' has value 95\.0 at index 0"):
        read_station_csv(path)


def _write_raw_ioda(path: Path, *, iso_times: bool = False) -> None:
    """A hand-written IODA file with a missing-value sentinel and a station without elevation."""
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("Location", 4)
        meta, obs, err = nc.createGroup("MetaData"), nc.createGroup("ObsValue"), nc.createGroup("ObsError")
        meta.createVariable("latitude", "f4", ("Location",))[:] = [10.0, 20.0, 30.0, -89.5]
        meta.createVariable("longitude", "f4", ("Location",))[:] = [-170.0, 190.0, 359.5, 0.0]
        if iso_times:
            dt = meta.createVariable("dateTime", str, ("Location",))
            dt[:] = np.array(
                ["2020-01-01T00:00:00Z", "2020-01-01T03:00:00Z", "2020-01-01T06:00:00Z", "2020-01-01T06:00:00Z"],
                dtype=object,
            )
        else:
            dt = meta.createVariable("dateTime", "i8", ("Location",))
            dt.units = "seconds since 2020-01-01T00:00:00Z"
            dt[:] = [0, 3 * 3600, 6 * 3600, 6 * 3600]
        meta.createVariable("stationElevation", "f4", ("Location",))[:] = [10.0, -3.3687953e38, 200.0, 2800.0]
        sid = meta.createVariable("stationIdentification", str, ("Location",))
        sid[:] = np.array(["A", "B", "C", "D"], dtype=object)
        obs.createVariable("airTemperature", "f4", ("Location",))[:] = [280.5, 290.25, -3.3687953e38, 230.0]
        err.createVariable("airTemperature", "f4", ("Location",))[:] = [1.0, 1.5, 1.0, 2.0]


@pytest.mark.parametrize("iso_times", [False, True])
def test_ioda_reader_handles_sentinels_epochs_and_iso_times(tmp_path: Path, iso_times: bool) -> None:
    path = tmp_path / "sfc.nc4"
    _write_raw_ioda(path, iso_times=iso_times)
    op = read_ioda(path, "airTemperature")
    assert op.size == 3  # the location with a missing value is dropped
    assert op.variable.tolist() == ["2m_temperature"] * 3
    np.testing.assert_allclose(op.value, [280.5, 290.25, 230.0])
    np.testing.assert_allclose(op.lon, [-170.0, 190.0, 0.0])
    np.testing.assert_array_equal(op.elevation, [10.0, np.nan, 2800.0])
    assert op.station_id.tolist() == ["A", "B", "D"]
    expected = np.array(["2020-01-01T00", "2020-01-01T03", "2020-01-01T06"], dtype="datetime64[ns]")
    np.testing.assert_array_equal(op.time, expected)
    np.testing.assert_allclose(op.noise.variance().numpy(), [1.0, 2.25, 4.0])
    # -170 is read as is and interpolated like 190
    grid = Grid.equiangular(7, 12)
    spec = StateSpec(surface=("2m_temperature",))
    with pytest.raises(ValueError, match="StationOp: field 'surface_geopotential' is None"):
        op.prepare(grid, spec, expected[[0, 2]])
    assert read_ioda(path, "airTemperature", use_elevation=False).elevation is None
    op = read_ioda(path, "airTemperature", surface_geopotential=np.zeros(grid.shape))
    op.prepare(grid, spec, expected[[0, 2]])
    np.testing.assert_allclose(op.offset(), [0.0065 * -10.0, 0.0, 0.0065 * -2800.0], atol=1e-12)
    A = op.matrix().toarray()
    t = grid.nlat * grid.nlon
    np.testing.assert_allclose(A[0, :t], interp_matrix(grid, [10.0], [190.0]).toarray()[0], atol=1e-7)
    np.testing.assert_allclose(A[0, t:], 0.0)
    with pytest.raises(ValueError, match=r"read_ioda: field 'variable' has value 'windSpeed', not in ObsValue"):
        read_ioda(path, "windSpeed")


def test_ioda_round_trip_with_pressure_levels_and_hofx(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    m = 12
    op = StationOp(
        variable="temperature",
        level=rng.choice([500.0, 850.0], m),
        lat=rng.uniform(-90, 90, m),
        lon=rng.uniform(0, 360, m),
        time=np.datetime64("2020-01-01T00", "ns") + rng.integers(0, 6 * 3600, m).astype("timedelta64[s]"),
        value=rng.normal(260, 10, m),
        error=rng.uniform(0.5, 1.5, m),
        station_id=[f"R{i}" for i in range(m)],
    )
    path = tmp_path / "sonde.nc4"
    write_ioda(path, op, hofx=op.value + 1.0)
    back = read_ioda(path, "airTemperature")
    assert back.variable.tolist() == ["temperature"] * m  # MetaData/pressure present: pressure-level variable
    for field in ("value", "lat", "lon", "level"):
        np.testing.assert_allclose(getattr(back, field), getattr(op, field), rtol=1e-14, err_msg=field)
    np.testing.assert_array_equal(back.time, op.time)
    assert back.station_id.tolist() == op.station_id.tolist()
    np.testing.assert_allclose(back.noise.variance().numpy(), op.noise.variance().numpy(), rtol=1e-14)
    with netCDF4.Dataset(path) as nc:
        np.testing.assert_allclose(nc["HofX/airTemperature"][:], op.value + 1.0)
        assert nc["MetaData/dateTime"].units == "seconds since 1970-01-01T00:00:00Z"
    # state_variable override and window filter
    only = read_ioda(path, "airTemperature", window=("2020-01-01T00", "2020-01-01T03"))
    assert only.size == int(np.sum(op.time <= np.datetime64("2020-01-01T03")))


def test_station_csv_row_with_a_bad_date_is_an_error(tmp_path: Path) -> None:
    """Issue: a CSV row with an empty date was dropped without a word (NaT falls outside every window)."""
    path = tmp_path / "s.csv"
    path.write_text(
        "station_id,lat,lon,time,variable,value\nA,1,2,2020-01-01T00:00,2m_temperature,280\nB,3,4,,2m_temperature,281\n"
    )
    with pytest.raises(ValueError, match=r"read_station_csv: file .*s.csv' line 3 has time nan, not an ISO-8601"):
        read_station_csv(path, window=("2020-01-01", "2020-01-02"))
