r"""Geometry on the sphere shared by the whole repository: one Earth radius, one great-circle distance, one
Gaspari-Cohn taper.

* :data:`EARTH_RADIUS_KM` = 6371.0088 km, the IUGG mean radius :math:`R_1 = (2a + b)/3` of WGS84.
* :func:`great_circle_km`: the haversine formula,
  :math:`d = 2R \arcsin\sqrt{\sin^2\frac{\Delta\varphi}{2} + \cos\varphi_1\cos\varphi_2\sin^2\frac{\Delta\lambda}{2}}`,
  accurate to rounding at every distance (unlike the spherical law of cosines near 0); :func:`haversine` is the
  quantity under the square root, for tests of the form ``d <= r`` without the ``arcsin``.
* :func:`gaspari_cohn`: the fifth-order piecewise rational function of Gaspari & Cohn (1999, eq. 4.10), a
  compactly supported correlation. **Convention:** its argument is :math:`z = d / c` with :math:`c` the
  *half-width*: the taper is 1 at :math:`z = 0`, 0.208 at :math:`z = 1` and 0 for :math:`z \ge 2`, i.e. the
  support (the "cut-off radius" of LETKF codes) is :math:`2c`. Pass ``distance / (cutoff / 2)`` for a cut-off.

Every function takes numpy arrays or torch tensors (and returns the same kind, broadcasting like the
arguments); angles are in degrees, distances in km.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

__all__ = ["EARTH_RADIUS_KM", "gaspari_cohn", "great_circle_km", "haversine"]

#: Mean Earth radius, km (IUGG :math:`R_1` of WGS84): the one radius for great-circle distances in appa.
EARTH_RADIUS_KM = 6371.0088

ArrayT = TypeVar("ArrayT", np.ndarray, Tensor)


def _xp(*arrays: Any) -> Any:
    return torch if any(isinstance(a, Tensor) for a in arrays) else np


def haversine(lat1: Any, lon1: Any, lat2: Any, lon2: Any) -> Any:
    r"""The haversine of the central angle, in [0, 1], for points in degrees (numpy or torch, broadcasting):

    .. math:: \mathrm{hav}(d/R) = \sin^2\tfrac{\Delta\varphi}{2}
              + \cos\varphi_1\cos\varphi_2\sin^2\tfrac{\Delta\lambda}{2}.
    """
    xp = _xp(lat1, lon1, lat2, lon2)
    p1, p2 = xp.deg2rad(lat1), xp.deg2rad(lat2)
    dlam = xp.deg2rad(lon2 - lon1)
    return xp.sin(0.5 * (p2 - p1)) ** 2 + xp.cos(p1) * xp.cos(p2) * xp.sin(0.5 * dlam) ** 2


def great_circle_km(lat1: Any, lon1: Any, lat2: Any, lon2: Any) -> Any:
    """Great-circle distance in km between points given in degrees (haversine; numpy or torch, broadcasting)."""
    xp = _xp(lat1, lon1, lat2, lon2)
    hav = haversine(lat1, lon1, lat2, lon2)
    return 2.0 * EARTH_RADIUS_KM * xp.arcsin(xp.sqrt(xp.clip(hav, 0.0, 1.0)))


def gaspari_cohn(z: ArrayT) -> ArrayT:
    r"""Gaspari-Cohn (1999, eq. 4.10) taper of ``z = distance / c``, ``c`` the half-width (0 for ``z >= 2``).

    .. math:: GC(z) = \begin{cases}
              -\tfrac14 z^5 + \tfrac12 z^4 + \tfrac58 z^3 - \tfrac53 z^2 + 1, & 0 \le z \le 1\\
              \tfrac1{12} z^5 - \tfrac12 z^4 + \tfrac58 z^3 + \tfrac53 z^2 - 5z + 4 - \tfrac23 z^{-1}, & 1 < z < 2\\
              0, & z \ge 2 \end{cases}

    Args:
        z: ``[...]`` distances over the half-width (numpy or torch; the sign is ignored).

    Returns:
        the taper ``[...]`` in [0, 1], float64 for numpy input, the input's dtype for torch.
    """
    xp = _xp(z)
    z = xp.abs(z) if xp is torch else np.abs(np.asarray(z, dtype=np.float64))
    z2 = z * z
    z3 = z2 * z
    inner = -0.25 * z3 * z2 + 0.5 * z2 * z2 + 0.625 * z3 - 5.0 / 3.0 * z2 + 1.0
    safe = xp.where(z > 1.0, z, xp.ones_like(z))  # no division by 0 in the branch that is not taken
    outer = z3 * z2 / 12.0 - 0.5 * z2 * z2 + 0.625 * z3 + 5.0 / 3.0 * z2 - 5.0 * z + 4.0 - 2.0 / (3.0 * safe)
    out = xp.where(z <= 1.0, inner, xp.where(z < 2.0, outer, xp.zeros_like(z)))
    return xp.clip(out, 0.0, 1.0)
