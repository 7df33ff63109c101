import dataclasses
import json

import pytest
import torch.nn as nn

import biofx
from biofx import BioConfig, ConfigMap, Distribution

REFERENCE_DEFAULTS = {
    "fuzzy_learning_rate_factor_nu": 0.16,
    "dampening_factor": 0.6,
    "crystal_thresh": 4.5e-05,
    "rejuvenation_parameter_dre": 8.0,
    "weight_splitting_Gamma": 0,
    "apply_dales_principle": False,
    "base_lr": 0.1,
    "stability_factor": 2.0,
    "lr_variability": 0.2,
    "fuzzy_lr_distribution": Distribution.UNIFORM,
    "fuzzy_lr_min": 0.5,
    "fuzzy_lr_max": 2.0,
    "fuzzy_lr_dynamic": False,
    "fuzzy_lr_decay": 0.9995,
    "fuzzy_lr_update_freq": 100,
    "fuzzy_lr_layer_index": -1,
    "fuzzy_lr_total_layers": -1,
}


def test_reference_fields_and_defaults():
    cfg = BioConfig()
    for name, value in REFERENCE_DEFAULTS.items():
        assert getattr(cfg, name) == value, name
    assert isinstance(cfg.weight_splitting_activation_function, nn.Identity)


def test_matches_installed_reference_fields():
    ref = pytest.importorskip("bio_transformations.bio_config")
    ours = {f.name for f in dataclasses.fields(BioConfig)}
    assert set(ref.BioConfig._fields) <= ours
    for name in ref.BioConfig._fields:
        if name != "weight_splitting_activation_function":
            assert getattr(ref.DEFAULT_BIO_CONFIG, name) == getattr(BioConfig(), name), name


def test_distribution_accepts_enum_or_string():
    assert BioConfig(fuzzy_lr_distribution="normal").fuzzy_lr_distribution is Distribution.NORMAL
    assert BioConfig(fuzzy_lr_distribution="GAMMA").fuzzy_lr_distribution is Distribution.GAMMA
    assert {d.value for d in Distribution} == {
        "baseline", "uniform", "normal", "lognormal", "gamma", "beta",
        "layer_adaptive", "weight_adaptive", "temporal", "activity",
    }


def test_immutable_and_replace():
    cfg = BioConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.base_lr = 0.5
    new = cfg.replace(base_lr=0.5)
    assert new.base_lr == 0.5 and cfg.base_lr == 0.1
    assert cfg._replace(dampening_factor=0.7).dampening_factor == 0.7
    with pytest.raises(TypeError, match="did you mean 'base_lr'"):
        cfg.replace(base_lrr=0.5)
    with pytest.raises(TypeError, match="no field 'fuzzy_learning_rate_factor_n'; did you mean 'fuzzy_learning_rate_factor_nu'"):
        BioConfig(fuzzy_learning_rate_factor_n=0.1)  # at construction too


# every field: a value that is wrong, and the exception it raises
BAD_VALUES = [
    ("weight_splitting_activation_function", 3, TypeError),
    ("weight_splitting_activation_function", "softmaxx", ValueError),
    ("fuzzy_learning_rate_factor_nu", 0.0, ValueError),
    ("fuzzy_learning_rate_factor_nu", "0.1", TypeError),
    ("dampening_factor", 1.0, ValueError),
    ("dampening_factor", 0.0, ValueError),
    ("crystal_thresh", -1e-5, ValueError),
    ("rejuvenation_parameter_dre", 0, ValueError),
    ("weight_splitting_Gamma", -1, ValueError),
    ("weight_splitting_Gamma", 2.0, TypeError),
    ("weight_splitting_Gamma", True, TypeError),
    ("apply_dales_principle", 1, TypeError),
    ("base_lr", 1.0, ValueError),
    ("base_lr", float("nan"), ValueError),
    ("stability_factor", 0.0, ValueError),
    ("lr_variability", -0.2, ValueError),
    ("fuzzy_lr_distribution", "poisson", ValueError),
    ("fuzzy_lr_min", 0.0, ValueError),
    ("fuzzy_lr_max", float("inf"), ValueError),
    ("fuzzy_lr_dynamic", "yes", TypeError),
    ("fuzzy_lr_decay", 1.5, ValueError),
    ("fuzzy_lr_update_freq", 0, ValueError),
    ("fuzzy_lr_layer_index", -2, ValueError),
    ("fuzzy_lr_total_layers", 1.5, TypeError),
    ("automatic", ("fuzzy", "magic"), ValueError),
    ("automatic", 3, TypeError),
    ("dale_excitatory_fraction", 1.2, ValueError),
    ("dale_mode", "rows", ValueError),
    ("synaptic_scaling_gamma", -0.1, ValueError),
    ("synaptic_scaling_target", -1.0, ValueError),
    ("activity_momentum", 1.0, ValueError),
    ("rejuvenate_every", -1, ValueError),
    ("acts_on", "weights", ValueError),
    ("rejuvenation_rule", "exponential", ValueError),
    ("fuzzy_lr_storage", "float16", ValueError),
    ("seed", -3, ValueError),
    ("seed", "42", TypeError),
]


