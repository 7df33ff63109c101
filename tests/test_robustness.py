"""Bad inputs: extreme and non-finite values, invalid configs, models and inputs (hypothesis).

Finite inputs never give NaN/Inf: over valid configs and weights/gradients containing zeros,
signed zeros, subnormals, tiny and huge values, every mechanism keeps weights, gradients and
bio state finite. "Huge" is 1e15 where a mechanism multiplies values together (fuzzy, volume,
scaling: the exact result must be representable in float32) and up to 3e38 where it only
compares or selects (crystallization, rejuvenation, Dale). Rejuvenation replaces NaN/Inf
weights; crystallization keeps the multipliers finite whatever the gradient holds.
"""

import copy
import math

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import biofx
from biofx import BioConfig, Distribution

from conftest import MLP

SETTINGS = settings(max_examples=40, deadline=None)
OUT, IN = 4, 5
SHAPE = (OUT, IN)

TINY = [0.0, -0.0, 1e-45, -1e-45, 1e-38, -1e-38, 1e-30, -1e-30]
HUGE_PRODUCT = [1e15, -1e15]
HUGE = [3e38, -3e38, 1e30]
NON_FINITE = [math.nan, math.inf, -math.inf]


def tensors(special, bound=10.0, shape=SHAPE):
    """float32 tensors of ``shape`` mixing ordinary values in [−bound, bound] with ``special``."""
    element = st.one_of(st.floats(-bound, bound, width=32), st.sampled_from(special))
    n = math.prod(shape)
    return st.lists(element, min_size=n, max_size=n).map(lambda v: torch.tensor(v, dtype=torch.float32).view(shape))


configs = st.fixed_dictionaries(
    {
        "fuzzy_lr_distribution": st.sampled_from(list(Distribution)),
        "fuzzy_learning_rate_factor_nu": st.floats(1e-3, 2.0),
        "fuzzy_lr_min": st.floats(0.01, 1.0),
        "fuzzy_lr_max": st.floats(1.0, 10.0),
        "dampening_factor": st.floats(0.01, 0.99),
        "crystal_thresh": st.floats(1e-8, 1.0),
        "base_lr": st.floats(1e-3, 0.999),
        "stability_factor": st.floats(0.01, 10.0),
        "lr_variability": st.floats(1e-3, 5.0),
        "rejuvenation_parameter_dre": st.floats(0.1, 100.0),
        "rejuvenation_rule": st.sampled_from(["paper", "lognormal"]),
        "synaptic_scaling_gamma": st.floats(0.0, 1.0),
        "synaptic_scaling_target": st.floats(0.0, 1.0),
        "apply_dales_principle": st.booleans(),
        "seed": st.integers(0, 2**31 - 1),
    }
).map(lambda fields: BioConfig(automatic=(), **fields))


def one_layer(config, weight):
    """A bio Linear(IN, OUT) with ``weight``; returns (bio model, its BioSynapses)."""
    layer = nn.Linear(IN, OUT)
    bio = biofx.transform(layer, config)
    with torch.no_grad():
        layer.weight.copy_(weight)
    (state,) = bio.bio_layers()
    return bio, state


def finite(t):
    return bool(torch.isfinite(t).all())


@SETTINGS
@given(configs, tensors(TINY + HUGE_PRODUCT), tensors(TINY + HUGE_PRODUCT))
def test_finite_inputs_stay_finite_through_every_mechanism(config, weight, grad):
    bio, layer = one_layer(config, weight)
    assert finite(layer.fuzzy_lr)
    assert (layer.fuzzy_lr >= config.fuzzy_lr_min).all() and (layer.fuzzy_lr <= config.fuzzy_lr_max).all()
    bio(torch.randn(3, IN))  # activity statistics (train mode)
    layer.weight.grad = grad.clone()
    bio.fuzzy_learning_rates()
    assert finite(layer.weight.grad)
    bio.volume_dependent_lr()
    assert finite(layer.weight.grad)
    before = layer.fuzzy_lr.clone()
    bio.crystallize()
    assert finite(layer.fuzzy_lr)
    damped = torch.isclose(layer.fuzzy_lr, before * config.dampening_factor)
    assert (layer.fuzzy_lr.eq(before) | damped).all()
    if config.synaptic_scaling_gamma > 0:
        bio.scale_grad()
        assert finite(layer.weight.grad) and finite(layer.activity_mean)
    if config.apply_dales_principle:
        bio.enforce_dales_principle()
        assert finite(layer.weight)
    bio.rejuvenate_weights()
    assert finite(layer.weight) and finite(layer.fuzzy_lr)


