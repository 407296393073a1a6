r"""``appa assimilate CONFIG``: reanalysis, filtering and forecasting described by a TOML or YAML file.

One config names the prior, the window, the task, an optional truth, and the observations; the run builds the
operators, calls :meth:`appa_core.sampler.Sampler.posterior` once, and writes the posterior (zarr, atomically),
the config (echoed into the store's attributes) and, with a truth, a score table (``scores.csv``). The schema,
with a full example per task, is in the documentation (``assimilate``), and ``appa assimilate --example`` prints a
complete config; the short form::

    [prior]            path = "demo" | "<prior directory>"              (the latent diffusion prior)
                       or kind = "gaussian", climatology = "demo" | "<store>", rank, window, samples, spec, ...
    [window]           start = "2000-01-30T00", length = 5 (states)  or  hours = 24 (both ends included)
    [task]             kind = "reanalysis" | "filtering" | "forecast", horizon (hours, forecast), members, seed,
                       steps, sampler, guidance, solver, iters, tol, strategy, overlap, ar_context, context, ...
    [truth]            path = "demo" | "<WeatherBench2 store>"     (synthetic observations and scores)
    [[observations]]   reader = "station_csv" | "ioda" | ...,  path, variable, ...        (files, via the registry)
                       operator = "station" | "swath" | "radiance" | "pressure_level" | "masked_field" | ...,
                           keyword fields, simulate = true                                  (synthetic)
                       observing_system = "sparse" | "dense" | "demo"                       (appa_workflows.observing)
                       noise = {kind = "huber", std = 1.0, c = 1.345}                       (any entry)
    [output]           dir = "runs/reanalysis"

**Windows and tasks.** With ``L`` window states and ``dt`` the prior's timestep, the observations lie in
``[start, start + (L - 1) dt]``. Reanalysis writes the ``L`` states, filtering the last one, and a forecast of
``horizon`` hours samples ``L + horizon / dt`` states and writes the ``horizon / dt`` lead times after the window
(observations are refused outside the window). ``context = n`` conditions on ``n`` true states just before
``start`` (Appa's full-state initial conditions; needs a truth).

**Paths** in the config (prior, truth, climatology, observation files) are relative to the config file;
``[output] dir`` and ``--out`` to the current directory. Command-line flags override the config.

**Errors** are :class:`ConfigError` (a ``ValueError``) naming the section, the key and the bad value.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import difflib
import importlib
import inspect
import json
import math
import sys
import time
import tomllib
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
import xarray as xr
from torch import Tensor

from appa_core.grid import Grid
from appa_core.obs.base import ObsOperator
from appa_core.obs.config import ObsContext
from appa_core.priors.base import DiffusionPrior
from appa_core.sampler import Sampler
from appa_core.spec import StateSpec

__all__ = [
    "TASKS",
    "AssimilateConfig",
    "AssimilationResult",
    "ConfigError",
    "ObservationConfig",
    "load_config",
    "main",
    "run",
]

#: The tasks of ``[task] kind``.
TASKS = ("reanalysis", "filtering", "forecast")
#: Observing-system presets of ``observing_system = ...`` (``appa_workflows.observing.ObservingSystem``).
OBSERVING_PRESETS = ("sparse", "dense", "demo")

_OWNER = "AssimilateConfig"
_TOP_KEYS = ("prior", "window", "task", "truth", "observations", "output")
_PRIOR_DIFFUSION_KEYS = ("path", "kind", "device")
_PRIOR_GAUSSIAN_KEYS = (
    "kind", "climatology", "time", "rank", "window", "samples", "spec", "spatial_stride", "localization", "min_var",
)  # fmt: skip
_WINDOW_KEYS = ("start", "length", "hours")
#: ``[task]`` keys passed to :class:`~appa_core.sampler.Sampler` (config name -> Sampler field).
SAMPLER_KEYS: dict[str, str] = {
    "steps": "steps", "sampler": "sampler", "guidance": "guidance", "solver": "solver", "iters": "solver_iters",
    "tol": "solver_tol", "irls": "irls", "strategy": "strategy", "overlap": "overlap", "ar_context": "ar_context",
    "corrections": "corrections", "delta": "delta", "eta": "eta", "order": "order", "churn": "churn", "zeta": "zeta",
    "on_failure": "on_failure", "context_std": "context_std", "batch": "batch", "warm_start": "warm_start",
}  # fmt: skip
_TASK_KEYS = ("kind", "horizon", "members", "seed", "context", "device", "qc", *SAMPLER_KEYS)
_OUTPUT_KEYS = ("dir",)
_SOURCES = ("reader", "operator", "observing_system")
_ENTRY_COMMON = ("simulate", "noise")
_DEFAULT_STEPS: int = attrs.fields(Sampler).steps.default  # the calibrated default (docs/sampler.md)
_DEFAULT_MEMBERS = 4


class ConfigError(ValueError):
    """A bad ``appa assimilate`` configuration; the message names the section, the key and the value."""


# ============================================================================================ small parsers
def _fail(section: str, key: str, value: object, why: str) -> ConfigError:
    return ConfigError(f"{_OWNER}: [{section}] key {key!r} has value {_short(value)}; {why}")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _check_keys(section: str, table: Mapping[str, Any], allowed: Sequence[str]) -> None:
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{_OWNER}: [{section}] has unknown key {key!r}{hint}; allowed keys are {', '.join(allowed)}"
            )


def _table(raw: Mapping[str, Any], key: str, *, shorthand: str | None = None) -> dict[str, Any]:
    value = raw.get(key, {})
    if isinstance(value, str) and shorthand is not None:
        return {shorthand: value}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{_OWNER}: section [{key}] must be a table, got {_short(value)}")
    return dict(value)


def _int(section: str, key: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise _fail(section, key, value, f"must be an integer >= {minimum}")
    return int(value)


def _float(section: str, key: str, value: object, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise _fail(section, key, value, "must be a number")
    v = float(value)
    if not math.isfinite(v) or (positive and v <= 0):
        raise _fail(section, key, value, "must be a positive finite number" if positive else "must be finite")
    return v


def _time(section: str, key: str, value: object) -> np.datetime64:
    """ISO string, ``datetime``/``date`` (TOML and YAML parse bare dates) or ``datetime64`` -> naive UTC ns."""
    try:
        if isinstance(value, _dt.datetime):
            if value.tzinfo is not None:
                value = value.astimezone(_dt.UTC).replace(tzinfo=None)
            return np.datetime64(value.isoformat(), "ns")
        if isinstance(value, _dt.date):
            return np.datetime64(value.isoformat(), "ns")
        if isinstance(value, str):
            text = value.strip()
            if text.endswith("Z"):
                text = text[:-1]
            out = np.datetime64(text, "ns")
        elif isinstance(value, np.datetime64):
            out = value.astype("datetime64[ns]")
        else:
            raise TypeError
    except (TypeError, ValueError):
        raise _fail(section, key, value, "must be an ISO-8601 time such as '2000-01-30T00:00'") from None
    if np.isnat(out):
        raise _fail(section, key, value, "must be a time, not NaT")
    return out


def _iso(t: np.datetime64) -> str:
    return str(np.datetime_as_string(np.datetime64(t, "s"), unit="m"))


def _jsonable(value: Any) -> Any:
    """The config as plain JSON types (datetimes as ISO strings), for the store's attributes."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, np.datetime64):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _hours(step: np.timedelta64) -> float:
    return float(step / np.timedelta64(1, "h"))


