"""Orbit and swath geometry against an independent computation of the ground track.

The expected numbers are computed here from first principles (Kepler's third law, the J2 sun-synchronous
condition, spherical scan geometry) and measured on the generated track with ``pyproj.Geod``.
"""

from __future__ import annotations

import math

import numpy as np
import pyproj
import pytest

from appa_op_satellite import Orbit, Swath

GEOD = pyproj.Geod(ellps="WGS84")
MU, RE, J2_ = 398600.4418, 6378.137, 1.08262668e-3
SIDEREAL_DAY = 86164.0905
YEAR = 365.2422 * 86400.0


def expected_period(h: float) -> float:
    return 2 * math.pi * math.sqrt((RE + h) ** 3 / MU)


def expected_sun_sync_inclination(h: float) -> float:
    a = RE + h
    n = math.sqrt(MU / a**3)
    return math.degrees(math.acos(-(2 * math.pi / YEAR) / (1.5 * J2_ * (RE / a) ** 2 * n)))


def ascending_crossings(orbit: Orbit, hours: float, step_s: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Times (s after epoch) and longitudes of ascending equator crossings, found on the sampled track."""
    t = np.arange(0.0, hours * 3600.0, step_s)
    times = orbit.epoch + (t * 1e9).astype("timedelta64[ns]")
    lat, lon = orbit.ground_track(times)
    i = np.flatnonzero((lat[:-1] < 0) & (lat[1:] >= 0))
    f = -lat[i] / (lat[i + 1] - lat[i])
    tc = t[i] + f * step_s
    dlon = (lon[i + 1] - lon[i] + 180.0) % 360.0 - 180.0
    return tc, (lon[i] + f * dlon) % 360.0


def test_sun_synchronous_elements() -> None:
    orbit = Orbit.sun_synchronous(altitude_km=833.0)
    assert orbit.inclination == pytest.approx(expected_sun_sync_inclination(833.0), abs=1e-9)
    assert orbit.inclination == pytest.approx(98.74, abs=0.01)
    assert orbit.period_minutes == pytest.approx(101.57, abs=0.01)
    assert Orbit.from_period(101.0).period_minutes == pytest.approx(101.0, abs=1e-9)


def test_period_from_successive_ascending_nodes() -> None:
    orbit = Orbit.sun_synchronous(altitude_km=833.0, epoch="2020-01-01T00:10")
    tc, _ = ascending_crossings(orbit, hours=7.0)
    assert tc.size >= 4
    measured = np.diff(tc)
    np.testing.assert_allclose(measured, expected_period(833.0), atol=0.05)  # seconds
    assert measured.mean() / 60 == pytest.approx(101.57, abs=0.01)


def test_max_latitude_is_180_minus_inclination() -> None:
    orbit = Orbit.sun_synchronous(altitude_km=833.0)
    t = np.arange(0.0, 2 * orbit.period_s, 0.5)
    lat, _ = orbit.ground_track(orbit.epoch + (t * 1e9).astype("timedelta64[ns]"))
    expected = 180.0 - expected_sun_sync_inclination(833.0)
    assert np.abs(lat).max() == pytest.approx(expected, abs=1e-4)
    assert lat.max() == pytest.approx(expected, abs=1e-4)
    assert lat.min() == pytest.approx(-expected, abs=1e-4)


def test_sun_synchronous_node_keeps_local_time_and_shifts_west() -> None:
    epoch = np.datetime64("2020-03-01T05:00")
    orbit = Orbit.sun_synchronous(altitude_km=833.0, ascending_node_local_time="13:30", epoch=epoch)
    tc, lonc = ascending_crossings(orbit, hours=30.0, step_s=1.0)
    # local mean solar time of each ascending node = UT + lon / 15
    ut = (5.0 + tc / 3600.0) % 24.0
    lst = (ut + lonc / 15.0) % 24.0
    np.testing.assert_allclose(lst, 13.5, atol=2.0 / 3600)  # within 2 seconds of 13:30 for 30 hours
    # successive nodes move west by (omega_E - Omega_dot) T, Omega_dot = 360 deg / year
    shift = (lonc[:-1] - lonc[1:]) % 360.0
    omega = 2 * math.pi / SIDEREAL_DAY - 2 * math.pi / YEAR
    np.testing.assert_allclose(shift, math.degrees(omega * expected_period(833.0)), atol=1e-3)
    assert shift.mean() == pytest.approx(25.39, abs=0.01)


def test_swath_width_and_perpendicular_scan() -> None:
    orbit = Orbit.sun_synchronous(altitude_km=833.0)
    swath = Swath(orbit=orbit, n_footprints=30, width_km=2300.0)
    fp = swath.footprints("2020-01-01T00:00", "2020-01-01T01:00", np.timedelta64(60, "s"))
    n_lines = 61
    assert fp.size == n_lines * 30
    lat = fp.lat.reshape(n_lines, 30)
    lon = fp.lon.reshape(n_lines, 30)
    _, _, width = GEOD.inv(lon[:, 0], lat[:, 0], lon[:, -1], lat[:, -1])
    np.testing.assert_allclose(width / 1000.0, 2300.0, atol=1e-3)  # km, measured with Geod.inv

    # scan line perpendicular to the motion: azimuth nadir -> right edge minus the track heading is 90 deg
    times = fp.time.reshape(n_lines, 30)[:, 0]
    slat, slon = orbit.ground_track(times)
    slat2, slon2 = orbit.ground_track(times + np.timedelta64(1, "s"))
    heading, _, _ = GEOD.inv(slon, slat, slon2, slat2)
    az_right, _, _ = GEOD.inv(slon, slat, lon[:, -1], lat[:, -1])
    np.testing.assert_allclose((az_right - heading + 180) % 360 - 180, 90.0, atol=0.05)

    # footprints equally spaced in scan angle: theta = atan(R sin b / (R + h - R cos b)), b = s / R
    R, h = 6371.0088, 833.0
    _, _, s = GEOD.inv(np.repeat(slon, 30), np.repeat(slat, 30), fp.lon, fp.lat)
    b = s.reshape(n_lines, 30) / 1000.0 / R
    theta = np.degrees(np.arctan2(R * np.sin(b), R + h - R * np.cos(b))) * np.sign(np.arange(30) - 14.5)
    step = np.diff(theta, axis=1)
    np.testing.assert_allclose(step, step[0, 0], atol=1e-6)
    assert theta[0, -1] == pytest.approx(50.69, abs=0.01)  # beam edge for a 2300 km swath from 833 km


def test_footprint_radius_grows_off_nadir() -> None:
    swath = Swath(n_footprints=30, width_km=2300.0, footprint_radius_km=24.0)
    geo = swath.scan_geometry()
    np.testing.assert_allclose(geo.radius_km, geo.radius_km[::-1])
    assert geo.radius_km[14] == pytest.approx(24.0, rel=1e-3)
    assert 2.0 < geo.radius_km[0] / 24.0 < 3.0
    assert np.all(np.diff(geo.radius_km[15:]) > 0)
    # zenith angle zeta = asin((R + h)/R sin theta) at the edge
    R, h = 6371.0088, 833.0
    assert geo.zenith_deg[0] == pytest.approx(
        math.degrees(math.asin((R + h) / R * math.sin(math.radians(50.68956)))), abs=1e-3
    )
    assert np.all(Swath(grow=False).scan_geometry().radius_km == 24.0)


def test_distance_spacing_and_times() -> None:
    swath = Swath(n_footprints=5, width_km=1000.0, spacing="distance")
    np.testing.assert_allclose(swath.scan_geometry().offset_km, [-500, -250, 0, 250, 500])
    fp = swath.footprints("2020-01-01T00:00", "2020-01-01T00:00:40")
    assert fp.size == 6 * 5
    assert fp.time[0] == np.datetime64("2020-01-01T00:00") and fp.time[-1] == np.datetime64("2020-01-01T00:00:40")
    assert np.all((fp.lon >= 0) & (fp.lon < 360)) and np.all(np.abs(fp.lat) <= 90)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Orbit(altitude_km=-5.0), r"Orbit: field 'altitude_km' has value -5.0"),
        (lambda: Orbit(inclination_deg=190.0), r"Orbit: field 'inclination_deg' has value 190.0"),
        (lambda: Orbit.sun_synchronous(ascending_node_local_time="25:00"), r"ascending_node_local_time"),
        (lambda: Orbit.sun_synchronous(altitude_km=8000.0), r"Orbit: field 'altitude_km' has value 8000.0"),
        (lambda: Swath(n_footprints=0), r"Swath: field 'n_footprints' has value 0"),
        (lambda: Swath(width_km=9000.0), r"Swath: field 'width_km' has value 9000.0"),
        (lambda: Swath(footprint_radius_km=float("nan")), r"Swath: field 'footprint_radius_km' has value nan"),
        (lambda: Swath(spacing="random"), r"Swath: field 'spacing' has value 'random'"),
        (lambda: Swath().footprints("2020-01-02", "2020-01-01"), r"Swath: field 'end'"),
    ],
)
def test_bad_geometry(make, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises((ValueError, TypeError), match=message):
        make()
