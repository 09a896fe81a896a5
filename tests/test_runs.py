"""The run grid, run ids and the training config's cross-key checks."""

import pytest

from workflow_scripts.config import validate_config
from workflow_scripts.errors import InputError
from workflow_scripts.runs import Run, check_training_config, expand_grid, run_settings, targets_key


def config_with(**training):
    return validate_config({"training": training})


def test_grid_is_the_product_of_the_lists():
    config = config_with(methods=["lora", "frozen", "lora_random"], targets=[["v_proj"], ["v_proj", "q_proj"]],
                         ranks=[8, 32], seeds=[0, 1], folds=[1, 2, 3])
    runs = expand_grid(config, folds_of=None)
    # LoRA methods: 2 targets x 2 ranks; frozen: one variant; each x 2 seeds x 3 folds.
    assert len(runs) == (2 * 2 * 2 + 1) * 2 * 3 == 54
    assert sum(r.method == "frozen" for r in runs) == 6
    assert {r.targets for r in runs if r.method == "lora"} == {"v_proj", "q_proj+v_proj"}
    assert len({r.id for r in runs}) == len(runs)


def test_all_folds_are_read_through_the_callback():
    config = config_with(methods=["frozen"], folds="all")
    asked = []

    def folds_of(dataset, protocol):
        asked.append((dataset, protocol))
        return [1, 2, 3, 4, 5]

    assert [r.fold for r in expand_grid(config, folds_of)] == [1, 2, 3, 4, 5]
    assert asked == [("demo", "loso_speaker")]


def test_run_id_round_trip():
    run = Run("iemocap", "loso_session", "large-v2", "lora", targets_key(["v_proj", "q_proj"]), 32, 1, 5)
    assert run.id == "iemocap/loso_session/large-v2/lora/q_proj+v_proj/r32/seed1/fold5"
    assert run.target_modules == ["q_proj", "v_proj"]
    wildcards = dict(zip(["dataset", "protocol", "model", "method", "targets", "rank", "seed", "fold"],
                         ["iemocap", "loso_session", "large-v2", "lora", "q_proj+v_proj", "32", "1", "5"]))
    assert Run.from_wildcards(wildcards) == run


def test_run_settings_leave_out_the_grid():
    settings = run_settings(config_with(seeds=[0, 1, 2]), "demo", "lora")
    assert "seeds" not in settings and "ranks" not in settings
    assert settings["classes"] == ["neutral", "happy", "angry", "sad"]
    assert settings["legacy"] is False and settings["max_seconds"] == 30
    assert run_settings(config_with(seeds=[0]), "demo", "lora") == settings  # adding a seed reruns no old run


OPTIMISATION = {"epochs", "lr", "batch_size", "grad_accum", "weight_decay", "warmup_ratio", "max_grad_norm",
                "class_weighted", "select_on"}


@pytest.mark.parametrize("method, has_optimisation, has_lora", [
    ("lora", True, True), ("frozen", True, False), ("full", True, False),
    ("lora_init", False, True), ("lora_random", False, True),
])
def test_each_method_gets_only_the_settings_it_uses(method, has_optimisation, has_lora):
    settings = run_settings(config_with(), "demo", method)
    if has_optimisation:
        assert OPTIMISATION <= settings.keys()
    else:
        assert not OPTIMISATION & settings.keys()
    assert ("lora" in settings) is has_lora
    assert {"eval_batch_size", "device", "legacy", "max_seconds", "classes"} <= settings.keys()


def test_a_setting_a_method_does_not_use_does_not_change_its_settings():
    base = config_with()
    assert run_settings(config_with(lr=1e-2, epochs=3, select_on="val"), "demo", "lora_init") == \
        run_settings(base, "demo", "lora_init")
    assert run_settings(config_with(lora={"dropout": 0.3}), "demo", "frozen") == run_settings(base, "demo", "frozen")
    assert run_settings(config_with(lr=1e-2), "demo", "frozen") != run_settings(base, "demo", "frozen")
    assert run_settings(config_with(lora={"dropout": 0.3}), "demo", "lora_random") != \
        run_settings(base, "demo", "lora_random")


def test_select_metric_is_an_optimisation_setting():
    """The selection metric stays out of the untrained references' settings."""
    config = config_with(select_metric="war")
    assert run_settings(config, "demo", "lora")["select_metric"] == "war"
    assert "select_metric" not in run_settings(config, "demo", "lora_init")


def test_unknown_method_is_named():
    with pytest.raises(InputError, match=r"training\.methods: unknown method 'adapter'"):
        run_settings(config_with(), "demo", "adapter")


@pytest.mark.parametrize("training, expected", [
    ({"datasets": ["iemocap"]}, r"training\.datasets: 'iemocap' is not a dataset"),
    ({"models": ["large"]}, r"training\.models: 'large' is not a model"),
    ({"protocols": ["loso_session"]}, r"training\.protocols: 'loso_session' is not among datasets\.demo"),
    ({"targets": [["v_proj", "query"]]}, r"training\.targets: \['query'\] match no Whisper encoder module"),
    ({"select_on": "test"}, r"allowed only with legacy: true"),
])
def test_cross_key_errors(training, expected):
    with pytest.raises(InputError, match=expected):
        check_training_config(config_with(**training))


def test_test_selection_is_allowed_under_legacy():
    config = validate_config({"legacy": True, "training": {"select_on": "test"}})
    check_training_config(config)


@pytest.mark.parametrize("training, expected", [
    ({"ranks": [0]}, r"training\.ranks\.0: 0 is less than the minimum of 1"),
    ({"ranks": [-4]}, r"training\.ranks\.0: -4 is less than the minimum of 1"),
    ({"methods": ["adapter"]}, r"training\.methods\.0: 'adapter' is not one of"),
    ({"folds": [0]}, r"training\.folds"),
])
def test_schema_errors_name_the_key(training, expected):
    with pytest.raises(InputError, match=expected):
        config_with(**training)
