"""The installed dependencies are the ones pyproject.toml says adnify is tested with (issue 14)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, requires, version

import pytest
from packaging.requirements import Requirement

REQUIREMENTS = [Requirement(r) for r in requires("adnify") or [] if "extra ==" not in r]


@pytest.mark.parametrize("requirement", REQUIREMENTS, ids=lambda r: r.name)
def test_each_installed_dependency_is_inside_the_tested_range(requirement):
    try:
        installed = version(requirement.name)
    except PackageNotFoundError:
        pytest.fail(f"{requirement.name} is not installed")
    assert requirement.specifier.contains(installed, prereleases=True), (
        f"{requirement.name} {installed} is outside the tested range {requirement.specifier} in pyproject.toml: "
        "run the tests on it, then widen the range")


def test_the_main_dependencies_have_an_upper_bound():
    bounded = {r.name for r in REQUIREMENTS if any(s.operator in ("<", "<=", "==", "~=") for s in r.specifier)}
    assert {"torch", "timm", "accelerate", "datasets", "typer"} <= bounded
