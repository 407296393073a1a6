"""State specification: which variables and pressure levels a state holds, and their channel order.

A state tensor is ``[B, T, C, H, W]`` in physical units. Channels are ordered: the surface variables in the
order given, then each atmospheric variable on each pressure level, levels in the order given
(``temperature@500`` is the channel of temperature on 500 hPa). Names follow ERA5 / WeatherBench2.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import attrs

__all__ = ["UNITS", "Channel", "StateSpec"]

#: Units of the ERA5 / WeatherBench2 variables appa-core knows by name.
UNITS: dict[str, str] = {
    "2m_temperature": "K",
    "2m_dewpoint_temperature": "K",
    "skin_temperature": "K",
    "sea_surface_temperature": "K",
    "10m_u_component_of_wind": "m s**-1",
    "10m_v_component_of_wind": "m s**-1",
    "10m_wind_speed": "m s**-1",
    "mean_sea_level_pressure": "Pa",
    "surface_pressure": "Pa",
    "total_precipitation_6hr": "m",
    "total_column_water_vapour": "kg m**-2",
    "temperature": "K",
    "u_component_of_wind": "m s**-1",
    "v_component_of_wind": "m s**-1",
    "vertical_velocity": "Pa s**-1",
    "specific_humidity": "kg kg**-1",
    "relative_humidity": "%",
    "geopotential": "m**2 s**-2",
    "wind_speed": "m s**-1",
    "land_sea_mask": "1",
    "geopotential_at_surface": "m**2 s**-2",
}


@attrs.frozen
class Channel:
    """One channel of a state: a variable, and its pressure level in hPa (``None`` for surface variables)."""

    variable: str
    level: int | None = None

    def __str__(self) -> str:
        return self.variable if self.level is None else f"{self.variable}@{self.level}"


def _names(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(str(v) for v in values)


def _levels(values: Iterable[float]) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


@attrs.frozen
class StateSpec:
    """Surface variables plus atmospheric variables on pressure levels.

    Attributes:
        surface: surface variable names, e.g. ``("2m_temperature", "mean_sea_level_pressure")``.
        atmospheric: atmospheric variable names, e.g. ``("temperature", "geopotential")``.
        levels: pressure levels in hPa shared by all atmospheric variables, e.g. ``(500, 850)``.
        units: units per variable (defaults from :data:`UNITS`).
    """

    surface: tuple[str, ...] = attrs.field(default=(), converter=_names)
    atmospheric: tuple[str, ...] = attrs.field(default=(), converter=_names)
    levels: tuple[int, ...] = attrs.field(default=(), converter=_levels)
    units: dict[str, str] = attrs.field(factory=dict, eq=False, hash=False)

    def __attrs_post_init__(self) -> None:
        names = self.surface + self.atmospheric
        if not names:
            raise ValueError("StateSpec: fields 'surface' and 'atmospheric' are both empty")
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"StateSpec: variable {sorted(dup)[0]!r} is listed twice")
        if self.atmospheric and not self.levels:
            raise ValueError(f"StateSpec: atmospheric variables {list(self.atmospheric)} need field 'levels'")
        if len(set(self.levels)) != len(self.levels):
            raise ValueError(f"StateSpec: field 'levels' has duplicates: {list(self.levels)}")
        for lev in self.levels:
            if not 0 < lev <= 1100:
                raise ValueError(f"StateSpec: field 'levels' has value {lev} hPa outside (0, 1100]")
        merged = {n: UNITS.get(n, "unknown") for n in names}
        merged.update(self.units)
        object.__setattr__(self, "units", merged)

    @property
    def channels(self) -> tuple[Channel, ...]:
        """All channels in tensor order."""
        out = [Channel(v) for v in self.surface]
        out += [Channel(v, lev) for v in self.atmospheric for lev in self.levels]
        return tuple(out)

    @property
    def n_channels(self) -> int:
        return len(self.surface) + len(self.atmospheric) * len(self.levels)

    @property
    def variables(self) -> tuple[str, ...]:
        return self.surface + self.atmospheric

    def channel_names(self) -> list[str]:
        """``["2m_temperature", "temperature@500", ...]``."""
        return [str(c) for c in self.channels]

    def is_surface(self, variable: str) -> bool:
        return variable in self.surface

    def index(self, variable: str, level: float | None = None, *, owner: str = "StateSpec") -> int:
        """Channel index of ``variable`` (at ``level`` hPa for atmospheric variables).

        Raises:
            ValueError: naming ``owner``, if the variable or level is not in the spec.
        """
        if variable in self.surface:
            if level is not None:
                raise ValueError(f"{owner}: variable {variable!r} is a surface variable; got level {level}")
            return self.surface.index(variable)
        if variable in self.atmospheric:
            if level is None:
                raise ValueError(
                    f"{owner}: variable {variable!r} is on pressure levels {list(self.levels)}; give a level"
                )
            if int(level) != level or int(level) not in self.levels:
                raise ValueError(
                    f"{owner}: level {level} hPa of {variable!r} is not modelled; levels are {list(self.levels)}"
                )
            return (
                len(self.surface) + self.atmospheric.index(variable) * len(self.levels) + self.levels.index(int(level))
            )
        raise ValueError(f"{owner}: variable {variable!r} is not modelled; known variables are {list(self.variables)}")

    def indices(self, variable: str, *, owner: str = "StateSpec") -> list[int]:
        """Channel indices of a variable: one for a surface variable, one per level (spec order) otherwise."""
        if variable in self.surface:
            return [self.index(variable, owner=owner)]
        if variable in self.atmospheric:
            return [self.index(variable, lev, owner=owner) for lev in self.levels]
        return [self.index(variable, owner=owner)]

    def check_variables(self, variables: Sequence[str], *, owner: str) -> None:
        """Raise a ``ValueError`` naming ``owner`` for the first variable not in the spec."""
        for v in variables:
            if v not in self.variables:
                raise ValueError(f"{owner}: variable {v!r} is not modelled; known variables are {list(self.variables)}")

    def to_dict(self) -> dict[str, object]:
        return {
            "surface": list(self.surface),
            "atmospheric": list(self.atmospheric),
            "levels": list(self.levels),
            "units": dict(self.units),
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> StateSpec:
        return cls(
            surface=data.get("surface", ()),  # type: ignore[arg-type]
            atmospheric=data.get("atmospheric", ()),  # type: ignore[arg-type]
            levels=data.get("levels", ()),  # type: ignore[arg-type]
            units=dict(data.get("units", {})),  # type: ignore[arg-type]
        )
