"""Recipes: shipped files are complete and valid, overrides win and are typed, errors name the options."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from adnify.errors import AdnifyError
from adnify.train.recipes import (
    DEFAULTS,
    dump_resolved,
    list_recipes,
    load_recipe,
    parse_overrides,
    recipe_dir,
    resolve_lr,
)

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ["deit", "finetune", "finetune-labels", "finetune-swin", "finetune-vit", "mobilenet", "resnet", "swin", "vit"]


def test_recipe_dir_is_the_checkout_folder():
    assert recipe_dir() == REPO / "recipes"


def test_list_recipes_names_and_summaries():
    recipes = list_recipes()
    assert list(recipes) == sorted(recipes)
    assert set(SHIPPED) <= set(recipes)
    for name, summary in recipes.items():
        assert summary and "\n" not in summary, name


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recipe_loads_with_every_key(name):
    config = load_recipe(name)
    assert list(config) == list(DEFAULTS)
    for key, default in DEFAULTS.items():
        value = config[key]
        if value is not None and default is not None:
            assert type(value) is type(default), (key, value)
    # Shipped files spell out every key, so a change of DEFAULTS never silently changes a recipe.
    raw = yaml.safe_load((recipe_dir() / f"{name}.yaml").read_text())
    assert set(raw) - {"summary"} == set(DEFAULTS)
    assert config["lr"] is None and config["lr_base"] > 0  # the documented lr convention


def test_paper_numbers():
    deit, resnet, swin, ft = (load_recipe(n) for n in ("deit", "resnet", "swin", "finetune"))
    assert resolve_lr(deit, 512) == pytest.approx(5e-4)
    assert (deit["opt"], deit["weight_decay"], deit["epochs"], deit["warmup_epochs"]) == ("adamw", 0.05, 300, 5)
    assert (deit["mixup"], deit["cutmix"], deit["smoothing"], deit["reprob"], deit["drop_path"]) == (
        0.8, 1.0, 0.1, 0.25, 0.1)
    assert deit["aa"] == "rand-m9-mstd0.5-inc1"
    assert resolve_lr(resnet, 256) == pytest.approx(0.1)
    assert (resnet["opt"], resnet["momentum"], resnet["weight_decay"], resnet["epochs"]) == ("sgd", 0.9, 1e-4, 150)
    assert resnet["sched"] == "multistep" and resnet["decay_milestones"] == (60, 100, 140)
    assert resolve_lr(swin, 1024) == pytest.approx(1e-3)
    assert (swin["weight_decay"], swin["epochs"], swin["drop_path"]) == (0.05, 300, 0.2)
    # finetune: what kept the super-net and lifted the base-net on 40,400 photos (docs/finetune.md)
    assert (ft["labels"], ft["freeze_bn_stats"], ft["train_params"]) == ("none", True, "skip_norms")
    assert (ft["feature_kd"], ft["logit_kd"], ft["kd_weight_pre_logits"], ft["im_weight"]) == ("none", False, 0.0, 1.0)
    assert (ft["calibrate_skip_norms"], ft["mixup"], ft["cutmix"], ft["epochs"], ft["epoch_images"]) == (
        2000, 0.0, 0.0, 1, 6400)
    assert ft["eval_before_training"] and resolve_lr(ft, ft["batch_size"]) == pytest.approx(1e-4)


@pytest.mark.parametrize("family, recipe", [("convnet", "finetune-labels"), ("ViT", "finetune-vit"),
                                            ("DeiT", "finetune-vit"), ("Swin", "finetune-swin")])
def test_adnify_recipes_says_which_recipe_fine_tunes_which_pretrained_model_with_labels(family, recipe):
    summaries = {name: summary for name, summary in list_recipes().items() if "with labels" in summary}
    assert [name for name, summary in summaries.items() if family in summary.split(" with labels")[0]] == [recipe]


def test_finetune_swin_is_finetune_vit_sampling_the_middle_patterns():
    """Swin's first two stages are pairs: without middle patterns the sub-networks skipping them fell below the
    base-net (swin-finetune, docs/claims.md); every other key is the one measured for ViT."""
    swin, vit = load_recipe("finetune-swin"), load_recipe("finetune-vit")
    assert {key for key in DEFAULTS if swin[key] != vit[key]} == {"middle_prob"}
    assert (swin["middle_prob"], vit["middle_prob"]) == (0.5, 0.0)


def test_resolve_lr_explicit_and_sqrt():
    config = load_recipe("deit", {"lr": 3e-3})
    assert resolve_lr(config, 4096) == 3e-3
    config = load_recipe("deit", {"lr_base_scale": "sqrt"})
    assert resolve_lr(config, 2048) == pytest.approx(5e-4 * 2)


def test_overrides_win_and_are_typed():
    overrides = parse_overrides(
        ["lr=1e-3", "epochs=5", "mixup=0", "aa=null", "amp=false", "scale=0.5,1.0",
         "input_size=[3, 160, 160]", "warmup-epochs=2", "order=sequential", "checkpoint_every_steps=", "opt=lamb", "sched=on"]
    )
    assert overrides == {
        "lr": 1e-3, "epochs": 5, "mixup": 0.0, "aa": None, "amp": False, "scale": (0.5, 1.0),
        "input_size": (3, 160, 160), "warmup_epochs": 2, "order": "sequential", "checkpoint_every_steps": None,
        "opt": "lamb", "sched": "on",
    }
    assert type(overrides["lr"]) is float and type(overrides["mixup"]) is float  # "1e-3" is a str to PyYAML
    config = load_recipe("deit", overrides)
    for key, value in overrides.items():
        assert config[key] == value
    # Raw (unparsed) overrides are coerced too.
    assert load_recipe("resnet", {"epochs": "7", "lr": "1e-2", "hflip": 0})["epochs"] == 7


@pytest.mark.parametrize(
    "items, message",
    [
        (["epochs=ten"], "'epochs' in override 'epochs=.*' expects int"),
        (["epochs=1.5"], "'epochs' in override 'epochs=.*' expects int"),
        (["amp=maybe"], "'amp' in override 'amp=maybe' expects bool"),
        (["order=random"], "must be one of joint, sequential"),
        (["labels=yes"], "must be one of auto, none"),
        (["temperature=null"], "cannot be null"),
        (["scale=0.5"], "expects a list of 2 values"),
        (["scale=0.1,0.5,1"], "needs 2 values"),
        (["lr"], "must look like key=value"),
    ],
)
def test_bad_override_values(items, message):
    with pytest.raises(AdnifyError, match=message):
        parse_overrides(items)


def test_unknown_key_names_valid_keys_and_suggests():
    with pytest.raises(AdnifyError) as info:
        parse_overrides(["warmup_epoch=3"])
    message = str(info.value)
    assert "unknown recipe key 'warmup_epoch'" in message and "did you mean 'warmup_epochs'" in message
    assert all(key in message for key in DEFAULTS)
    with pytest.raises(AdnifyError, match="unknown recipe key 'xyz'.*valid keys are .*epochs"):
        load_recipe("deit", {"xyz": 1})


def test_unknown_key_in_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("# mine\nepochs: 3\nlearning_rate: 0.1\n")
    with pytest.raises(AdnifyError, match=f"unknown recipe key 'learning_rate' in {path}.*valid keys are"):
        load_recipe(str(path))


def test_unknown_recipe_lists_available():
    with pytest.raises(AdnifyError) as info:
        load_recipe("deitt")
    message = str(info.value)
    assert "unknown recipe 'deitt'" in message and "did you mean 'deit'" in message
    assert all(name in message for name in SHIPPED)
    with pytest.raises(AdnifyError, match="not found"):
        load_recipe("missing/recipe.yaml")


def test_recipe_from_path_partial_and_summary_key(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text("summary: a tiny run\nepochs: 2\nbatch_size: 8\nlr: 1.0e-3\n")
    config = load_recipe(path, {"epochs": 3})
    assert config["epochs"] == 3 and config["batch_size"] == 8 and config["lr"] == 1e-3
    assert "summary" not in config
    assert config["alpha"] == DEFAULTS["alpha"]  # unspecified keys take the defaults


@pytest.mark.parametrize("text, message", [("- a\n- b\n", "must be a mapping"), ("epochs: [1\n", "not valid YAML")])
def test_malformed_file(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(AdnifyError, match=message):
        load_recipe(path)


def test_dump_resolved_round_trips(tmp_path):
    config = load_recipe("swin", parse_overrides(["epochs=3", "input_size=3,224,224"]))
    out = tmp_path / "run" / "config.yaml"
    dump_resolved(config, out)
    assert out.read_text().startswith("#")
    assert load_recipe(out) == config
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_wheel_ships_recipes(tmp_path):
    """A non-editable install finds the recipes under adnify/_recipes."""
    # Stage only what the wheel needs, so the build neither sees nor writes anything else in the checkout.
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(REPO / "pyproject.toml", src)
    shutil.copytree(REPO / "adnify", src / "adnify", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "recipes", src / "recipes")
    for name in ("README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, src)
    if not (src / "README.md").exists():
        (src / "README.md").write_text("adnify\n")
    if not (src / "adnify" / "__init__.py").exists():  # the package root may not be written yet
        (src / "adnify" / "__init__.py").write_text('__version__ = "0.0.0"\n')
    dist = tmp_path / "dist"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)]
    subprocess.run(cmd, check=True, timeout=600)
    (wheel,) = dist.glob("adnify-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n for n in names if n.startswith("adnify/_recipes/") and n.endswith(".yaml"))
    assert shipped == sorted(f"adnify/_recipes/{name}.yaml" for name in SHIPPED)

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, timeout=600)
    probe = (
        "import adnify.train.recipes as r, json; "
        "print(json.dumps([str(r.recipe_dir()), sorted(r.list_recipes()), r.load_recipe('deit')['epochs']]))"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, check=True,
                         capture_output=True, text=True, timeout=300).stdout
    folder, names, epochs = __import__("json").loads(out.strip().splitlines()[-1])
    assert Path(folder) == site / "adnify" / "_recipes"
    assert names == SHIPPED and epochs == 300


# -- the loss keys (issue 28) ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet", "mobilenet", "deit", "vit", "swin", "finetune-labels"])
def test_classification_recipes_train_with_the_measured_loss_by_default(name):
    """Full label terms for both ends, logit distillation, no feature term (docs/training.md): no user has to
    know about alpha."""
    config = load_recipe(name)
    assert config["loss_preset"] is None and config["alpha"] is None
    assert (config["label_weight"], config["base_label_weight"], config["distill_weight"], config["feature_kd"],
            config["logit_kd"]) == (1.0, 1.0, 1.0, "none", True)


def test_the_paper_and_the_official_loss_are_one_named_override_away():
    paper = load_recipe("resnet", parse_overrides(["loss_preset=paper"]))
    assert (paper["alpha"], paper["feature_kd"], paper["logit_kd"], paper["kd_topk"]) == (0.5, "dense", True, None)
    official = load_recipe("resnet", parse_overrides(["loss_preset=official"]))
    assert (official["alpha"], official["feature_kd"], official["kd_topk"]) == (0.5, "none", 500)
    # Keys given beside the preset still win over it.
    assert load_recipe("resnet", parse_overrides(["loss_preset=official", "kd_topk=100"]))["kd_topk"] == 100


def test_alpha_and_explicit_weights():
    from adnify.train.losses import loss_weights

    assert loss_weights(load_recipe("resnet", {"alpha": 0.3})) == pytest.approx((0.3, 0.7))
    assert loss_weights(load_recipe("resnet", {"label_weight": 2.0})) == (2.0, 1.0)
    # An explicit weight replaces the alpha that a preset (or a recipe file) gave.
    assert loss_weights(load_recipe("resnet", {"loss_preset": "paper", "distill_weight": 0.2})) == (1.0, 0.2)
    with pytest.raises(AdnifyError, match="either alpha"):
        load_recipe("resnet", {"alpha": 0.5, "label_weight": 1.0})


def test_feature_kd_written_as_a_boolean_by_older_runs_still_loads():
    assert load_recipe("resnet", {"feature_kd": True})["feature_kd"] == "dense"
    assert load_recipe("resnet", {"feature_kd": False})["feature_kd"] == "none"


@pytest.mark.parametrize("items, message", [
    (["loss_weight=1"], "unknown recipe key 'loss_weight'"),
    (["distill_weight=-1"], "'distill_weight' .* must be >= 0, got -1.0"),
    (["base_label_weight=-0.5"], "'base_label_weight' .* must be >= 0"),
    (["feature_kd=all"], "must be one of none, pooled, dense"),
    (["kd_topk=0"], "'kd_topk' .* must be >= 1"),
    (["feature_kd_stages=[0]"], "'feature_kd_stages' .* must be >= 1"),
    (["feature_kd_stages=[1,1]"], "names a stage twice"),
    (["teacher_weight=-1"], "'teacher_weight' .* must be >= 0"),
    (["lr=-1"], "'lr' .* must be > 0, got -1.0"),
    (["lr_base_size=0"], "'lr_base_size' .* must be >= 1"),
    (["momentum=0"], "momentum must be above 0 with opt sgd"),
    (["smoothing=1e9"], "'smoothing' .* must be in \\[0, 1\\)"),
    (["workers=-1"], "'workers' .* must be >= 0"),
    (["seed=-1"], "'seed' .* must be in \\[0, 4294967295\\]"),
    (["eval_every_epochs=-1"], "0 = never"),
])
def test_bad_loss_and_numeric_values_are_one_line_naming_the_key_and_what_is_allowed(items, message):
    with pytest.raises(AdnifyError, match=message) as err:
        load_recipe("resnet", parse_overrides(items))
    assert "\n" not in str(err.value)


def test_momentum_zero_is_fine_without_nesterov():
    assert load_recipe("resnet", {"momentum": 0.0, "opt": "momentum"})["momentum"] == 0.0
