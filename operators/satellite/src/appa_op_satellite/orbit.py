r"""Polar-orbiting satellites: circular orbits, ground tracks and cross-track scans.

**Orbit** (circular, spherical Earth for the track; constants below). With :math:`a = R_E + h` the semi-major
axis, Kepler's third law gives the mean motion and period

.. math:: n = \sqrt{\mu / a^3}, \qquad T = 2\pi / n,

and the Earth's oblateness (:math:`J_2`) makes the orbit plane precess at

.. math:: \dot\Omega = -\tfrac32 J_2 (R_E/a)^2\, n \cos i .

A **sun-synchronous** orbit chooses the inclination :math:`i` so that :math:`\dot\Omega` equals the Earth's
mean motion around the Sun, :math:`2\pi / 365.2422\,\mathrm{d}` (0.9856 deg/day): the orbit plane keeps its
angle to the Sun and the satellite crosses the equator at the same local solar time every orbit. At 833 km
(NOAA-KLM nominal, AMSU-A) this gives :math:`i = 98.74^\circ`, :math:`T = 101.6` min, 14.2 orbits per day.

**Ground track.** With the argument of latitude :math:`u = n (t - t_0)` counted from an ascending-node crossing
at :math:`t_0` and geographic longitude :math:`\lambda_0`:

.. math:: \varphi = \arcsin(\sin i \sin u), \qquad
          \lambda = \lambda_0 + \operatorname{atan2}(\cos i \sin u, \cos u) - (\omega_E - \dot\Omega)(t - t_0),

with :math:`\omega_E` the Earth's sidereal rotation rate. The track reaches :math:`|\varphi| = 180^\circ - i`
(81.3 deg for 98.7 deg) and successive ascending nodes are :math:`(\omega_E - \dot\Omega) T` apart in longitude
(25.4 deg westward). :math:`J_2` changes only the node; the along-track motion is Keplerian (the nodal period
differs from :math:`T` by ~0.1 %, ignored). The latitude is used as geodetic latitude on WGS84 for the footprints.

**Local time of the node.** Local mean solar time is UTC + longitude/15 h, so an ascending node at local time
:math:`\ell` (e.g. 13:30) crossed at :math:`t_0` lies at :math:`\lambda_0 = 15 (\ell - \mathrm{UT}(t_0))` degrees
(mean sun; the equation of time, up to 16 minutes, is ignored).

**Cross-track scan** (spherical Earth of radius :math:`R`, satellite at height :math:`h`). A beam at scan angle
:math:`\theta` (at the satellite, from nadir) hits the ground at Earth central angle :math:`\beta` with

.. math:: \zeta = \arcsin\!\Big(\frac{R+h}{R}\sin\theta\Big), \qquad \beta = \zeta - \theta, \qquad s = R\beta,

:math:`\zeta` the zenith angle at the footprint and :math:`s` the ground distance from the sub-satellite point.
The inverse is :math:`\tan\theta = R\sin\beta / (R + h - R\cos\beta)`. A swath of width :math:`W` (between the
centres of the two edge footprints) has :math:`N` footprints at scan angles equally spaced in
:math:`[-\theta_{max}, \theta_{max}]`, :math:`\theta_{max} = \theta(\beta = W/2R)` (``spacing="angle"``, as a
scanning radiometer) or at ground offsets equally spaced in :math:`[-W/2, W/2]` (``spacing="distance"``).
Footprint centres are placed with ``pyproj.Geod(ellps="WGS84").fwd`` from the sub-satellite point along the
azimuth perpendicular to the track (track heading + 90 deg, i.e. to the right of the motion for positive
offsets). The footprint radius grows off nadir with the slant range :math:`D` and the obliquity: a beam of
width :math:`b` covers :math:`D b` along track and :math:`D b / \cos\zeta` across, so with ``grow=True`` the
radius (geometric mean of the two) is :math:`r = r_0 (D/h) / \sqrt{\cos\zeta}`.

AMSU-A for reference: 30 footprints, beam centres at +/- 48.33 deg, one scan line every 8 s (~53 km along
track), 3.3 deg beam width (~48 km footprint at nadir), 2343 km quoted swath (beam edges).
"""

