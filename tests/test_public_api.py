"""The public API is what ``adnify.__all__`` and the ``__all__`` of ``adnify.PUBLIC_MODULES`` name,
reachable the way the docs show it, and ``import adnify`` changes nothing outside the package."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import adnify


def fresh_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_public_name_exists():
    for name in adnify.__all__:
        assert hasattr(adnify, name), name
    for module_name in adnify.PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        assert module.__all__, module_name
        for name in module.__all__:
            assert hasattr(module, name), f"{module_name}.{name}"


def test_subpackages_are_attributes_after_import_adnify_and_cost_nothing_until_used():
    out = fresh_python(
        "import sys, adnify\n"
        "print(sorted(m for m in ('adnify.detection', 'adnify.report', 'adnify.train', 'accelerate', 'datasets')\n"
        "             if m in sys.modules))\n"
        "print(callable(adnify.detection.fpn_backbone), callable(adnify.export.export_dynamic),\n"
        "      callable(adnify.report.select_within_budget), callable(adnify.train.train))\n"
    )
    assert out.splitlines() == ["[]", "True True True True"]


def test_import_adnify_installs_no_import_hook():
    out = fresh_python("import sys; before = list(sys.meta_path); import adnify; print(sys.meta_path == before)")
    assert out.strip() == "True"
    with pytest.raises(ModuleNotFoundError):  # module paths from before 0.1.0 were never released
        importlib.import_module("adnify.costs")
    with pytest.raises(AttributeError):
        adnify.costs  # noqa: B018
