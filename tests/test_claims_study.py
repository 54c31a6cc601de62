"""benchmarks/claims.py: what a user sees on bad input, and that a finished variant is never trained again."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "claims.py"


@pytest.fixture(scope="module")
def claims():
    spec = importlib.util.spec_from_file_location("claims_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(claims, monkeypatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", ["claims.py", *args])
    claims.main()


def study_of(claims, setting: str = "cifar10") -> dict:
    return claims.study_record(setting, claims.SETTINGS[setting], claims.SETTINGS[setting]["seeds"])


def finished(top1: float) -> dict:
    return {"top1": {"FFFF": top1, "TTTT": top1 - 1.0}, "macs": {"FFFF": 2e7, "TTTT": 1e7}, "train_s": 60.0}


def test_a_missing_dataset_folder_is_named_with_what_to_pass(claims, monkeypatch, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run(claims, monkeypatch, "-o", str(tmp_path / "out"), "--data-root", str(tmp_path / "nowhere"))
    assert e.value.code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(tmp_path / "nowhere" / "cifar10") in err and "--data-root" in err
    assert not (tmp_path / "out").exists()


def test_an_unknown_variant_is_refused_with_the_choices(claims, monkeypatch, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run(claims, monkeypatch, "-o", str(tmp_path / "out"), "--variants", "adn,bogus")
    err = capsys.readouterr().err
    assert "bogus" in err and "logit_only" in err


def test_a_folder_holding_another_study_is_refused_unless_forced(claims, monkeypatch, tmp_path, capsys):
    (tmp_path / "data" / "cifar10").mkdir(parents=True)
    out = tmp_path / "out"
    out.mkdir()
    (out / "study.json").write_text(json.dumps(study_of(claims, "lite0-tiny")))
    (out / "runs.json").write_text(json.dumps({"adn@0": finished(40.0)}))
    with pytest.raises(SystemExit):
        run(claims, monkeypatch, "-o", str(out), "--data-root", str(tmp_path / "data"), "--variants", "adn")
    err = capsys.readouterr().err
    assert "lite0-tiny" in err and "--force" in err
    assert json.loads((out / "runs.json").read_text()) == {"adn@0": finished(40.0)}  # nothing lost

    # The same setting with another schedule is another study too.
    other = study_of(claims)
    other["overrides"]["lr_base"] = 0.4
    (out / "study.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit):
        run(claims, monkeypatch, "-o", str(out), "--data-root", str(tmp_path / "data"), "--variants", "adn")
    assert "schedule" in capsys.readouterr().err


def test_finished_variants_are_summarised_not_trained_again(claims, monkeypatch, tmp_path, capsys):
    (tmp_path / "data" / "cifar10").mkdir(parents=True)
    out = tmp_path / "out"
    out.mkdir()
    (out / "study.json").write_text(json.dumps(study_of(claims)))
    (out / "runs.json").write_text(json.dumps({"adn@0": finished(70.0), "adn@1": finished(72.0),
                                               "super@0": finished(74.0), "super@1": finished(75.0)}))

    def no_training(*args, **kwargs):
        raise AssertionError("a finished variant was trained again")

    monkeypatch.setattr(claims, "train_variant", no_training)
    run(claims, monkeypatch, "-o", str(out), "--data-root", str(tmp_path / "data"), "--variants", "adn,super")

    summary = json.loads((out / "claims.json").read_text())
    assert summary["adn"]["top1"] == {"FFFF": 71.0, "TTTT": 70.0}
    assert summary["adn"]["top1_spread"] == {"FFFF": 1.0, "TTTT": 1.0}
    assert summary["super"]["seeds"] == 2 and summary["super"]["top1"]["FFFF"] == 74.5
    assert set(summary["_runs"]) == {"adn@0", "adn@1", "super@0", "super@1"}
    table = (out / "claims.md").read_text()
    assert "| adn | 71.00 ± 1.00 | 70.00 ± 1.00 |" in table
    assert "done:" in capsys.readouterr().out


def test_the_fair_protocol_reports_each_variant_at_its_own_best_learning_rate(claims):
    """--lr-factors: every variant is summarised at the factor whose seeds' mean end top-1 is highest."""
    results = {"adn@0": finished(50.0), "adn@1": finished(52.0), "adn@0@lr2": finished(53.0),
               "adn@1@lr2": finished(53.0), "super@0": finished(60.0), "super@0@lr2": finished(55.0)}
    summary = claims.summarise(results)
    assert summary["adn"]["lr_factor"] == 2.0 and summary["adn"]["top1"]["FFFF"] == 53.0
    assert summary["adn"]["by_lr"] == {"1": {"FFFF": 51.0, "TTTT": 50.0}, "2": {"FFFF": 53.0, "TTTT": 52.0}}
    assert summary["super"]["lr_factor"] == 1.0 and summary["super"]["seeds"] == 1
    assert claims.run_key("adn", 1, 2.0) == "adn@1@lr2" and claims.run_key("adn", 1, 1.0) == "adn@1"


def test_bad_lr_factors_are_one_line(claims, monkeypatch, tmp_path, capsys):
    (tmp_path / "cifar10").mkdir()
    with pytest.raises(SystemExit):
        run(claims, monkeypatch, "-o", str(tmp_path / "out"), "--data-root", str(tmp_path), "--lr-factors", "1,-2")
    assert "--lr-factors must be positive" in capsys.readouterr().err