# ============================================================================================ config classes
@attrs.frozen
class PriorConfig:
    """``[prior]``: the diffusion prior (``path``) or a climatological Gaussian (``kind = "gaussian"``).

    Attributes:
        kind: ``"diffusion"`` (a :class:`~appa_core.priors.latent.Prior` directory, or ``"demo"``) or ``"gaussian"``.
        path: prior directory or ``"demo"`` (diffusion). device: torch device of the prior and the sampler.
        climatology: ``"demo"`` (the bundled truth slice) or a WeatherBench2 store (gaussian).
        time: ``(start, end)`` selection of the climatology store (inclusive), or ``None`` for all of it.
        rank: principal components kept (default ``min(16, samples)``). window: states per prior window ``K``.
        samples: number of training windows (evenly spaced). spec: variables (default ``DEMO_SPEC``).
        spatial_stride: keep every n-th latitude/longitude. localization: Gaspari-Cohn half-width (km, dense).
        min_var: floor of the diagonal remainder (standardized units).
    """

    kind: str = "diffusion"
    path: str | None = None
    device: str = "cpu"
    climatology: str | None = None
    time: tuple[np.datetime64, np.datetime64] | None = None
    rank: int | None = None
    window: int = 2
    samples: int = 32
    spec: StateSpec | None = None
    spatial_stride: int = 1
    localization: float | None = None
    min_var: float = 1e-3


@attrs.frozen
class WindowConfig:
    """``[window]``: ``start`` and either ``length`` (states) or ``hours`` (``hours / dt + 1`` states)."""

    start: np.datetime64
    length: int | None = None
    hours: float | None = None

    def n_states(self, timestep: np.timedelta64) -> int:
        """Number of window states ``L`` for the prior's ``timestep``."""
        if self.length is not None:
            return self.length
        assert self.hours is not None
        n = self.hours / _hours(timestep)
        if abs(n - round(n)) > 1e-9:
            raise _fail(
                "window", "hours", self.hours, f"must be a multiple of the prior's timestep ({_hours(timestep):g} h)"
            )
        return round(n) + 1


@attrs.frozen
class TaskConfig:
    """``[task]``: the task, the ensemble and the sampler settings (``sampler`` holds :data:`SAMPLER_KEYS`)."""

    kind: str = "reanalysis"
    horizon: float | None = None
    members: int = _DEFAULT_MEMBERS
    seed: int = 0
    context: int = 0
    device: str | None = None
    sampler: dict[str, Any] = attrs.field(factory=dict)

    def horizon_states(self, timestep: np.timedelta64) -> int:
        """``horizon / dt`` (0 unless forecasting)."""
        if self.kind != "forecast":
            return 0
        assert self.horizon is not None
        n = self.horizon / _hours(timestep)
        if abs(n - round(n)) > 1e-9 or round(n) < 1:
            raise _fail(
                "task", "horizon", self.horizon, f"must be a positive multiple of the prior's timestep "
                f"({_hours(timestep):g} h)"
            )  # fmt: skip
        return round(n)


@attrs.frozen
class ObservationConfig:
    """One ``[[observations]]`` entry.

    Attributes:
        index: position in the list (1-based, as in messages). source: ``"reader"``, ``"operator"`` or
        ``"observing_system"``. name: the reader / operator / preset name. params: the entry's other keys (reader
        arguments, operator fields, preset arguments). simulate: replace the values by ``H(truth) + noise``.
        noise: the ``noise`` table (``kind`` + the noise model's arguments) or ``None``.
    """

    index: int
    source: str
    name: str
    params: dict[str, Any] = attrs.field(factory=dict)
    simulate: bool = False
    noise: dict[str, Any] | None = None

    @property
    def where(self) -> str:
        return f"[[observations]] #{self.index} ({self.source} {self.name!r})"


