"""appa-naturerun: a nature run from the jcm GCM (SPEEDY physics, T31 L8) in the WeatherBench2 layout.

``run_nature`` and ``main`` import jcm only when a run actually starts, so this package (and its conversion code)
imports without jcm, JAX or appa_core.
"""

from .cli import main
from .convert import WB2_LEVELS, convert_chunk, convert_static, lat_regrid_matrix, sigma_to_pressure
from .run import run_nature, truncate_store

__all__ = [
    "WB2_LEVELS",
    "convert_chunk",
    "convert_static",
    "lat_regrid_matrix",
    "main",
    "run_nature",
    "sigma_to_pressure",
    "truncate_store",
]
__version__ = "0.1.0"