def test_every_field_has_a_bad_value_case():
    assert {f.name for f in dataclasses.fields(BioConfig)} == {name for name, _, _ in BAD_VALUES}


@pytest.mark.parametrize("field,value,error", BAD_VALUES)
def test_bad_value_names_field_and_value(field, value, error):
    with pytest.raises(error) as info:
        BioConfig(**{field: value})
    assert field in str(info.value)


def test_min_above_max():
    with pytest.raises(ValueError, match="fuzzy_lr_min"):
        BioConfig(fuzzy_lr_min=1.5, fuzzy_lr_max=1.2)


def test_automatic_is_canonical():
    assert BioConfig(automatic=["crystallize", "fuzzy", "fuzzy"]).automatic == ("fuzzy", "crystallize")
    assert BioConfig(automatic="volume").automatic == ("volume",)
    assert BioConfig(automatic=()).automatic == ()


NON_DEFAULT = dict(
    weight_splitting_activation_function=nn.ReLU(),
    fuzzy_learning_rate_factor_nu=0.3,
    dampening_factor=0.5,
    crystal_thresh=1e-4,
    rejuvenation_parameter_dre=14.0,
    weight_splitting_Gamma=2,
    apply_dales_principle=True,
    base_lr=0.2,
    stability_factor=1.5,
    lr_variability=0.1,
    fuzzy_lr_distribution=Distribution.LOGNORMAL,
    fuzzy_lr_min=0.25,
    fuzzy_lr_max=3.0,
    fuzzy_lr_dynamic=True,
    fuzzy_lr_decay=0.99,
    fuzzy_lr_update_freq=7,
    fuzzy_lr_layer_index=1,
    fuzzy_lr_total_layers=3,
    automatic=("volume", "scaling"),
    dale_excitatory_fraction=0.5,
    dale_mode="column",
    synaptic_scaling_gamma=0.01,
    synaptic_scaling_target=0.2,
    activity_momentum=0.5,
    rejuvenate_every=10,
    acts_on="gradient",
    rejuvenation_rule="lognormal",
    fuzzy_lr_storage="counter",
    seed=1234,
)


def test_non_default_covers_every_field():
    assert set(NON_DEFAULT) == {f.name for f in dataclasses.fields(BioConfig)}
    cfg = BioConfig(**NON_DEFAULT)
    for name in NON_DEFAULT:
        assert getattr(cfg, name) != getattr(BioConfig(), name), name


def test_dict_round_trip_every_field():
    cfg = BioConfig(**NON_DEFAULT)
    assert BioConfig.from_dict(cfg.to_dict()) == cfg
    assert BioConfig.from_dict(BioConfig().to_dict()) == BioConfig()


def test_json_round_trip_every_field():
    cfg = BioConfig(**NON_DEFAULT)
    text = cfg.to_json()
    assert json.loads(text)["weight_splitting_activation_function"] == "torch.nn.modules.activation.ReLU"
    back = BioConfig.from_json(text)
    assert back == cfg
    assert isinstance(back.weight_splitting_activation_function, nn.ReLU)


def test_json_rejects_unserializable_activation():
    cfg = BioConfig(weight_splitting_activation_function=lambda x: x)
    with pytest.raises(TypeError, match="weight_splitting_activation_function"):
        cfg.to_json()
    cfg = BioConfig(weight_splitting_activation_function=nn.LeakyReLU(0.3))
    with pytest.raises(TypeError, match="without arguments"):
        cfg.to_json()


def test_activation_by_name():
    assert isinstance(BioConfig(weight_splitting_activation_function="relu").weight_splitting_activation_function, nn.ReLU)


def test_from_dict_unknown_key():
    with pytest.raises(TypeError, match="no field 'nu'"):
        BioConfig.from_dict({"nu": 0.1})


def test_configmap_precedence():
    exact, pattern, by_type, default = (BioConfig(base_lr=v) for v in (0.1, 0.2, 0.3, 0.4))
    cmap = ConfigMap({"enc.fc1": exact, "re:enc\\..*": pattern, nn.Conv2d: by_type}, default=default)
    lin, conv = nn.Linear(1, 1), nn.Conv2d(1, 1, 1)
    assert cmap.select("enc.fc1", lin)[0] is exact  # exact name beats regex
    assert cmap.select("enc.fc2", lin)[0] is pattern  # regex beats type and default
    assert cmap.select("enc.conv", conv)[0] is pattern  # regex beats type
    assert cmap.select("head", conv)[0] is by_type  # type beats default
    assert cmap.select("head", lin)[0] is default
    assert cmap.select("xenc.fc2", lin)[0] is default  # regex must match the full name


def test_configmap_bad_keys():
    with pytest.raises(TypeError, match="BioConfig or None"):
        ConfigMap({"fc": 3})
    with pytest.raises(ValueError, match="regular expression"):
        ConfigMap({"re:(": None})
    with pytest.raises(TypeError, match="keys"):
        ConfigMap({3: None})


def test_top_level_and_reference_paths():
    from biofx.bio_config import BioConfig as B2, Distribution as D2

    assert B2 is biofx.BioConfig and D2 is biofx.Distribution
    assert isinstance(biofx.__version__, str)
