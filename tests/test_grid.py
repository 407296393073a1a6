"""Tests of ``appa_core.grid.Grid``: layouts, exact cell areas, serialisation and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from appa_core.grid import Grid


def test_equiangular_with_poles() -> None:
    g = Grid.equiangular(5, 8)
    np.testing.assert_allclose(g.lat, [90, 45, 0, -45, -90])
    np.testing.assert_allclose(g.lon, np.arange(8) * 45.0)
    assert g.shape == (5, 8) and g.nlat == 5 and g.nlon == 8 and g.dlon == 45.0 and g.has_poles


def test_equiangular_without_poles_and_offset_longitudes() -> None:
    g = Grid.equiangular(4, 6, poles=False, lon0=330.0)
    np.testing.assert_allclose(g.lat, [67.5, 22.5, -22.5, -67.5])
    np.testing.assert_allclose(g.lon, [30, 90, 150, 210, 270, 330])
    assert not g.has_poles
    np.testing.assert_allclose(g.lat_bounds(), [90, 45, 0, -45, -90])


@pytest.mark.parametrize("poles", [True, False])
def test_area_weights_are_exact_zone_areas(poles: bool) -> None:
    g = Grid.equiangular(7, 12, poles=poles)
    w = g.area_weights()
    assert w.shape == (7,) and w.mean() == pytest.approx(1.0)
    b = np.deg2rad(g.lat_bounds())
    zone = 0.5 * (np.sin(b[:-1]) - np.sin(b[1:]))  # fraction of the sphere's area in each row
    np.testing.assert_allclose(w / w.sum(), zone, rtol=1e-12)
    assert zone.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(w, w[::-1])  # symmetric about the equator
    t = g.area_weights_tensor(dtype=torch.float64)
    assert t.shape == (7, 1) and t.dtype == torch.float64
    np.testing.assert_allclose(t[:, 0].numpy(), w)


def test_area_weighted_means_converge_to_sphere_averages() -> None:
    g = Grid.equiangular(181, 360)
    lat = np.deg2rad(g.lat)[:, None] * np.ones(g.shape)
    w = g.area_weights()[:, None]
    assert (w * np.sin(lat)).mean() == pytest.approx(0.0, abs=1e-12)  # odd field
    assert (w * np.sin(lat) ** 2).mean() == pytest.approx(1 / 3, abs=1e-4)  # <sin^2> = 1/3 on the sphere
    assert (w * np.ones(g.shape)).mean() == pytest.approx(1.0)


def test_pole_rows_are_half_cell_caps() -> None:
    g = Grid.equiangular(5, 4)  # bounds 90, 67.5, 22.5, -22.5, -67.5, -90
    w = g.area_weights()
    cap = 1 - np.sin(np.deg2rad(67.5))
    band = np.sin(np.deg2rad(67.5)) - np.sin(np.deg2rad(22.5))
    assert w[0] / w[1] == pytest.approx(cap / band)


def test_equality_hash_and_round_trip() -> None:
    g = Grid.equiangular(6, 12, poles=False)
    again = Grid.from_dict(json.loads(json.dumps(g.to_dict())))
    assert again == g and hash(again) == hash(g)
    assert g != Grid.equiangular(6, 12, poles=True) and g != Grid.equiangular(6, 10, poles=False)
    assert g.__eq__("grid") is NotImplemented
    assert not g.lat.flags.writeable  # grids are immutable


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"lat": [95.0, 0.0], "lon": [0.0, 180.0]}, r"Grid: field 'lat' has value 95.0 outside \[-90, 90\]"),
        ({"lat": [np.nan, 0.0], "lon": [0.0, 180.0]}, r"Grid: field 'lat' has value nan"),
        ({"lat": [0.0, 10.0], "lon": [0.0, 180.0]}, r"Grid: field 'lat' must be strictly descending"),
        ({"lat": [10.0], "lon": [0.0, 180.0]}, r"Grid: field 'lat' must be 1-D with at least 2 values"),
        ({"lat": [10.0, 0.0], "lon": [[0.0, 180.0]]}, r"Grid: field 'lon' must be 1-D"),
        ({"lat": [10.0, 0.0], "lon": [0.0, 360.0]}, r"Grid: field 'lon' has value 360.0 outside \[0, 360\)"),
        ({"lat": [10.0, 0.0], "lon": [-10.0, 180.0]}, r"Grid: field 'lon' has value -10.0"),
        ({"lat": [10.0, 0.0], "lon": [0.0, 100.0, 180.0]}, r"Grid: field 'lon' must be 3 evenly spaced"),
    ],
)
def test_bad_grids_raise(kwargs: dict[str, object], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        Grid(**kwargs)  # type: ignore[arg-type]


def test_equiangular_needs_two_points() -> None:
    with pytest.raises(ValueError, match=r"Grid.equiangular: need nlat >= 2 and nlon >= 2, got nlat=1, nlon=8"):
        Grid.equiangular(1, 8)