from __future__ import annotations

import math
from typing import Literal

import attrs
import numpy as np
import pyproj

from appa_core.geo import EARTH_RADIUS_KM
from appa_core.obs.validate import to_datetime64

__all__ = [
    "J2",
    "MU_EARTH",
    "OMEGA_EARTH",
    "R_EARTH_EQUATOR",
    "R_EARTH_MEAN",
    "SUN_SYNC_RATE",
    "Footprints",
    "Orbit",
    "ScanGeometry",
    "Swath",
]

#: Earth's gravitational parameter, km^3 s^-2 (WGS84).
MU_EARTH = 398600.4418
#: Equatorial radius, km (WGS84); the orbit's semi-major axis is ``R_EARTH_EQUATOR + altitude``.
R_EARTH_EQUATOR = 6378.137
#: Mean radius, km (IUGG), used for the scan geometry and great-circle distances: appa's one Earth radius,
#: :data:`appa_core.geo.EARTH_RADIUS_KM`.
R_EARTH_MEAN = EARTH_RADIUS_KM
#: Second zonal harmonic of the geopotential (oblateness).
J2 = 1.08262668e-3
#: Sidereal rotation rate of the Earth, rad s^-1.
OMEGA_EARTH = 7.2921159e-5
#: Node precession rate of a sun-synchronous orbit, rad s^-1 (360 deg per tropical year).
SUN_SYNC_RATE = 2.0 * math.pi / (365.2422 * 86400.0)

_GEOD = pyproj.Geod(ellps="WGS84")
_NS = 1e-9


def _finite(owner: str, field: str, value: object) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{owner}: field {field!r} must be a number, got {value!r:.80}") from exc
    if not math.isfinite(v):
        raise ValueError(f"{owner}: field {field!r} has value {v}; must be finite")
    return v


def _to_time(owner: str, field: str, value: object) -> np.datetime64:
    array = to_datetime64(owner, field, value)
    if array.size != 1:
        raise ValueError(f"{owner}: field {field!r} must be a single time, got {array.size} values")
    return array[0]


def _local_time_hours(owner: str, value: object) -> float:
    """``"13:30"`` or ``13.5`` -> 13.5 hours, within [0, 24)."""
    if isinstance(value, str):
        try:
            hh, mm = value.split(":")
            hours = int(hh) + int(mm) / 60.0
        except ValueError as exc:
            raise ValueError(f"{owner}: field 'ascending_node_local_time' has value {value!r}; use 'HH:MM'") from exc
    else:
        hours = _finite(owner, "ascending_node_local_time", value)
    if not 0.0 <= hours < 24.0:
        raise ValueError(f"{owner}: field 'ascending_node_local_time' has value {value!r} outside [00:00, 24:00)")
    return hours


def sun_synchronous_inclination(altitude_km: float) -> float:
    r"""Inclination (degrees) that makes a circular orbit at ``altitude_km`` sun-synchronous.

    Solves :math:`-\tfrac32 J_2 (R_E/a)^2 n \cos i = 2\pi/365.2422\,\mathrm{d}` for :math:`i`.
    """
    a = R_EARTH_EQUATOR + altitude_km
    n = math.sqrt(MU_EARTH / a**3)
    cos_i = -SUN_SYNC_RATE / (1.5 * J2 * (R_EARTH_EQUATOR / a) ** 2 * n)
    if cos_i < -1.0:
        raise ValueError(
            f"Orbit: field 'altitude_km' has value {altitude_km}; no sun-synchronous orbit exists above ~5980 km"
        )
    return math.degrees(math.acos(cos_i))