@attrs.frozen
class AssimilateConfig:
    """A parsed ``appa assimilate`` configuration (see the module docstring and ``docs/assimilate.md``).

    Attributes:
        prior, window, task: the sections. truth: ``"demo"``, a store path, or ``None``.
        observations: the ``[[observations]]`` entries. output_dir: where the run writes.
        base_dir: directory relative input paths are resolved against (the config file's).
        raw: the configuration as given (after command-line overrides), echoed into the output store.
    """

    prior: PriorConfig
    window: WindowConfig
    task: TaskConfig
    truth: str | None
    observations: tuple[ObservationConfig, ...]
    output_dir: Path
    base_dir: Path
    raw: dict[str, Any]

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], base_dir: str | Path = ".") -> AssimilateConfig:
        """Validate a configuration mapping (as read from TOML or YAML)."""
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{_OWNER}: the configuration must be a table/mapping, got {type(raw).__name__}")
        _check_keys("top level", raw, _TOP_KEYS)
        truth_table = _table(raw, "truth", shorthand="path")
        _check_keys("truth", truth_table, ("path",))
        truth = truth_table.get("path")
        if truth is not None and (not isinstance(truth, str) or not truth):
            raise _fail("truth", "path", truth, "must be 'demo' or the path of a WeatherBench2 zarr store")
        prior = _parse_prior(_table(raw, "prior", shorthand="path"))
        window = _parse_window(_table(raw, "window"))
        task = _parse_task(_table(raw, "task"), has_truth=truth is not None)
        obs_raw = raw.get("observations", [])
        if isinstance(obs_raw, Mapping):
            obs_raw = [obs_raw]
        if not isinstance(obs_raw, list):
            raise ConfigError(f"{_OWNER}: [[observations]] must be a list of tables, got {_short(obs_raw)}")
        observations = tuple(_parse_observation(i + 1, e, has_truth=truth is not None) for i, e in enumerate(obs_raw))
        output = _table(raw, "output")
        _check_keys("output", output, _OUTPUT_KEYS)
        out_dir = output.get("dir", "appa-assimilate")
        if not isinstance(out_dir, str) or not out_dir:
            raise _fail("output", "dir", out_dir, "must be a directory path")
        return cls(
            prior, window, task, truth, observations, Path(out_dir), Path(base_dir), _jsonable(dict(raw))
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """The configuration as given (JSON types), as echoed into the output store."""
        return json.loads(json.dumps(self.raw))

    def resolve(self, path: str) -> Path:
        """An input path relative to the config file (absolute and ``~`` paths unchanged)."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.base_dir / p


def _parse_prior(table: dict[str, Any]) -> PriorConfig:
    if not table:
        raise ConfigError(f"{_OWNER}: section [prior] is missing; give path = 'demo' (or a prior directory)")
    kind = table.get("kind", "gaussian" if "climatology" in table else "diffusion")
    if kind not in ("diffusion", "gaussian"):
        raise _fail("prior", "kind", kind, "expected 'diffusion' (with path) or 'gaussian' (with climatology)")
    if kind == "diffusion":
        _check_keys("prior", table, _PRIOR_DIFFUSION_KEYS)
        path = table.get("path")
        if not isinstance(path, str) or not path:
            raise _fail("prior", "path", path, "must be 'demo' or the directory of a saved prior")
        device = table.get("device", "cpu")
        if not isinstance(device, str):
            raise _fail("prior", "device", device, "must be a torch device name such as 'cpu' or 'cuda'")
        return PriorConfig(kind=kind, path=path, device=device)
    _check_keys("prior", table, _PRIOR_GAUSSIAN_KEYS)
    clim = table.get("climatology")
    if not isinstance(clim, str) or not clim:
        raise _fail("prior", "climatology", clim, "must be 'demo' or the path of a WeatherBench2 store")
    span = None
    if "time" in table:
        t = table["time"]
        if not isinstance(t, list | tuple) or len(t) != 2:
            raise _fail("prior", "time", t, "must be a [start, end] pair")
        span = (_time("prior", "time", t[0]), _time("prior", "time", t[1]))
    spec = None
    if "spec" in table:
        s = table["spec"]
        if not isinstance(s, Mapping):
            raise _fail("prior", "spec", s, "must be a table {surface = [...], atmospheric = [...], levels = [...]}")
        _check_keys("prior.spec", s, ("surface", "atmospheric", "levels"))
        try:
            spec = StateSpec(
                surface=tuple(s.get("surface", ())),
                atmospheric=tuple(s.get("atmospheric", ())),
                levels=tuple(s.get("levels", ())),
            )
        except (TypeError, ValueError) as exc:
            raise _fail("prior", "spec", s, str(exc)) from exc
    rank = table.get("rank")
    return PriorConfig(
        kind="gaussian",
        climatology=clim,
        time=span,
        rank=None if rank is None else _int("prior", "rank", rank, 1),
        window=_int("prior", "window", table.get("window", 2), 1),
        samples=_int("prior", "samples", table.get("samples", 32), 2),
        spec=spec,
        spatial_stride=_int("prior", "spatial_stride", table.get("spatial_stride", 1), 1),
        localization=None
        if table.get("localization") is None
        else _float("prior", "localization", table["localization"], positive=True),
        min_var=_float("prior", "min_var", table.get("min_var", 1e-3), positive=True),
    )


def _parse_window(table: dict[str, Any]) -> WindowConfig:
    _check_keys("window", table, _WINDOW_KEYS)
    if "start" not in table:
        raise ConfigError(f"{_OWNER}: [window] key 'start' is missing; give the first state's time")
    start = _time("window", "start", table["start"])
    if ("length" in table) == ("hours" in table):
        raise ConfigError(
            f"{_OWNER}: [window] needs exactly one of 'length' (states) or 'hours', got {sorted(table.keys())}"
        )
    if "length" in table:
        return WindowConfig(start, length=_int("window", "length", table["length"], 1))
    hours = _float("window", "hours", table["hours"])
    if hours < 0:
        raise _fail("window", "hours", hours, "must be >= 0")
    return WindowConfig(start, hours=hours)


def _parse_task(table: dict[str, Any], *, has_truth: bool) -> TaskConfig:
    _check_keys("task", table, _TASK_KEYS)
    kind = table.get("kind", "reanalysis")
    if kind not in TASKS:
        raise _fail("task", "kind", kind, f"expected one of {', '.join(map(repr, TASKS))}")
    horizon = table.get("horizon")
    if kind == "forecast":
        if horizon is None:
            raise ConfigError(f"{_OWNER}: [task] key 'horizon' (hours) is required for kind = 'forecast'")
        horizon = _float("task", "horizon", horizon, positive=True)
    elif horizon is not None:
        raise _fail("task", "horizon", horizon, f"only a forecast has a horizon, and kind is {kind!r}")
    context = _int("task", "context", table.get("context", 0), 0)
    if context and not has_truth:
        raise _fail("task", "context", context, "context states are taken from the truth; add a [truth] section")
    device = table.get("device")
    if device is not None and not isinstance(device, str):
        raise _fail("task", "device", device, "must be a torch device name such as 'cpu' or 'cuda'")
    sampler: dict[str, Any] = {"steps": _DEFAULT_STEPS}
    if kind == "forecast":
        sampler["strategy"] = "autoregressive"
    for key, field in SAMPLER_KEYS.items():
        if key in table:
            sampler[field] = table[key]
    for key in ("steps", "solver_iters", "corrections", "order", "batch"):
        if key in sampler:
            name = next(k for k, f in SAMPLER_KEYS.items() if f == key)
            sampler[key] = _int("task", name, sampler[key], 1)
    if "solver_tol" in sampler:  # "none" / false: fixed iterations, no convergence check (Appa: iters = 2)
        tol = sampler["solver_tol"]
        if tol is None or tol is False or (isinstance(tol, str) and tol.lower() == "none"):
            if "solver_iters" not in sampler:
                raise _fail("task", "tol", tol, "fixed iterations need 'iters' too (e.g. iters = 2, Appa's setting)")
            sampler["solver_tol"] = None
        else:
            sampler["solver_tol"] = _float("task", "tol", tol, positive=True)
    for key in ("overlap", "ar_context"):
        if key in sampler:
            sampler[key] = _int("task", key, sampler[key], 0)
    for key in ("irls", "warm_start"):
        if key in sampler and not isinstance(sampler[key], bool):
            raise _fail("task", key, sampler[key], "must be true or false")
    if "qc" in table:  # qc = false, or a [task.qc] table of appa_core.obs.qc.QC fields
        from appa_core.obs.qc import QC

        qc = table["qc"]
        if qc is False:
            sampler["qc"] = None
        elif isinstance(qc, dict):
            try:
                sampler["qc"] = QC(**qc)
            except (TypeError, ValueError) as exc:
                raise _fail("task", "qc", qc, f"invalid quality-control settings: {exc}") from exc
        elif qc is not True:
            raise _fail("task", "qc", qc, "must be false or a table of QC fields (bounds, background, k, ...)")
    return TaskConfig(
        kind=kind,
        horizon=horizon,
        members=_int("task", "members", table.get("members", _DEFAULT_MEMBERS), 1),
        seed=_int("task", "seed", table.get("seed", 0), 0),
        context=context,
        device=device,
        sampler=sampler,
    )


def _parse_observation(index: int, entry: object, *, has_truth: bool) -> ObservationConfig:
    where = f"[[observations]] #{index}"
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{_OWNER}: {where} must be a table, got {_short(entry)}")
    sources = [s for s in _SOURCES if s in entry]
    if len(sources) != 1:
        raise ConfigError(
            f"{_OWNER}: {where} needs exactly one of 'reader', 'operator' or 'observing_system', got keys "
            f"{sorted(entry)}"
        )
    source = sources[0]
    name = entry[source]
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{_OWNER}: {where} key {source!r} has value {_short(name)}; must be a name")
    simulate = entry.get("simulate", source == "observing_system")
    if not isinstance(simulate, bool):
        raise ConfigError(f"{_OWNER}: {where} key 'simulate' has value {_short(simulate)}; must be true or false")
    if source == "observing_system" and not simulate:
        raise ConfigError(f"{_OWNER}: {where} key 'simulate' is false, but an observing system is always simulated")
    if simulate and not has_truth:
        raise ConfigError(
            f"{_OWNER}: {where} simulates observations from the truth, but there is no [truth] section; add "
            "[truth] path = 'demo' (or a store)"
        )
    noise = entry.get("noise")
    if noise is not None:
        if not isinstance(noise, Mapping) or not isinstance(noise.get("kind"), str):
            raise ConfigError(
                f"{_OWNER}: {where} key 'noise' has value {_short(noise)}; must be a table with a 'kind' (e.g. "
                "{kind = 'huber', std = 1.0, c = 1.345})"
            )
        noise = dict(noise)
    params = {k: v for k, v in entry.items() if k not in (source, *_ENTRY_COMMON)}
    if source == "reader" and not isinstance(params.get("path"), str):
        raise ConfigError(f"{_OWNER}: {where} key 'path' has value {_short(params.get('path'))}; a reader needs a file")
    return ObservationConfig(index, source, name, params, simulate, noise)


# ============================================================================================ loading
def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> AssimilateConfig:
    """Read and validate a ``.toml`` / ``.yaml`` / ``.yml`` config.

    Args:
        path: the file. overrides: ``{"task.members": 8, "output.dir": "runs/x"}``-style overrides applied
            before validation (the command-line flags).
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{_OWNER}: config file {str(p)!r} does not exist")
    suffix = p.suffix.lower()
    text = p.read_text()
    if suffix == ".toml":
        try:
            raw: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{_OWNER}: config file {str(p)!r} is not valid TOML: {exc}") from exc
    elif suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:  # pragma: no cover - pyyaml is a common dependency
            raise ConfigError(f"{_OWNER}: reading {str(p)!r} needs PyYAML (pip install pyyaml)") from exc
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{_OWNER}: config file {str(p)!r} is not valid YAML: {exc}") from exc
        raw = {} if raw is None else raw
    else:
        raise ConfigError(f"{_OWNER}: config file {str(p)!r} must end in .toml, .yaml or .yml")
    if not isinstance(raw, dict):
        raise ConfigError(f"{_OWNER}: config file {str(p)!r} must hold a table/mapping at the top level")
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        table = raw.setdefault(section, {})
        if isinstance(table, str):  # shorthand `truth = "demo"`
            table = raw[section] = {"path": table}
        table[key] = value
    return AssimilateConfig.from_dict(raw, base_dir=p.resolve().parent)


# ============================================================================================ prior and truth
def _load_prior(cfg: AssimilateConfig) -> DiffusionPrior:
    pc = cfg.prior
    if pc.kind == "diffusion":
        from appa_core.priors.latent import Prior

        assert pc.path is not None
        if pc.path == "demo":
            return Prior.demo(device=pc.device)
        path = cfg.resolve(pc.path)
        if not path.is_dir():
            raise _fail("prior", "path", pc.path, f"{str(path)!r} is not a directory (a saved prior) nor 'demo'")
        try:
            return Prior.load(path, device=pc.device)
        except (FileNotFoundError, ValueError) as exc:
            raise _fail("prior", "path", pc.path, str(exc)) from exc
    return _gaussian_prior(cfg)


def _open_store(cfg: AssimilateConfig, section: str, key: str, value: str, **kwargs: Any) -> xr.Dataset:
    """``"demo"`` (the bundled truth slice) or a WeatherBench2 store, relative to the config file."""
    from appa_core.data import load_truth_slice, open_wb2

    if value == "demo":
        return load_truth_slice()
    path = cfg.resolve(value)
    if not path.exists() and "://" not in value:
        raise _fail(section, key, value, f"no such store {str(path)!r}")
    try:
        return open_wb2(path if "://" not in value else value, chunks=None, **kwargs)
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise _fail(section, key, value, str(exc)) from exc


def _gaussian_prior(cfg: AssimilateConfig) -> DiffusionPrior:
    """Climatological ``GaussianPrior`` from ``samples`` evenly spaced windows of ``window`` states."""
    from appa_core.data import DEMO_SPEC
    from appa_core.priors.gaussian import GaussianPrior
    from appa_core.state import dataset_to_tensor

    pc = cfg.prior
    assert pc.climatology is not None
    spec = pc.spec or DEMO_SPEC
    ds = _open_store(cfg, "prior", "climatology", pc.climatology)
    try:
        ds = ds[list(spec.variables)]
    except KeyError:
        missing = [v for v in spec.variables if v not in ds.data_vars]
        raise _fail("prior", "climatology", pc.climatology, f"lacks variable(s) {missing}") from None
    if pc.time is not None:
        ds = ds.sel(time=slice(*pc.time))
    if pc.spatial_stride > 1:
        s = pc.spatial_stride
        ds = ds.isel(latitude=slice(None, None, s), longitude=slice(None, None, s))
    times = np.asarray(ds["time"].values).astype("datetime64[ns]")
    k = pc.window
    n_windows = times.size - k + 1
    if n_windows < 2:
        raise _fail(
            "prior", "climatology", pc.climatology,
            f"has {times.size} time steps in the selection; need at least {k + 1} for 2 windows of {k} states",
        )  # fmt: skip
    steps = np.diff(times)
    if times.size > 1 and not np.all(steps == steps[0]):
        raise _fail("prior", "climatology", pc.climatology, "has unevenly spaced times; select a regular span")
    timestep = steps[0] if times.size > 1 else np.timedelta64(6, "h")
    starts = np.unique(np.linspace(0, n_windows - 1, min(pc.samples, n_windows)).round().astype(np.int64))
    need = np.unique((starts[:, None] + np.arange(k)[None, :]).reshape(-1))
    x, _, grid = dataset_to_tensor(ds.isel(time=need), spec)
    pos = np.searchsorted(need, starts[:, None] + np.arange(k)[None, :])
    samples = x[torch.as_tensor(pos)]  # [N, K, C, H, W]
    rank = pc.rank if pc.rank is not None else (None if pc.localization is not None else min(16, len(starts)))
    try:
        return GaussianPrior.from_data(
            samples, grid, spec, rank=rank, localization=pc.localization, timestep=timestep, min_var=pc.min_var
        )
    except ValueError as exc:
        raise ConfigError(f"{_OWNER}: [prior] (kind 'gaussian'): {exc}") from exc


def _on_grid(ds: xr.Dataset, grid: Grid, section: str, key: str, value: str) -> xr.Dataset:
    """``ds`` on the prior's grid: unchanged if equal, else the prior's points picked out of a finer store."""
    from appa_core.state import grid_from_dataset

    if grid_from_dataset(ds) == grid:
        return ds
    try:
        return ds.sel(latitude=grid.lat, longitude=grid.lon, method="nearest", tolerance=1e-3)
    except KeyError:
        g = grid_from_dataset(ds)
        raise _fail(section, key, value, f"its grid {g.shape} does not contain the prior's grid {grid.shape}") from None


@attrs.frozen
class _Truth:
    x: Tensor  # [n_ctx + L + H, C, H, W] physical units, on the prior's grid
    surface_geopotential: xr.DataArray | None


def _load_truth(cfg: AssimilateConfig, prior: DiffusionPrior, frame_times: np.ndarray) -> _Truth:
    from appa_core.state import dataset_to_tensor

    assert cfg.truth is not None
    ds = _open_store(cfg, "truth", "path", cfg.truth)
    times = np.asarray(ds["time"].values).astype("datetime64[ns]")
    missing = frame_times[~np.isin(frame_times, times)]
    if missing.size:
        span = f"{_iso(times[0])}..{_iso(times[-1])}" if times.size else "no times"
        raise ConfigError(
            f"{_OWNER}: [window] start {_iso(cfg.window.start)} needs the states {_iso(frame_times[0])}.."
            f"{_iso(frame_times[-1])} every {_hours(prior.timestep):g} h, which lie outside [truth] path "
            f"{cfg.truth!r} (it covers {span}; first missing state {_iso(missing[0])})"
        )
    ds = _on_grid(ds, prior.grid, "truth", "path", cfg.truth)
    try:
        x, _, _ = dataset_to_tensor(ds.sel(time=frame_times), prior.spec, prior.grid)
    except ValueError as exc:
        raise _fail("truth", "path", cfg.truth, str(exc)) from exc
    phis = None
    if "geopotential_at_surface" in ds.data_vars:
        phis = ds["geopotential_at_surface"]
        if "time" in phis.dims:
            phis = phis.isel(time=0)
        phis = phis.load()
    return _Truth(x, phis)


# ============================================================================================ observations
@attrs.frozen
class _Layout:
    """What operators are built on: the prior's grid and variables, and the observation window."""

    grid: Grid
    spec: StateSpec
    times: np.ndarray  # [L] the window (observation) times
    truth: Tensor | None  # [L, C, H, W] the truth on those times
    surface_geopotential: xr.DataArray | None


def _noise_model(oc: ObservationConfig) -> Any:
    from appa_core.plugins import get_registry

    assert oc.noise is not None
    params = dict(oc.noise)
    kind = params.pop("kind")
    cls = get_registry().noise_model(kind)
    try:
        return cls(**params)
    except TypeError as exc:
        raise TypeError(f"noise {kind!r}: {exc}") from exc


def _generator(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + 7919 * index)


def _build_observations(cfg: AssimilateConfig, layout: _Layout) -> list[ObsOperator]:
    """Every ``[[observations]]`` entry as prepared operators (on the window); errors name the entry."""
    from appa_core.plugins import UnknownComponentError

    ops: list[ObsOperator] = []
    for oc in cfg.observations:
        builder = {"reader": _from_reader, "operator": _from_operator, "observing_system": _from_observing}[oc.source]
        try:
            built = builder(cfg, oc, layout)
            for op in built:
                if not (op.prepared and op.grid == layout.grid and np.array_equal(op.window, layout.times)):
                    op.prepare(layout.grid, layout.spec, layout.times)
        except ConfigError:
            raise
        except (ValueError, TypeError, KeyError, OSError, ImportError, RuntimeError, UnknownComponentError) as exc:
            text = str(exc) if not isinstance(exc, KeyError) else f"missing key {exc}"
            hint = ""
            if cfg.task.kind == "forecast" and "window" in text:
                hint = " (a forecast assimilates observations inside [window] only, not in the horizon)"
            raise ConfigError(f"{_OWNER}: {oc.where}: {text}{hint}") from exc
        ops.extend(built)
    return ops


def _context(cfg: AssimilateConfig, oc: ObservationConfig, layout: _Layout) -> ObsContext:
    """What the entry's operators are built on (the operator protocol of :mod:`appa_core.obs.config`)."""
    aux = {} if layout.surface_geopotential is None else {"surface_geopotential": layout.surface_geopotential}
    return ObsContext(
        grid=layout.grid,
        spec=layout.spec,
        times=layout.times,
        truth=layout.truth,
        simulate=oc.simulate,
        generator=_generator(cfg.task.seed, oc.index),
        auxiliary=aux,
        name=oc.where,
    )


def _from_reader(cfg: AssimilateConfig, oc: ObservationConfig, layout: _Layout) -> list[ObsOperator]:
    from appa_core.plugins import get_registry

    reader = get_registry().obs_reader(oc.name)
    params = dict(oc.params)
    raw_path = params.pop("path")
    path = cfg.resolve(raw_path)
    if not path.exists():
        raise ConfigError(f"{_OWNER}: {oc.where} key 'path' has value {raw_path!r}: no such file {str(path)!r}")
    try:
        sig = inspect.signature(reader)
        named = {n for n, p in sig.parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    except (TypeError, ValueError):  # builtins / C callables: pass everything through
        named = {"window"}
    if "variable" in params and "variable" not in named:
        raise ConfigError(
            f"{_OWNER}: {oc.where} key 'variable' has value {params['variable']!r}, but reader {oc.name!r} takes "
            f"no 'variable' (its parameters: {', '.join(sorted(named))})"
        )
    if "window" in named and "window" not in params:
        params["window"] = (_iso_seconds(layout.times[0]), _iso_seconds(layout.times[-1]))
    if oc.noise is not None:
        params["noise"] = _noise_model(oc)
    out = reader(path, **params)
    ops = list(out) if isinstance(out, list | tuple) else [out]
    for op in ops:
        if not isinstance(op, ObsOperator):
            raise TypeError(f"reader {oc.name!r} returned a {type(op).__name__}, not an observation operator")
    from appa_core.obs.config import with_auxiliary

    context = _context(cfg, oc, layout)
    ops = [with_auxiliary(op, context) for op in ops]
    return [context.simulated(op) for op in ops] if oc.simulate else ops


def _iso_seconds(t: np.datetime64) -> str:
    return str(np.datetime_as_string(np.datetime64(t, "s"), unit="s"))


def _from_operator(cfg: AssimilateConfig, oc: ObservationConfig, layout: _Layout) -> list[ObsOperator]:
    """The registered operator's ``from_config(table, context)`` (its documented protocol; any installed plugin)."""
    from appa_core.plugins import get_registry

    cls = get_registry().operator(oc.name)
    params = dict(oc.params)
    if oc.noise is not None:
        params["noise"] = _noise_model(oc)
    ops = cls.from_config(params, _context(cfg, oc, layout))
    ops = list(ops) if isinstance(ops, list | tuple) else [ops]
    for op in ops:
        if not isinstance(op, ObsOperator):
            raise TypeError(f"{cls.__name__}.from_config returned a {type(op).__name__}, not an observation operator")
    return ops


def _from_observing(cfg: AssimilateConfig, oc: ObservationConfig, layout: _Layout) -> list[ObsOperator]:
    try:
        observing = importlib.import_module("appa_workflows.observing")
    except ImportError as exc:
        raise ConfigError(
            f"{_OWNER}: {oc.where} needs appa_workflows.observing, which cannot be imported: {exc}"
        ) from exc
    system_cls = observing.ObservingSystem
    factory = getattr(system_cls, oc.name, None) if oc.name in OBSERVING_PRESETS else None
    if not callable(factory):
        raise ConfigError(
            f"{_OWNER}: {oc.where} key 'observing_system' has value {oc.name!r}; expected one of "
            f"{', '.join(repr(p) for p in OBSERVING_PRESETS if callable(getattr(system_cls, p, None)))}"
        )
    system = factory()
    if oc.params:  # preset fields overridden by the entry's keys (e.g. stations = 50)
        if not attrs.has(type(system)):
            raise ValueError(f"observing system {oc.name!r} takes no settings, got {sorted(oc.params)}")
        system = attrs.evolve(system, **oc.params)
    assert layout.truth is not None
    seed = cfg.task.seed * 1_000_003 + 7919 * oc.index
    ops = list(system.build(layout.truth, layout.grid, layout.spec, layout.times, seed=seed))
    if oc.noise is not None:  # same locations, new noise model, values simulated again with it
        gen = _generator(cfg.task.seed, oc.index)
        ops = [
            attrs.evolve(op, noise=_noise_model(oc)).simulate(
                layout.truth, layout.grid, layout.spec, layout.times, generator=gen
            )
            for op in ops
        ]
    return ops


# ============================================================================================ run
@attrs.frozen
class AssimilationResult:
    """What :func:`run` produced.

    Attributes:
        dataset: the written posterior (``member, time, ...`` + observation diagnostics).
        store: its zarr path. scores: the score table (``None`` without a truth). scores_path: its CSV.
        n_obs: observations per operator name. operators: the operators built from the config (prepared on
        the window). seconds: wall time of the sampling. truth: the truth on the written times (WeatherBench2
        layout, physical units), ``None`` without a ``[truth]``. plots: the PNGs written by ``plot=True``.
    """

    dataset: xr.Dataset | None
    store: Path | None
    scores: Any
    scores_path: Path | None
    n_obs: dict[str, int]
    operators: list[ObsOperator]
    seconds: float
    truth: xr.Dataset | None = None
    plots: tuple[Path, ...] = ()


def run(
    cfg: AssimilateConfig,
    *,
    progress: bool = True,
    check: bool = False,
    echo: Callable[[str], None] | None = print,
    plot: bool = False,
) -> AssimilationResult:
    """Run the assimilation a config describes and write its outputs to ``cfg.output_dir``.

    Under ``torchrun`` (``WORLD_SIZE > 1``) every process runs this function: the process group is initialised
    from the environment (:func:`appa_core.distributed.init_distributed`), the members are sharded over the
    processes (:attr:`appa_core.sampler.Sampler.distributed`), every process writes its members into the one
    store, and rank 0 alone prints, scores and plots, from the whole store. The other ranks return their block of
    members and no scores.

    Args:
        cfg: a parsed config (:func:`load_config` / :meth:`AssimilateConfig.from_dict`).
        progress: tqdm bar over the diffusion steps.
        check: stop after loading the prior and truth and building the observations (nothing written).
        echo: where the summary goes (``None``: silent).
        plot: also write the maps of :func:`appa_workflows.plot.plot_posterior` (``map_*.png``,
            ``departures_*.png``) next to the store.
    """
    from appa_core.distributed import init_distributed
    from appa_core.obs.obsset import ObsSet
    from appa_core.sampler import save_zarr

    t_start = time.perf_counter()
    proc = init_distributed() if not check else None
    distributed = proc is not None and proc.world > 1
    main_rank = proc is None or proc.main
    say = echo if echo is not None and main_rank else (lambda _: None)
    prior = _load_prior(cfg)
    dt = prior.timestep
    n_win = cfg.window.n_states(dt)
    n_hor = cfg.task.horizon_states(dt)
    n_ctx = cfg.task.context
    start = cfg.window.start
    frame = (start + dt * np.arange(-n_ctx, n_win + n_hor)).astype("datetime64[ns]")
    win_times = frame[n_ctx : n_ctx + n_win]

    truth = _load_truth(cfg, prior, frame) if cfg.truth is not None else None
    layout = _Layout(
        prior.grid,
        prior.spec,
        win_times,
        None if truth is None else truth.x[n_ctx : n_ctx + n_win],
        None if truth is None else truth.surface_geopotential,
    )
    ops = _build_observations(cfg, layout)
    obs = ObsSet(ops) if ops else None
    n_obs = {} if obs is None else {name: sl.stop - sl.start for name, sl in obs.slices.items()}
    kind = cfg.task.kind
    say(
        f"appa assimilate: {kind}, {n_win} states from {_iso(start)} every {_hours(dt):g} h"
        + (f" + {n_hor} lead times" if n_hor else "")
        + f", {cfg.task.members} members, {cfg.task.sampler['steps']} steps, prior {_prior_label(cfg)}"
        + (f", {proc.world} processes" if distributed else "")  # type: ignore[union-attr]
    )
    say(
        "  observations: "
        + (", ".join(f"{name} ({m})" for name, m in n_obs.items()) if n_obs else "none (prior samples)")
    )
    if check:
        say("  config OK (--check: nothing sampled or written)")
        return AssimilationResult(None, None, None, None, n_obs, ops, time.perf_counter() - t_start)

    device = cfg.task.device or (cfg.prior.device if cfg.prior.kind == "diffusion" else "cpu")
    if distributed and str(device) == "cuda":
        device = str(proc.device)  # type: ignore[union-attr]  # one GPU per process (LOCAL_RANK)
    try:
        sampler = Sampler(prior, **cfg.task.sampler, device=device, progress=progress and main_rank)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{_OWNER}: [task]: {exc}") from exc
    context = None if truth is None or n_ctx == 0 else truth.x[:n_ctx]
    t0 = time.perf_counter()
    ds = sampler.posterior(
        obs=obs, start=start, length=n_win + n_hor, members=cfg.task.members, seed=cfg.task.seed, context=context
    )
    seconds = time.perf_counter() - t0
    post_times = frame[n_ctx:]
    if kind == "filtering":
        ds = ds.isel(time=[n_win - 1])
        keep = slice(n_win - 1, n_win)
    elif kind == "forecast":
        ds = ds.isel(time=slice(n_win, None))
        ds = ds.assign_coords(lead_time=("time", (post_times[n_win:] - post_times[n_win - 1]).astype("m8[ns]")))
        keep = slice(n_win, n_win + n_hor)
    else:
        keep = slice(0, n_win)
    ds.attrs.update(
        appa_task=kind,
        appa_config=json.dumps(cfg.to_dict()),
        appa_window=json.dumps({"start": _iso(start), "states": n_win, "timestep_hours": _hours(dt)}),
        appa_sampling_seconds=round(seconds, 3),
    )
    if cfg.truth is not None:  # where appa plot finds the truth again ("demo", an URL or an absolute path)
        ds.attrs["appa_truth"] = cfg.truth if cfg.truth == "demo" or "://" in cfg.truth else str(cfg.resolve(cfg.truth))
    out_dir = cfg.output_dir
    with warnings.catch_warnings():  # zarr 3 notes that consolidated metadata is not in its spec
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        store = save_zarr(ds, out_dir / "posterior.zarr")  # every process writes its members
    if distributed:
        if not main_rank:
            return AssimilationResult(ds, store, None, None, n_obs, ops, seconds)
        ds = xr.open_zarr(store).load()[list(ds.data_vars)]  # the whole ensemble (scores, summary, maps)
    table, scores_path, truth_ds = None, None, None
    if truth is not None:
        from appa_core.metrics import score_table
        from appa_core.sampler import split_diagnostics
        from appa_core.state import tensor_to_dataset

        truth_ds = tensor_to_dataset(truth.x[n_ctx:][keep], prior.spec, prior.grid, post_times[keep])
        table = score_table(split_diagnostics(ds)[0], truth_ds)
        scores_path = out_dir / "scores.csv"
        table.to_csv(scores_path)
    _summary(say, ds, n_obs, store, table, scores_path, seconds)
    plots: tuple[Path, ...] = ()
    if plot:
        from appa_workflows.plot import plot_posterior

        plots = tuple(plot_posterior(ds, out_dir, truth=truth_ds))
        say(f"  maps: {', '.join(p.name for p in plots)} in {out_dir}")
    return AssimilationResult(ds, store, table, scores_path, n_obs, ops, seconds, truth_ds, plots)


def qc_summary(counts: dict[str, dict[str, int]]) -> str:
    """The quality-control summary of a posterior (``json.loads(ds.attrs["appa_qc"])``), one line per operator."""
    lines = []
    for name, c in counts.items():
        rejected = c["total"] - c["pass"]
        detail = f" ({c['outside_plausible_range']} outside plausible range, {c['background_check']} background check)"
        lines.append(f"QC {name}: {c['pass']} of {c['total']} passed" + (detail if rejected else ""))
    return "\n".join(lines)


def _prior_label(cfg: AssimilateConfig) -> str:
    pc = cfg.prior
    if pc.kind == "diffusion":
        return repr(pc.path)
    return f"gaussian (climatology {pc.climatology!r})"


def _summary(
    say: Callable[[str], None],
    ds: xr.Dataset,
    n_obs: dict[str, int],
    store: Path,
    table: Any,
    scores_path: Path | None,
    seconds: float,
) -> None:
    for name in n_obs:
        key = f"obs_{''.join(c if c.isalnum() or c == '_' else '_' for c in name)}"
        if f"{key}_innovation" in ds:
            innov = np.asarray(ds[f"{key}_innovation"].values, dtype=np.float64)
            std = np.asarray(ds[f"{key}_std"].values, dtype=np.float64)
            rms = float(np.sqrt(np.mean((innov / std) ** 2)))
            say(f"  {name}: {innov.size} obs, normalised innovation RMS {rms:.3g} (|y - H(mean)| / noise std)")
    if "appa_qc" in ds.attrs:
        say("  " + qc_summary(json.loads(ds.attrs["appa_qc"])).replace("\n", "\n  "))
    sizes = ", ".join(f"{d} {n}" for d, n in ds.sizes.items() if not str(d).startswith("obs_"))
    say(f"  sampled in {seconds:.1f} s; wrote {store} ({sizes})")
    if table is not None:
        say(f"  scores ({scores_path}):")
        for line in table.to_string(float_format=lambda v: f"{v:.4g}").splitlines():
            say(f"    {line}")


# ============================================================================================ CLI
#: ``appa assimilate --example``: a complete config that runs on the bundled demo prior and truth in about a minute
#: on 2 CPU cores (24-hour reanalysis, 15 simulated stations, the demo's fast sampler settings).
EXAMPLE_CONFIG = """\
# appa assimilate example: a 24-hour reanalysis of the bundled truth slice with the bundled demo prior.
# Run:  appa assimilate example.toml --plot      (writes runs/example/posterior.zarr, scores.csv, map_*.png)

[prior]
path = "demo"                      # or the directory of a saved prior (Prior.save)

[window]
start = "2000-01-30T00:00"
hours = 24                         # the span, both ends included: 5 six-hourly states

[task]
kind = "reanalysis"                # or "filtering", "forecast" (with horizon = hours)
members = 4
steps = 16                         # the demo's settings: LMS, GMRES to 3e-2, at most 4 iterations
tol = 3e-2
iters = 4

[truth]
path = "demo"                      # for simulated observations and scores; optional

[[observations]]
operator = "station"               # from a CSV instead: reader = "station_csv", path = "stations.csv"
name = "synop_t2m"
variable = "2m_temperature"
lat = [52.5, 48.9, 40.4, 55.8, 35.7, -33.9, -23.5, 19.4, 40.7, 1.3, 28.6, -1.3, 64.1, -34.6, -37.8]
lon = [13.4, 2.4, 356.3, 37.6, 139.7, 18.4, 313.4, 260.9, 286.0, 103.8, 77.2, 36.8, 338.1, 301.6, 145.0]
error = 1.0                        # K
simulate = true                    # values = truth at the stations + noise

[output]
dir = "runs/example"
"""


def _build_parser() -> argparse.ArgumentParser:
    from appa_workflows._cli import Parser, nonnegative_int, positive_int

    parser = Parser(
        prog="appa assimilate",
        description="Reanalysis, filtering or forecasting from a TOML or YAML config.\n\nStart from the complete "
        "example config that appa assimilate --example > example.toml writes (it runs on the bundled demo prior "
        "and truth); every key is described on the assimilate page of the appa-core documentation.",
    )
    parser.add_argument("config", nargs="?", help="the config file (.toml, .yaml or .yml)")
    parser.add_argument("--out", help="output directory (overrides [output] dir)")
    parser.add_argument("--members", type=positive_int, help="ensemble size (overrides [task] members)")
    parser.add_argument("--steps", type=positive_int, help="diffusion steps (overrides [task] steps)")
    parser.add_argument("--seed", type=nonnegative_int, help="random seed (overrides [task] seed)")
    parser.add_argument("--check", action="store_true", help="validate the config and build the observations only")
    parser.add_argument("--plot", action="store_true", help="also write maps (map_*.png, departures_*.png)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--example", action="store_true", help="print a complete example config and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``appa assimilate CONFIG [--out DIR] [--members N] [--steps N] [--seed S] [--check] [--plot] [--quiet]``."""
    from appa_core.obs.qc import QCError

    parser = _build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.example:
        print(EXAMPLE_CONFIG, end="")
        return 0
    if args.config is None:
        parser.error("the following arguments are required: config (or --example)")
    overrides: dict[str, Any] = {}
    for flag, dotted in (("out", "output.dir"), ("members", "task.members"), ("steps", "task.steps")):
        if getattr(args, flag) is not None:
            overrides[dotted] = getattr(args, flag)
    if args.seed is not None:
        overrides["task.seed"] = args.seed
    try:
        cfg = load_config(args.config, overrides)
        run(cfg, progress=not args.quiet, check=args.check, plot=args.plot)
    except (ConfigError, QCError, FileExistsError) as exc:  # bad input: one clean line, no traceback
        print(f"appa assimilate: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    finally:  # under torchrun: leave the process group cleanly
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
