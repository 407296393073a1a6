"""Small bundled stores: int16 packing and an atomic zarr (zip or directory) writer.

The bundled truth slice and climatology are packed to int16 with a per-variable ``scale_factor`` /
``add_offset`` (float16 would overflow for sea-level pressure and geopotential, ~1e5); xarray decodes the packing
transparently. The round-off is at most half a step, ``(max - min) / 65532 / 2``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["int16_packing", "write_zarr"]

_FILL = np.int16(-32768)
_QMAX = 32766


def int16_packing(values: np.ndarray) -> dict[str, Any]:
    """A zarr/xarray encoding that packs ``values`` (NaNs allowed) to int16 over their finite range."""
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    scale = (hi - lo) / (2 * _QMAX) if hi > lo else 1.0
    return {
        "dtype": "int16",
        "scale_factor": np.float64(scale),
        "add_offset": np.float64(0.5 * (hi + lo)),
        "_FillValue": _FILL,
    }


def write_zarr(ds: xr.Dataset, path: str | os.PathLike[str], encoding: dict[str, dict[str, Any]]) -> Path:
    """Write ``ds`` as a zarr (format 2, consolidated) store: a ``*.zip`` path gives one zipped file (what
    package data can ship), anything else a directory. The zip is written beside its destination and renamed into
    place, so a reader never sees a half-written file."""
    for var in ds.variables.values():
        var.encoding = {}
    out = Path(path)
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix != ".zip":
        ds.to_zarr(out, mode="w", zarr_format=2, consolidated=True, encoding=encoding)
        return out
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        store = Path(tmp) / "store.zarr"
        ds.to_zarr(store, mode="w", zarr_format=2, consolidated=True, encoding=encoding)
        part = Path(tmp) / "store.zip"
        with zipfile.ZipFile(part, "w", compression=zipfile.ZIP_STORED) as zf:
            for file in sorted(store.rglob("*")):
                if file.is_file():
                    zf.write(file, file.relative_to(store).as_posix())
        os.chmod(part, 0o644)
        os.replace(part, out)
    return out
