"""Shared test setup: single-threaded torch, and no leakage of the plugin switches or the cached registry."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_plugin_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests see no ``APPA_*PLUGINS*`` variable from the caller's shell, and a fresh default registry."""
    import appa_core.plugins.registry as registry

    for var in ("APPA_PLUGINS", "APPA_DISABLE_PLUGINS", "APPA_PLUGINS_AUTOLOAD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(registry, "_DEFAULT", None)
    yield
