r"""``RadianceOp``: a linear brightness-temperature proxy for microwave temperature sounders.

**Physics.** In the microwave (Rayleigh-Jeans regime), clear-sky brightness temperature is linear in temperature:

.. math:: T_b = \int_0^{p_s} T(p)\, K(p)\, d\ln p + \tau(p_s)\, T_s, \qquad K(p) = -\frac{\partial\tau}{\partial\ln p},

with :math:`\tau(p)` the transmittance from pressure :math:`p` to space (emissivity 1). The weights integrate to
one, :math:`\int_0^{p_s} K\, d\ln p + \tau(p_s) = 1`, so an isothermal atmosphere gives exactly its temperature.

**Weighting functions** (:class:`RadianceChannel`), each peaking at a configurable pressure :math:`p_c`:

* ``"transmittance"`` (default): optical depth :math:`\delta = (p/p_c)^m \sec\zeta` (pressure-broadened lines,
  :math:`m \approx 2`), :math:`\tau = e^{-\delta}`, :math:`K = m\,\delta\, e^{-\delta}`. It peaks where
  :math:`\delta = 1`: at :math:`p_c` at nadir and at :math:`p_c (\cos\zeta)^{1/m}` off nadir (the peak rises
  with the zenith angle :math:`\zeta`: limb cooling). Half maximum between :math:`0.482\,p_c` and
  :math:`1.637\,p_c` for :math:`m = 2`.
* ``"gaussian"``: a Gaussian in :math:`\ln p`, :math:`K \propto \exp(-\tfrac12 ((\ln p - \ln p_c)/w)^2)`, i.e.
  :math:`\tau = 1 - \Phi((\ln p - \ln p_c)/w)` (same zenith shift of the peak).

**Discretisation on model levels.** For levels :math:`p_1 < \dots < p_L` (hPa) with layer interfaces at the
geometric means :math:`p_{l+1/2} = \sqrt{p_l p_{l+1}}`, :math:`p_{1/2} = 0` and :math:`p_{L+1/2} = \max(p_s, p_L)`
(:math:`p_s` = ``surface_pressure_hpa``, 1013.25), the layer weights are the exact integrals of :math:`K` over
each layer,

.. math:: K_{c,l} = \tau_c(p_{l-1/2}) - \tau_c(p_{l+1/2}), \qquad K_{c,s} = \tau_c(p_{L+1/2}),

so :math:`T_{b,c} = \sum_l K_{c,l} T_l + K_{c,s} T_s` with :math:`\sum_l K_{c,l} + K_{c,s} = 1` (then
renormalised to exactly 1 in floating point). Everything above the top model level is given to the top level and
everything below the lowest level to the lowest level (the weighting function is *clipped* to the model's
levels). The surface term uses ``surface_variable`` (``2m_temperature``); without it, :math:`K_{c,s}` goes to the
lowest level. A channel is refused when none of the state's levels lies in its half-maximum layer (at nadir):
its proxy would only be the clipped tail.

**Presets.** :data:`AMSUA` holds AMSU-A temperature-sounding channels 4-14 shaped like the real ones (nadir peaks
~900, 700, 400, 250, 180, 90, 50, 25, 10, 5, 2.5 hPa; NEdT as the default error). The peaks are approximate
(the real weighting functions also depend on the atmosphere); :func:`amsua_channels` picks channels and, given
the state's levels, keeps only those the levels resolve.

**Horizontal/time.** Each footprint's temperature profile is the footprint average (or the bilinear value at
points, ``radius_km=None``) interpolated in time, exactly as :class:`~appa_op_satellite.SwathOp`; the operator is
linear, observations are footprint-major (``m = n * C + c`` for ``C`` channels).

**Noise.** Default: Gaussian errors correlated across the channels of one footprint (independent between
footprints), :math:`\Sigma_{cc'} = \sigma_c \sigma_{c'} \rho^{|c - c'|}`, with :math:`\sigma_c` the channels'
``std`` and :math:`\rho` = ``channel_correlation``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, Literal

import attrs
import numpy as np
from scipy.special import ndtr

from appa_core.obs.errors import NoiseModel
from appa_core.spec import StateSpec
from appa_op_satellite._base import FootprintOperator
from appa_op_satellite._noise import channel_correlated_noise

__all__ = ["AMSUA", "RadianceChannel", "RadianceOp", "amsua_channels"]

_SHAPES = ("transmittance", "gaussian")


@attrs.frozen(kw_only=True)
class RadianceChannel:
    r"""One sounding channel's weighting function.

    Attributes:
        name: label, e.g. ``"amsua-5"``.
        peak_hpa: nadir peak pressure :math:`p_c`, hPa.
        shape: ``"transmittance"`` (:math:`\tau = \exp(-(p/p_c)^m \sec\zeta)`) or ``"gaussian"`` (in ln p).
        exponent: :math:`m`, the optical-depth exponent (also sets the zenith shift of the peak for both shapes).
        width: :math:`w`, standard deviation in ln p of the ``"gaussian"`` shape.
        std: observation error standard deviation, K (used by the default noise).
    """

    name: str
    peak_hpa: float
    shape: Literal["transmittance", "gaussian"] = "transmittance"
    exponent: float = 2.0
    width: float = 0.6
    std: float = 0.25

    def __attrs_post_init__(self) -> None:
        owner = "RadianceChannel"
        for field in ("peak_hpa", "exponent", "width", "std"):
            v = getattr(self, field)
            if not isinstance(v, int | float | np.number) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{owner}: field {field!r} of channel {self.name!r} has value {v!r}; must be > 0")
        if self.shape not in _SHAPES:
            raise ValueError(f"{owner}: field 'shape' of channel {self.name!r} has value {self.shape!r}; use {_SHAPES}")

    def peak(self, sec_zenith: float | np.ndarray = 1.0) -> np.ndarray:
        r"""Peak pressure :math:`p_c (\cos\zeta)^{1/m}`, hPa."""
        return self.peak_hpa * np.asarray(sec_zenith, dtype=np.float64) ** (-1.0 / self.exponent)

    def transmittance(self, p_hpa: np.ndarray, sec_zenith: float | np.ndarray = 1.0) -> np.ndarray:
        r""":math:`\tau(p)`, transmittance from ``p_hpa`` to space (1 at p = 0, decreasing to 0); broadcasts."""
        p = np.asarray(p_hpa, dtype=np.float64)
        sec = np.asarray(sec_zenith, dtype=np.float64)
        if self.shape == "transmittance":
            return np.exp(-((p / self.peak_hpa) ** self.exponent) * sec)
        with np.errstate(divide="ignore"):
            z = (np.log(p) - np.log(self.peak(sec))) / self.width
        return 1.0 - ndtr(z)

    def weighting_function(self, p_hpa: np.ndarray, sec_zenith: float | np.ndarray = 1.0) -> np.ndarray:
        r"""Continuous :math:`K(p) = -\partial\tau/\partial\ln p` per unit ln p (integrates to 1 over ln p)."""
        p = np.asarray(p_hpa, dtype=np.float64)
        sec = np.asarray(sec_zenith, dtype=np.float64)
        if self.shape == "transmittance":
            delta = (p / self.peak_hpa) ** self.exponent * sec
            return self.exponent * delta * np.exp(-delta)
        z = (np.log(p) - np.log(self.peak(sec))) / self.width
        return np.exp(-0.5 * z**2) / (self.width * math.sqrt(2 * math.pi))

    def half_maximum_layer(self) -> tuple[float, float]:
        """``(p_top, p_bottom)`` hPa where the nadir weighting function is at least half its peak."""
        if self.shape == "transmittance":
            # delta e^-delta = e^-1 / 2  <=>  delta in {0.2319, 2.6783}
            lo, hi = 0.23196095298653326, 2.678346990016661
            return self.peak_hpa * lo ** (1 / self.exponent), self.peak_hpa * hi ** (1 / self.exponent)
        half = self.width * math.sqrt(2 * math.log(2))
        return self.peak_hpa * math.exp(-half), self.peak_hpa * math.exp(half)


#: AMSU-A temperature-sounding channels (approximate nadir peaks, hPa; NEdT as ``std``, K).
AMSUA: dict[int, RadianceChannel] = {
    ch: RadianceChannel(name=f"amsua-{ch}", peak_hpa=peak, std=std)
    for ch, peak, std in [
        (4, 900.0, 0.25),
        (5, 700.0, 0.25),
        (6, 400.0, 0.25),
        (7, 250.0, 0.25),
        (8, 180.0, 0.25),
        (9, 90.0, 0.25),
        (10, 50.0, 0.40),
        (11, 25.0, 0.40),
        (12, 10.0, 0.60),
        (13, 5.0, 0.80),
        (14, 2.5, 1.20),
    ]
}


def _resolved(channel: RadianceChannel, levels: Iterable[float]) -> bool:
    top, bottom = channel.half_maximum_layer()
    return any(top <= float(p) <= bottom for p in levels)


def amsua_channels(
    numbers: Iterable[int] = (5, 6, 7, 8, 9, 10), levels: Iterable[float] | None = None
) -> tuple[RadianceChannel, ...]:
    """AMSU-A-like channels by number (4-14), keeping only those resolved by ``levels`` (hPa) when given.

    Example: on the 13 WeatherBench2 levels (50-1000 hPa) channels 4-10 are resolved; on ``(500, 850)`` only
    4-6.
    """
    chans = []
    for n in numbers:
        if n not in AMSUA:
            raise ValueError(f"amsua_channels: field 'numbers' has value {n!r}; AMSU-A presets are {sorted(AMSUA)}")
        chans.append(AMSUA[n])
    if levels is not None:
        levs = list(levels)
        chans = [c for c in chans if _resolved(c, levs)]
    return tuple(chans)


def _to_channels(owner: str, value: object) -> tuple[RadianceChannel, ...]:
    items: Sequence[object] = [value] if isinstance(value, RadianceChannel | int | str) else value  # type: ignore[assignment]
    try:
        items = list(items)
    except TypeError as exc:
        raise TypeError(f"{owner}: field 'channels' must be a sequence of RadianceChannel, got {value!r:.80}") from exc
    out = []
    for item in items:
        if isinstance(item, RadianceChannel):
            out.append(item)
        elif isinstance(item, int | np.integer) and not isinstance(item, bool):
            if int(item) not in AMSUA:
                raise ValueError(f"{owner}: field 'channels' has value {item}; AMSU-A presets are {sorted(AMSUA)}")
            out.append(AMSUA[int(item)])
        elif isinstance(item, str) and item.startswith("amsua-") and item[6:].isdigit() and int(item[6:]) in AMSUA:
            out.append(AMSUA[int(item[6:])])
        else:
            raise TypeError(
                f"{owner}: field 'channels' has value {item!r}; use RadianceChannel, an AMSU-A number or 'amsua-N'"
            )
    if not out:
        raise ValueError(f"{owner}: field 'channels' is empty; give at least one channel")
    names = [c.name for c in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"{owner}: field 'channels' lists channel {sorted(dup)[0]!r} twice")
    return tuple(out)


def layer_weights(
    channels: Sequence[RadianceChannel],
    levels_hpa: Sequence[float],
    surface_pressure_hpa: float = 1013.25,
    sec_zenith: np.ndarray | float = 1.0,
    surface: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Discrete weights on model levels (see the module docstring).

    Args:
        channels: ``C`` channels.
        levels_hpa: ``L`` pressure levels in any order.
        sec_zenith: ``[N]`` (or scalar) secant of the zenith angle.
        surface: keep a separate surface weight (else it is added to the lowest level).

    Returns:
        ``(K [N, C, L], K_s [N, C])``, levels in the order given; ``K.sum(-1) + K_s == 1``.
    """
    levels = np.asarray(levels_hpa, dtype=np.float64)
    order = np.argsort(levels)
    p = levels[order]
    interfaces = np.concatenate([[0.0], np.sqrt(p[1:] * p[:-1]), [max(surface_pressure_hpa, p[-1])]])
    sec = np.atleast_1d(np.asarray(sec_zenith, dtype=np.float64))[:, None]  # [N, 1]
    tau = np.stack([ch.transmittance(interfaces[None, :], sec) for ch in channels], axis=1)  # [N, C, L+1]
    k_sorted = tau[..., :-1] - tau[..., 1:]
    k_sfc = tau[..., -1].copy()
    if not surface:
        k_sorted[..., -1] += k_sfc
        k_sfc[:] = 0.0
    total = k_sorted.sum(-1) + k_sfc
    k_sorted /= total[..., None]
    k_sfc /= total
    k = np.empty_like(k_sorted)
    k[..., order] = k_sorted
    return k, k_sfc