@attrs.frozen(kw_only=True)
class Orbit:
    """A circular low-Earth orbit, by its orbital elements.

    Attributes:
        altitude_km: height above the equatorial radius, km (833 = NOAA-KLM / AMSU-A nominal).
        inclination_deg: orbit inclination in degrees, [0, 180]; ``None`` (default) = the sun-synchronous
            inclination for the altitude (98.74 deg at 833 km).
        node_lon_deg: geographic longitude of the ascending node crossed at ``epoch``, degrees.
        epoch: a time at which the satellite crosses the ascending node (UTC, ``datetime64`` or ISO string).
        j2_precession: include the J2 node precession (always on for sun-synchronous orbits to make sense).

    Use :meth:`sun_synchronous` to give the node by its local solar time, and :meth:`from_period` to give the
    period instead of the altitude.
    """

    altitude_km: float = 833.0
    inclination_deg: float | None = None
    node_lon_deg: float = 0.0
    epoch: np.datetime64 = attrs.field(default="2020-01-01T00:00:00", converter=lambda v: _to_time("Orbit", "epoch", v))
    j2_precession: bool = True

    def __attrs_post_init__(self) -> None:
        h = _finite("Orbit", "altitude_km", self.altitude_km)
        if not 100.0 <= h <= 40000.0:
            raise ValueError(f"Orbit: field 'altitude_km' has value {h} outside [100, 40000] km")
        if self.inclination_deg is not None:
            inc = _finite("Orbit", "inclination_deg", self.inclination_deg)
            if not 0.0 <= inc <= 180.0:
                raise ValueError(f"Orbit: field 'inclination_deg' has value {inc} outside [0, 180]")
        _finite("Orbit", "node_lon_deg", self.node_lon_deg)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def sun_synchronous(
        cls,
        altitude_km: float = 833.0,
        ascending_node_local_time: str | float = "13:30",
        epoch: object = "2020-01-01T00:00:00",
    ) -> Orbit:
        """A sun-synchronous orbit crossing the equator northward at ``ascending_node_local_time`` (local mean
        solar time, ``"HH:MM"`` or hours), with an ascending-node crossing at ``epoch``.

        13:30 is an afternoon orbit (NOAA-15..19, Aqua); MetOp crosses descending at 09:30 (ascending 21:30).
        """
        ltan = _local_time_hours("Orbit", ascending_node_local_time)
        t0 = _to_time("Orbit", "epoch", epoch)
        day_ns = 86400 * 10**9
        ut_hours = (t0.astype("datetime64[ns]").astype(np.int64) % day_ns) / 3.6e12
        node_lon = float((15.0 * (ltan - ut_hours)) % 360.0)
        inc = sun_synchronous_inclination(_finite("Orbit", "altitude_km", altitude_km))
        return cls(altitude_km=altitude_km, inclination_deg=inc, node_lon_deg=node_lon, epoch=t0)

    @classmethod
    def from_period(cls, period_minutes: float, **kwargs: object) -> Orbit:
        r"""The orbit whose Keplerian period is ``period_minutes``: :math:`a = (\mu (T/2\pi)^2)^{1/3}`."""
        t = _finite("Orbit", "period_minutes", period_minutes)
        if t <= 0:
            raise ValueError(f"Orbit: field 'period_minutes' has value {t}; must be > 0")
        a = (MU_EARTH * (t * 60.0 / (2.0 * math.pi)) ** 2) ** (1.0 / 3.0)
        return cls(altitude_km=a - R_EARTH_EQUATOR, **kwargs)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ elements
    @property
    def semi_major_axis_km(self) -> float:
        return R_EARTH_EQUATOR + float(self.altitude_km)

    @property
    def inclination(self) -> float:
        """Inclination in degrees (resolved for sun-synchronous orbits)."""
        if self.inclination_deg is None:
            return sun_synchronous_inclination(float(self.altitude_km))
        return float(self.inclination_deg)

    @property
    def mean_motion(self) -> float:
        """Mean motion n, rad s^-1."""
        return math.sqrt(MU_EARTH / self.semi_major_axis_km**3)

    @property
    def period_s(self) -> float:
        """Keplerian period 2 pi / n, seconds."""
        return 2.0 * math.pi / self.mean_motion

    @property
    def period_minutes(self) -> float:
        return self.period_s / 60.0

    @property
    def node_precession(self) -> float:
        """J2 node precession rate, rad s^-1 (positive eastward; ~ +1.99e-7 for sun-synchronous orbits)."""
        if not self.j2_precession:
            return 0.0
        a = self.semi_major_axis_km
        return -1.5 * J2 * (R_EARTH_EQUATOR / a) ** 2 * self.mean_motion * math.cos(math.radians(self.inclination))

    @property
    def node_shift_deg(self) -> float:
        """Westward longitude shift between successive ascending nodes, degrees ((omega_E - Omega_dot) T)."""
        return math.degrees((OMEGA_EARTH - self.node_precession) * self.period_s)

    # ------------------------------------------------------------------ track
    def _seconds(self, times: object) -> np.ndarray:
        t = to_datetime64("Orbit", "times", times)
        return (t.astype(np.int64) - self.epoch.astype("datetime64[ns]").astype(np.int64)).astype(np.float64) * _NS

    def ground_track(self, times: object) -> tuple[np.ndarray, np.ndarray]:
        """Sub-satellite point at ``times`` ``[K]`` (``datetime64``): ``(lat [K], lon [K])`` degrees, lon in
        [0, 360)."""
        return self._track(self._seconds(times))

    def _track(self, seconds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        inc = math.radians(self.inclination)
        u = self.mean_motion * seconds
        lat = np.degrees(np.arcsin(math.sin(inc) * np.sin(u)))
        lon = (
            self.node_lon_deg
            + np.degrees(np.arctan2(math.cos(inc) * np.sin(u), np.cos(u)))
            - np.degrees((OMEGA_EARTH - self.node_precession) * seconds)
        )
        return lat, np.mod(lon, 360.0)

    def heading(self, times: object) -> np.ndarray:
        """Azimuth of the ground track's motion at ``times`` ``[K]``, degrees clockwise from north (WGS84)."""
        return self._heading(self._seconds(times))

    def _heading(self, seconds: np.ndarray, dt: float = 0.5) -> np.ndarray:
        # central difference: azimuth at the start of the short geodesic (t - dt -> t + dt) and back azimuth at its
        # end, averaged on the circle; second-order accurate in dt.
        lat0, lon0 = self._track(seconds - dt)
        lat1, lon1 = self._track(seconds + dt)
        az01, az10, _ = _GEOD.inv(lon0, lat0, lon1, lat1)
        a = np.radians(np.asarray(az01))
        b = np.radians(np.asarray(az10) + 180.0)
        return np.degrees(np.arctan2(np.sin(a) + np.sin(b), np.cos(a) + np.cos(b)))

    def ascending(self, times: object) -> np.ndarray:
        """Whether the satellite moves northward at ``times`` ``[K]`` (bool)."""
        return np.cos(self.mean_motion * self._seconds(times)) > 0


@attrs.frozen
class ScanGeometry:
    """One scan line's geometry, each array ``[N]`` (footprints ordered left to right of the motion).

    Attributes:
        offset_km: signed ground distance from the sub-satellite point (positive = right of the track), km.
        scan_angle_deg: beam angle at the satellite from nadir, degrees (signed like ``offset_km``).
        zenith_deg: satellite zenith angle at the footprint, degrees (>= 0).
        slant_range_km: distance satellite -> footprint, km.
        radius_km: footprint radius, km.
    """

    offset_km: np.ndarray
    scan_angle_deg: np.ndarray
    zenith_deg: np.ndarray
    slant_range_km: np.ndarray
    radius_km: np.ndarray


@attrs.frozen(eq=False)
class Footprints:
    """Footprints of a swath over a time span, each array ``[M]`` (``M`` = scan lines x footprints per line,
    line-major: the ``N`` footprints of the first line, then the next line...).

    Attributes:
        lat, lon: footprint centres, degrees (lon in [0, 360)).
        time: observation time of the footprint's scan line, ``datetime64[ns]``.
        radius_km: footprint radius, km.
        zenith_deg: satellite zenith angle at the footprint, degrees.
        scan_position: index of the footprint in its scan line, 0..N-1.
        line: index of the scan line.
        ascending: whether the satellite was moving northward.
    """

    lat: np.ndarray
    lon: np.ndarray
    time: np.ndarray
    radius_km: np.ndarray
    zenith_deg: np.ndarray
    scan_position: np.ndarray
    line: np.ndarray
    ascending: np.ndarray

    @property
    def size(self) -> int:
        return int(self.lat.size)

    def __len__(self) -> int:
        return self.size

    def select(self, mask: np.ndarray) -> Footprints:
        """The footprints where ``mask`` ``[M]`` is true (or at integer indices ``mask``)."""
        return Footprints(**{f.name: getattr(self, f.name)[mask] for f in attrs.fields(Footprints)})

    def as_dict(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in attrs.fields(Footprints)}


def _positive(owner: str, field: str, value: object) -> float:
    v = _finite(owner, field, value)
    if v <= 0:
        raise ValueError(f"{owner}: field {field!r} has value {v}; must be > 0")
    return v


@attrs.frozen(kw_only=True)
class Swath:
    """A cross-track scanning instrument on an :class:`Orbit`.

    Attributes:
        orbit: the platform's orbit (default: sun-synchronous, 833 km, ascending node at 13:30).
        n_footprints: footprints per scan line ``N`` (30 for AMSU-A).
        width_km: great-circle distance between the centres of the two edge footprints, km.
        footprint_radius_km: footprint radius at nadir, km (half-power radius; 24 km ~ AMSU-A's 48 km footprint).
        spacing: ``"angle"`` (equal scan-angle steps, as a scanning radiometer) or ``"distance"`` (equal ground
            steps).
        grow: footprints grow off nadir, ``r = r0 (D/h) / sqrt(cos zeta)``; ``False`` keeps ``r0``.
        scan_interval: time between scan lines (8 s for AMSU-A).
    """

    orbit: Orbit = attrs.field(factory=Orbit.sun_synchronous)
    n_footprints: int = 30
    width_km: float = 2300.0
    footprint_radius_km: float = 24.0
    spacing: Literal["angle", "distance"] = "angle"
    grow: bool = True
    scan_interval: np.timedelta64 = attrs.field(
        default=np.timedelta64(8, "s"), converter=lambda v: np.timedelta64(v).astype("timedelta64[ns]")
    )

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.orbit, Orbit):
            raise TypeError(f"Swath: field 'orbit' must be an Orbit, got {type(self.orbit).__name__}")
        if isinstance(self.n_footprints, bool) or int(self.n_footprints) != self.n_footprints or self.n_footprints < 1:
            raise ValueError(f"Swath: field 'n_footprints' has value {self.n_footprints!r}; must be an integer >= 1")
        w = _finite("Swath", "width_km", self.width_km)
        if w < 0 or (w == 0 and self.n_footprints > 1):
            raise ValueError(f"Swath: field 'width_km' has value {w}; must be > 0")
        horizon = R_EARTH_MEAN * math.acos(R_EARTH_MEAN / (R_EARTH_MEAN + self.orbit.altitude_km))
        if w / 2 >= horizon:
            raise ValueError(
                f"Swath: field 'width_km' has value {w}; half of it must stay below the horizon distance "
                f"{horizon:.0f} km seen from {self.orbit.altitude_km} km"
            )
        _positive("Swath", "footprint_radius_km", self.footprint_radius_km)
        if self.spacing not in ("angle", "distance"):
            raise ValueError(f"Swath: field 'spacing' has value {self.spacing!r}; use 'angle' or 'distance'")
        if self.scan_interval <= np.timedelta64(0, "ns"):
            raise ValueError(f"Swath: field 'scan_interval' has value {self.scan_interval}; must be > 0")

    def scan_geometry(self) -> ScanGeometry:
        """Geometry of one scan line (see the module docstring for the formulas)."""
        R, h = R_EARTH_MEAN, float(self.orbit.altitude_km)
        n = int(self.n_footprints)
        half = 0.5 * float(self.width_km)
        if self.spacing == "distance":
            s = np.linspace(-half, half, n) if n > 1 else np.zeros(1)
            beta = s / R
            theta = np.arctan2(R * np.sin(beta), R + h - R * np.cos(beta))
        else:
            beta_max = half / R
            theta_max = math.atan2(R * math.sin(beta_max), R + h - R * math.cos(beta_max))
            theta = np.linspace(-theta_max, theta_max, n) if n > 1 else np.zeros(1)
            zeta = np.arcsin((R + h) / R * np.sin(theta))
            beta = zeta - theta
            s = R * beta
        zenith = np.abs(theta + beta)
        slant = np.sqrt(R**2 + (R + h) ** 2 - 2 * R * (R + h) * np.cos(beta))
        r0 = float(self.footprint_radius_km)
        radius = r0 * (slant / h) / np.sqrt(np.cos(zenith)) if self.grow else np.full(n, r0)
        return ScanGeometry(
            offset_km=s,
            scan_angle_deg=np.degrees(theta),
            zenith_deg=np.degrees(zenith),
            slant_range_km=slant,
            radius_km=radius,
        )

    def line_times(self, start: object, end: object, scan_interval: object | None = None) -> np.ndarray:
        """Scan-line times ``start, start + dt, ... <= end`` (``datetime64[ns]``)."""
        t0 = _to_time("Swath", "start", start).astype("datetime64[ns]")
        t1 = _to_time("Swath", "end", end).astype("datetime64[ns]")
        dt = self.scan_interval if scan_interval is None else np.timedelta64(scan_interval).astype("timedelta64[ns]")
        if dt <= np.timedelta64(0, "ns"):
            raise ValueError(f"Swath: field 'scan_interval' has value {dt}; must be > 0")
        if t1 < t0:
            raise ValueError(f"Swath: field 'end' has value {t1} before 'start' {t0}")
        n_lines = int((t1 - t0) // dt) + 1
        return t0 + np.arange(n_lines, dtype=np.int64) * dt

    def footprints(self, start: object, end: object, scan_interval: object | None = None) -> Footprints:
        """All footprints of the scan lines in ``[start, end]`` (vectorised over lines and footprints).

        Args:
            start, end: the time span (``datetime64`` or ISO strings); lines at ``start + k * scan_interval``.
            scan_interval: time between scan lines (default: the swath's ``scan_interval``).

        Returns:
            :class:`Footprints` with ``M = lines * n_footprints`` entries.
        """
        times = self.line_times(start, end, scan_interval)
        seconds = self.orbit._seconds(times)
        lat0, lon0 = self.orbit._track(seconds)
        az = self.orbit._heading(seconds) + 90.0  # to the right of the motion
        geo = self.scan_geometry()
        n_lines, n = times.size, geo.offset_km.size
        lon, lat, _ = _GEOD.fwd(
            np.repeat(lon0, n),
            np.repeat(lat0, n),
            np.repeat(az, n),
            np.tile(geo.offset_km * 1000.0, n_lines),
        )
        return Footprints(
            lat=np.asarray(lat, dtype=np.float64),
            lon=np.mod(np.asarray(lon, dtype=np.float64), 360.0),
            time=np.repeat(times, n),
            radius_km=np.tile(geo.radius_km, n_lines),
            zenith_deg=np.tile(geo.zenith_deg, n_lines),
            scan_position=np.tile(np.arange(n, dtype=np.int64), n_lines),
            line=np.repeat(np.arange(n_lines, dtype=np.int64), n),
            ascending=np.repeat(np.cos(self.orbit.mean_motion * seconds) > 0, n),
        )
