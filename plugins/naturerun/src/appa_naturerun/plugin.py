"""Registration with appa-core's plugin registry (entry point group ``appa.plugins``).

Imports fine without appa_core (the nature run itself runs in a jcm environment that has no torch): the hook is
then a plain function, never called.
"""

from __future__ import annotations

from pathlib import Path

try:  # pragma: no cover - depends on what is installed
    from appa_core.plugins import hookimpl
except Exception:

    def hookimpl(func=None, **_kwargs):  # type: ignore[no-redef]
        if func is None:
            return lambda f: f
        return func


class NatureRunSource:
    """Data source ``naturerun``: generates (needs jcm) and opens nature-run stores in the WeatherBench2 layout."""

    name = "naturerun"
    description = "jcm GCM (SPEEDY physics, T31 L8) nature run, 6-hourly, WeatherBench2 layout, 48x96 equiangular"
    requires = ("jcm==3.0.0",)

    @staticmethod
    def available() -> bool:
        """Whether the GCM (jcm) is importable here (opening stores never needs it)."""
        import importlib.util

        return importlib.util.find_spec("jcm") is not None

    @staticmethod
    def generate(out: str | Path, **kwargs) -> Path:
        """Same arguments as :func:`appa_naturerun.run.run_nature`."""
        from .run import run_nature

        return run_nature(out, **kwargs)

    @staticmethod
    def open(path: str | Path):
        """Open a store written by :meth:`generate` (xarray Dataset, lazy, no dask needed)."""
        import xarray as xr

        return xr.open_zarr(str(path), consolidated=True, chunks=None)

    @staticmethod
    def main(argv: list[str] | None = None) -> int:
        """The ``appa-naturerun`` command line (also ``appa naturerun ...``, registered as a command)."""
        from .cli import main

        return main(argv)


@hookimpl
def appa_register_data_sources(registry) -> None:
    registry.add_data_source("naturerun", NatureRunSource)


@hookimpl
def appa_register_commands(register) -> None:
    register("naturerun", "appa_naturerun.cli:main", help="generate a nature run with the jcm GCM")