@SETTINGS
@given(
    st.sampled_from(list(Distribution)),
    st.floats(1e-3, 50.0),
    tensors(TINY + HUGE),
    st.integers(0, 2**31 - 1),
)
def test_initial_multipliers_are_finite_for_any_valid_nu(distribution, nu, weight, seed):
    config = BioConfig(fuzzy_lr_distribution=distribution, fuzzy_learning_rate_factor_nu=nu, seed=seed)
    _, layer = one_layer(config, weight)
    assert finite(layer.fuzzy_lr), (distribution, nu)
    assert (layer.fuzzy_lr >= config.fuzzy_lr_min).all() and (layer.fuzzy_lr <= config.fuzzy_lr_max).all()


@SETTINGS
@given(configs, tensors(TINY + HUGE + NON_FINITE), st.integers(0, 5))
def test_rejuvenation_replaces_non_finite_weights(config, weight, counter):
    bio, layer = one_layer(config, weight)
    stored = layer.weight.detach().clone()
    layer.rejuvenations.fill_(counter)
    count = layer.rejuvenate()
    w = layer.weight.detach()
    assert finite(w)
    non_finite = ~torch.isfinite(stored)
    assert int(count) >= int(non_finite.sum())
    # what a weight that is not replaced becomes: itself ("paper"), or clamped to [-1, 1] ("lognormal")
    kept = stored if config.rejuvenation_rule == "paper" else torch.where(non_finite, 0.0, stored).clamp(-1, 1)
    replaced = w != kept
    assert (replaced | ~non_finite).all() and int(replaced.sum()) <= int(count)
    if config.apply_dales_principle:  # a new weight takes its presynaptic unit's sign
        sign = layer.dale_sign.expand_as(w)
        assert (w[replaced] * sign[replaced] >= 0).all()


@SETTINGS
@given(configs, tensors(TINY + HUGE + NON_FINITE), tensors(TINY + HUGE + NON_FINITE))
def test_crystallization_keeps_multipliers_finite_for_any_gradient(config, weight, grad):
    _, layer = one_layer(config, weight)
    before = layer.fuzzy_lr.clone()
    layer.weight.grad = grad
    layer.crystallize()
    assert finite(layer.fuzzy_lr)
    damped = torch.isclose(layer.fuzzy_lr, before * config.dampening_factor)
    assert (layer.fuzzy_lr.eq(before) | damped).all()


@SETTINGS
@given(configs, tensors(TINY + HUGE))
def test_volume_factor_is_finite_and_bounded_for_extreme_weights(config, weight):
    _, layer = one_layer(config, weight)
    layer.weight.grad = torch.ones(SHAPE)
    layer.apply_volume()
    factor = layer.weight.grad
    assert finite(factor) and (factor >= 0).all()
    # |N(μ, lr_variability·μ)| with μ ≤ base_lr and |z| < 5.5 (24-bit uniforms)
    assert (factor <= config.base_lr * (1 + config.lr_variability * 5.5)).all()


@SETTINGS
@given(tensors(TINY + HUGE), st.floats(0.0, 1.0), st.integers(0, 2**31 - 1), st.sampled_from(["dann", "column"]))
def test_dale_projection_is_finite_and_sign_consistent(weight, fraction, seed, mode):
    assume(mode == "column" or fraction > 0)  # DANN needs excitatory units
    config = BioConfig(apply_dales_principle=True, dale_excitatory_fraction=fraction, seed=seed, dale_mode=mode)
    bio, layer = one_layer(config, weight)
    bio.enforce_dales_principle()
    w = layer.weight.detach()
    assert finite(w)
    assert ((w >= 0).all(0) | (w <= 0).all(0)).all()  # one sign per presynaptic unit (column)


@pytest.mark.slow  # compiles the fused kernels (about a minute on 2 CPU cores)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    tensors(TINY + HUGE + NON_FINITE),
    tensors(TINY + HUGE + NON_FINITE),
    st.sampled_from(["paper", "lognormal"]),
    st.booleans(),
)
def test_fused_kernels_keep_the_guarantees(fused_kernels, weight, grad, rule, dale):
    """The compiled (fused) volume, crystallization and rejuvenation on extreme/non-finite values."""
    config = BioConfig(automatic=(), rejuvenation_rule=rule, apply_dales_principle=dale, seed=0)
    _, layer = one_layer(config, torch.where(torch.isfinite(weight), weight.clamp(-1e15, 1e15), weight))
    layer.weight.grad = torch.where(torch.isfinite(grad), grad.clamp(-1e15, 1e15), grad)
    before = layer.fuzzy_lr.clone()
    layer.crystallize()
    assert finite(layer.fuzzy_lr)
    assert (layer.fuzzy_lr.eq(before) | torch.isclose(layer.fuzzy_lr, before * config.dampening_factor)).all()
    layer.rejuvenate()
    assert finite(layer.weight)
    layer.weight.grad = torch.ones(SHAPE)
    layer.apply_volume()
    assert finite(layer.weight.grad) and (layer.weight.grad >= 0).all()


