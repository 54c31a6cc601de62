"""Model names resolve as a person would look for them (issue 15)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from adnify.cli import app
from adnify.errors import AdnifyError
from adnify.io.models import list_model_names, rank_candidates, resolve_model_name

runner = CliRunner()


@pytest.mark.parametrize("prefix, expected_first", [("resnet", "resnet50"), ("efficientnet", "efficientnet_b0")])
def test_an_ambiguous_prefix_names_the_likely_model_first_and_how_to_list_all(prefix, expected_first):
    with pytest.raises(AdnifyError) as e:
        resolve_model_name(prefix)
    message = str(e.value)
    shown = message.split("ambiguous: ")[1].split(", ")
    assert shown[0] == expected_first
    assert "in all" in message and f"adnify models '{prefix}*'" in message


def test_plain_numbers_come_before_other_suffixes():
    ranked = rank_candidates("resnet", ["resnet50d", "resnet_custom_variant", "resnet18", "resnet50"])
    assert ranked.index("resnet18") < ranked.index("resnet50d") < ranked.index("resnet_custom_variant")
    assert ranked.index("resnet50") < ranked.index("resnet50d")


def test_models_command_lists_the_ranked_names():
    result = runner.invoke(app, ["models", "resnet", "--limit", "3"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("resnet50") and "more" in lines[-1]
    assert [n for n, _ in list_model_names("resnet")][:1] == ["resnet50"]
