"""The template registers its operator through the ``appa.plugins`` entry point and the pluggy hook."""

from __future__ import annotations

import importlib.metadata

import pytest

import appa_op_template.plugin
from appa_core.plugins import Registry, load_plugins
from appa_core.testing import contract_from_example, run_contract
from appa_op_template import GlobalMeanOp


def test_hook_registers_the_operator() -> None:
    reg = Registry()
    info = reg.register_plugin(appa_op_template.plugin, name="template", aliases=True)
    assert info.ok and info.components == ["template:global_mean"]
    assert reg.operator("global_mean") is reg.operator("template:global_mean") is GlobalMeanOp


def test_example_passes_the_contract() -> None:
    reg = Registry()
    reg.register_plugin(appa_op_template.plugin, name="template")
    example = reg.component("operator", "template:global_mean").example
    results = run_contract(contract_from_example(example, "template:global_mean"))
    assert {r.status for r in results if r.test != "test_bad_inputs_raise"} == {"passed"}, results


def test_installed_entry_point_loads_with_bare_names() -> None:
    try:
        importlib.metadata.distribution("appa-op-template")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("appa-op-template is not installed (pip install -e plugins/template)")
    reg = load_plugins(env={"APPA_PLUGINS": "template"})
    info = reg.plugins["template"]
    assert info.ok and info.distribution == "appa-op-template" and info.version == "0.1.0"
    assert reg.operator("global_mean") is GlobalMeanOp