def test_running_activity_ignores_steps_without_samples():
    """0 samples counted (e.g. eval-mode forwards only): the running mean stays, no 0/0."""
    bio, layer = one_layer(BioConfig(synaptic_scaling_gamma=0.5, automatic=()), torch.randn(SHAPE))
    bio.eval()
    bio(torch.randn(3, IN))
    layer.weight.grad = torch.ones(SHAPE)
    bio.scale_grad()
    assert finite(layer.activity_mean) and torch.equal(layer.activity_mean, torch.zeros(OUT))
    assert finite(layer.weight.grad)


# -- invalid configs, models and inputs ---------------------------------------------------
NUMERIC_FIELDS = [
    "fuzzy_learning_rate_factor_nu", "dampening_factor", "crystal_thresh", "rejuvenation_parameter_dre",
    "base_lr", "stability_factor", "lr_variability", "fuzzy_lr_min", "fuzzy_lr_max", "fuzzy_lr_decay",
    "dale_excitatory_fraction", "synaptic_scaling_gamma", "synaptic_scaling_target", "activity_momentum",
]
INT_FIELDS = ["weight_splitting_Gamma", "fuzzy_lr_update_freq", "rejuvenate_every"]
BOOL_FIELDS = ["apply_dales_principle", "fuzzy_lr_dynamic"]


@SETTINGS
@given(
    st.sampled_from(NUMERIC_FIELDS + INT_FIELDS + BOOL_FIELDS),
    st.one_of(st.text(max_size=5), st.lists(st.integers(), max_size=2), st.none(), st.just(object())),
)
def test_wrong_config_types_raise_type_error_naming_the_field(field, value):
    with pytest.raises(TypeError, match=field):
        BioConfig(**{field: value})
    with pytest.raises(TypeError, match=field):
        biofx.transform(MLP(), **{field: value})


@SETTINGS
@given(st.sampled_from(NUMERIC_FIELDS), st.floats(allow_nan=True, allow_infinity=True))
def test_float_fields_accept_valid_values_and_name_the_field_otherwise(field, value):
    try:
        config = BioConfig(**{field: value})
    except ValueError as err:
        assert field in str(err) and "must" in str(err)
    else:
        assert math.isfinite(value) and getattr(config, field) == value


@pytest.mark.parametrize("not_a_model", [5, "mlp", nn.Linear, lambda x: x, [nn.Linear(2, 2)]])
def test_transform_of_a_non_module_raises_type_error(not_a_model):
    with pytest.raises(TypeError, match="nn.Module"):
        biofx.transform(not_a_model)


def test_invalid_transform_arguments_raise_clear_errors():
    with pytest.raises(TypeError, match="config must be a BioConfig"):
        biofx.transform(MLP(), config=[("base_lr", 0.1)])
    with pytest.raises(TypeError, match="did you mean 'crystal_thresh'"):
        biofx.transform(MLP(), crystal_tresh=0.1)
    with pytest.raises(ValueError, match=r"weight_splitting_Gamma \(3\).*'fc1'"):
        biofx.transform(MLP(), weight_splitting_Gamma=3)
    with pytest.raises(ValueError, match="automatic"):
        biofx.transform(MLP(), automatic=("fuzzy", "dropout"))


def test_leaf_modules_must_be_module_types():
    with pytest.raises(TypeError, match="leaf_modules"):
        biofx.transform(MLP(), leaf_modules=[5])


def test_bad_model_inputs_fail_like_the_plain_model():
    model = MLP()
    bio = biofx.transform(copy.deepcopy(model))
    x = torch.randn(3, 7)  # wrong feature count
    with pytest.raises(RuntimeError) as plain_error:
        model(x)
    with pytest.raises(RuntimeError) as bio_error:
        bio(x)
    assert str(bio_error.value) == str(plain_error.value)


def test_mechanisms_need_a_backward_first_and_dale_needs_the_flag():
    bio = biofx.transform(MLP(), automatic=())
    for method in (bio.fuzzy_learning_rates, bio.volume_dependent_lr, bio.crystallize, bio.scale_grad):
        with pytest.raises(RuntimeError, match="No gradients found for the weights"):
            method()
    with pytest.raises(AttributeError, match="apply_dales_principle"):
        bio.enforce_dales_principle()