@attrs.define(kw_only=True, eq=False)
class RadianceOp(FootprintOperator):
    r"""Brightness-temperature proxy per channel on footprints or points (see the module docstring).

    Attributes:
        channels: the channels: :class:`RadianceChannel` objects, AMSU-A numbers (``5``) or names
            (``"amsua-5"``); default AMSU-A 5-10.
        values: brightness temperatures ``[N, C]``, K.
        temperature_variable: the atmospheric temperature variable (``"temperature"``).
        surface_variable: surface temperature for the surface term: ``"auto"`` (``2m_temperature`` if the state
            has it, else no surface term), a variable name (required), or ``None`` (no surface term).
        surface_pressure_hpa: the bottom interface of the lowest layer, hPa.
        use_zenith: shift the weighting functions with the footprints' ``zenith_deg`` (``sec zeta``).
        channel_correlation: :math:`\rho` of the default noise (AR(1) across channels, in the given order).
        lat, lon, time, radius_km, kernel, method, zenith_deg, scan_position: see
            :class:`~appa_op_satellite._base.FootprintOperator`; ``radius_km=None`` gives point radiances.
    """

    channels: Any = attrs.field(factory=lambda: amsua_channels())
    temperature_variable: str = attrs.field(default="temperature")
    surface_variable: str | None = attrs.field(default="auto")
    surface_pressure_hpa: float = attrs.field(default=1013.25)
    use_zenith: bool = attrs.field(default=True)
    channel_correlation: float = attrs.field(default=0.2)

    _component_word: ClassVar[str] = "channel"

    @property
    def n_components(self) -> int:
        return len(self.channels)

    def _validate_components(self) -> None:
        owner = str(self.name)
        self.channels = _to_channels(owner, self.channels)
        p = self.surface_pressure_hpa
        if not isinstance(p, int | float | np.number) or not math.isfinite(p) or not 0 < p <= 1100:
            raise ValueError(f"{owner}: field 'surface_pressure_hpa' has value {p!r} outside (0, 1100]")
        rho = self.channel_correlation
        if not isinstance(rho, int | float | np.number) or not -1 < rho < 1:
            raise ValueError(f"{owner}: field 'channel_correlation' has value {rho!r} outside (-1, 1)")

    @classmethod
    def _count_components(cls, kwargs: dict[str, Any]) -> int:
        return len(_to_channels(cls.__name__, kwargs.get("channels", amsua_channels())))

    def default_noise(self) -> NoiseModel:
        std = np.array([c.std for c in self.channels])
        return channel_correlated_noise(std, float(self.channel_correlation), self.n_footprints)

    def _surface_channel(self, spec: StateSpec) -> int | None:
        owner = str(self.name)
        if self.surface_variable is None:
            return None
        if self.surface_variable == "auto":
            return spec.index("2m_temperature", owner=owner) if "2m_temperature" in spec.surface else None
        if self.surface_variable not in spec.surface:
            raise ValueError(
                f"{owner}: field 'surface_variable' has value {self.surface_variable!r}, which is not a surface "
                f"variable of the state; surface variables are {list(spec.surface)}"
            )
        return spec.index(self.surface_variable, owner=owner)

    def _vertical_weights(self, spec: StateSpec) -> tuple[np.ndarray, np.ndarray]:
        owner = str(self.name)
        if self.temperature_variable not in spec.atmospheric:
            raise ValueError(
                f"{owner}: field 'temperature_variable' has value {self.temperature_variable!r}, which is not an "
                f"atmospheric variable of the state; atmospheric variables are {list(spec.atmospheric)}"
            )
        for ch in self.channels:
            if not _resolved(ch, spec.levels):
                top, bottom = ch.half_maximum_layer()
                raise ValueError(
                    f"{owner}: channel {ch.name!r} (peak {ch.peak_hpa:g} hPa) has no model level in its "
                    f"half-maximum layer [{top:.0f}, {bottom:.0f}] hPa; levels are {list(spec.levels)}"
                )
        levels = np.array(spec.levels, dtype=np.float64)
        sfc = self._surface_channel(spec)
        if self.use_zenith and self.zenith_deg is not None:
            sec = 1.0 / np.cos(np.radians(np.asarray(self.zenith_deg)))
        else:
            sec = np.ones(1)
        k, k_s = layer_weights(self.channels, levels, float(self.surface_pressure_hpa), sec, surface=sfc is not None)
        channels = [spec.index(self.temperature_variable, lev, owner=owner) for lev in spec.levels]
        if sfc is not None:
            channels.append(sfc)
            k = np.concatenate([k, k_s[..., None]], axis=-1)
        return np.asarray(channels, dtype=np.int64), k

    def weights(self) -> tuple[np.ndarray, list[str]]:
        """The prepared weights ``[N or 1, C, L(+1)]`` and the state channels they act on (names)."""
        if self._vertical is None or self.spec is None:
            raise RuntimeError(f"{self.name}: call prepare(grid, spec, times) first")
        names = self.spec.channel_names()
        return self._vertical, [names[i] for i in self._profile_channels]  # type: ignore[union-attr]

    def _component_metadata(self) -> dict[str, np.ndarray]:
        return {
            "channel": np.array([c.name for c in self.channels]),
            "peak_hpa": np.array([c.peak_hpa for c in self.channels]),
        }

    @property
    def channel_names(self) -> list[str]:
        return [c.name for c in self.channels]
