"""The automatic path: mechanisms inside backward and at the optimizer step, never twice."""

import copy

import pytest
import torch
import torch.nn as nn

import biofx
from biofx import runtime

from conftest import MLP, GeneralPathSGD


def train_step(model, opt, x, explicit=()):
    opt.zero_grad()
    model(x).square().mean().backward()
    for method in explicit:
        getattr(model, method)()
    opt.step()


def test_automatic_equals_explicit_reference_loop():
    base = MLP()
    common = dict(seed=3, crystal_thresh=1e-2)
    auto = biofx.transform(copy.deepcopy(base), automatic=("fuzzy", "volume", "crystallize"), **common)
    manual = biofx.transform(copy.deepcopy(base), automatic=(), **common)
    opt_a = torch.optim.SGD(auto.parameters(), lr=0.1)
    opt_m = torch.optim.SGD(manual.parameters(), lr=0.1)
    for _ in range(4):
        x = torch.randn(5, 6)
        train_step(auto, opt_a, x)
        train_step(manual, opt_m, x, explicit=("volume_dependent_lr", "fuzzy_learning_rates", "crystallize"))
    for a, m in zip(auto.parameters(), manual.parameters()):
        torch.testing.assert_close(a, m)
    for a, m in zip(auto.bio_layers(), manual.bio_layers()):
        torch.testing.assert_close(a.fuzzy_lr, m.fuzzy_lr)


def test_explicit_call_of_automatic_mechanism_does_not_apply_twice():
    base = MLP()
    auto = biofx.transform(copy.deepcopy(base), seed=1)  # default: fuzzy automatic
    x = torch.randn(4, 6)
    auto(x).sum().backward()
    once = [l.weight.grad.clone() for l in auto.bio_layers()]
    with pytest.warns(UserWarning, match="apply it twice"):
        auto.fuzzy_learning_rates()
    for layer, g in zip(auto.bio_layers(), once):
        assert torch.equal(layer.weight.grad, g)


def test_default_automatic_is_fuzzy():
    assert biofx.BioConfig().automatic == ("fuzzy",)


def test_only_layers_of_the_stepping_optimizer_are_touched():
    model = MLP()
    bio = biofx.transform(copy.deepcopy(model), automatic=("fuzzy", "crystallize"), crystal_thresh=1.0)
    opt = torch.optim.SGD([bio.fc1.weight, bio.fc1.bias], lr=0.1)  # only fc1
    fc1, fc2 = bio.bio_layers()
    f2 = fc2.fuzzy_lr.clone()
    train_step(bio, opt, torch.randn(3, 6))
    assert int(fc1.step) == 1 and int(fc2.step) == 0
    assert torch.equal(fc2.fuzzy_lr, f2)


def test_dynamic_updates_run_at_optimizer_step_when_automatic():
    bio = biofx.transform(MLP(), fuzzy_lr_distribution="temporal", fuzzy_lr_dynamic=True, fuzzy_lr_update_freq=1,
                          fuzzy_lr_decay=0.5)
    opt = torch.optim.SGD(bio.parameters(), lr=0.0)
    f0 = bio.bio_layers()[0].fuzzy_lr.clone()
    train_step(bio, opt, torch.randn(2, 6))
    torch.testing.assert_close(bio.bio_layers()[0].fuzzy_lr, 1 + (f0 - 1) * 0.5)
    with pytest.warns(UserWarning, match="automatically"):
        bio.update_fuzzy_learning_rates()
    torch.testing.assert_close(bio.bio_layers()[0].fuzzy_lr, 1 + (f0 - 1) * 0.5)


def test_works_with_any_optimizer():
    for opt_cls in (torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop):
        bio = biofx.transform(MLP(), automatic=("fuzzy", "volume", "crystallize"))
        opt = opt_cls(bio.parameters(), lr=1e-2)
        losses = []
        x, y = torch.randn(32, 6), torch.randn(32, 4)
        for _ in range(30):
            opt.zero_grad()
            loss = (bio(x) - y).square().mean()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < losses[0]


def test_is_plain_sgd():
    params = [nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))]
    assert runtime.is_plain_sgd(torch.optim.SGD(params, lr=0.1))
    assert runtime.is_plain_sgd(torch.optim.SGD(params, lr=0.1, maximize=True))
    assert not runtime.is_plain_sgd(torch.optim.SGD(params, lr=0.1, momentum=0.9))
    assert not runtime.is_plain_sgd(
        torch.optim.SGD([{"params": params[:1]}, {"params": params[1:], "weight_decay": 1e-4}], lr=0.1)
    )
    assert not runtime.is_plain_sgd(GeneralPathSGD(params, lr=0.1))
    assert not runtime.is_plain_sgd(torch.optim.Adam(params))


def test_plain_sgd_scales_the_gradient_and_takes_the_update_paths_step():
    """For plain SGD the update mode scales g before the step; weights and crystallized
    multipliers match the general path (keep w₀, rescale w₁ − w₀ after the step)."""
    base = MLP()
    common = dict(seed=3, crystal_thresh=1e-2, automatic=("fuzzy", "volume", "crystallize"))
    via_grad, general = (biofx.transform(copy.deepcopy(base), **common) for _ in range(2))
    opt_g, opt_u = torch.optim.SGD(via_grad.parameters(), lr=0.1), GeneralPathSGD(general.parameters(), lr=0.1)
    for _ in range(4):
        x = torch.randn(5, 6)
        train_step(via_grad, opt_g, x)
        train_step(general, opt_u, x)
    for a, b in zip(via_grad.parameters(), general.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    for a, b in zip(via_grad.bio_layers(), general.bio_layers()):
        assert a.fuzzy_lr.ne(1).any()  # crystallization acted
        assert torch.equal(a.fuzzy_lr, b.fuzzy_lr)


def test_plain_sgd_step_is_w_minus_lr_f_g():
    bio = biofx.transform(MLP(), seed=2)  # default: fuzzy rates, update mode
    opt = torch.optim.SGD(bio.parameters(), lr=0.1)
    before = {name: p.detach().clone() for name, p in bio.named_parameters()}
    opt.zero_grad()
    bio(torch.randn(4, 6)).square().mean().backward()
    raw = {name: p.grad.clone() for name, p in bio.named_parameters()}
    opt.step()
    for layer in bio.bio_layers():
        name = f"{layer.layer_name}.weight"
        torch.testing.assert_close(layer.weight.grad, raw[name] * layer.fuzzy_lr, rtol=0, atol=0)
        torch.testing.assert_close(layer.weight.detach(), before[name] - 0.1 * raw[name] * layer.fuzzy_lr)


def test_plain_sgd_with_a_closure_rescales_the_update():
    """A closure recomputes .grad inside step(), after the pre-step hook: a factor put on g
    there would be lost, so the hooks rescale the update instead."""
    x = torch.randn(4, 6)
    base = MLP()
    with_closure, without = (biofx.transform(copy.deepcopy(base), seed=2) for _ in range(2))
    opt_c, opt_n = torch.optim.SGD(with_closure.parameters(), lr=0.1), torch.optim.SGD(without.parameters(), lr=0.1)

    def closure():
        opt_c.zero_grad()
        loss = with_closure(x).square().mean()
        loss.backward()
        return loss

    closure()  # the usual loop computes the gradient once before step(closure) too
    opt_c.step(closure)
    train_step(without, opt_n, x)
    for a, b in zip(with_closure.parameters(), without.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert not torch.equal(with_closure.fc1.weight, base.fc1.weight)


def test_advance_step_by_hand():
    bio = biofx.transform(MLP(), automatic=("volume",))
    bio.advance_step()
    assert all(int(l.step) == 1 for l in bio.bio_layers())


def test_l1_reg_is_differentiable_weight_norm():
    bio = biofx.transform(MLP())
    l1 = bio.l1_reg()
    expected = bio.fc1.weight.abs().sum() + bio.fc2.weight.abs().sum()
    torch.testing.assert_close(l1, expected)
    l1.backward()
    torch.testing.assert_close(bio.fc1.weight.grad, bio.fc1.weight.sign())


def _step_warnings(opt):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.step()
    return [w for w in caught if "no live bio layer drives them" in str(w.message)]


def test_an_optimizer_whose_bio_model_was_collected_is_warned_once():
    """The hooks find layers through a weak registry: when the transformed model is gone, its
    weights would train plain without a word. The optimizer is warned, once, naming the layers,
    at the caller's ``opt.step()``."""
    import gc

    x = torch.randn(3, 6)
    bio = biofx.transform(nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2)), seed=0)
    opt = torch.optim.SGD(bio.parameters(), lr=0.1)
    bio(x).sum().backward()
    assert _step_warnings(opt) == []  # alive: driven, nothing to report
    del bio
    gc.collect()
    (warning,) = _step_warnings(opt)
    assert issubclass(warning.category, RuntimeWarning) and warning.filename == __file__
    assert "'0'" in str(warning.message) and "'2'" in str(warning.message)
    assert _step_warnings(opt) == []  # once per optimizer


def test_a_weight_replaced_after_the_optimizer_was_built_is_warned():
    """load_state_dict(assign=True) gives the layers new Parameters: the optimizer built before
    steps the old ones, which no bio layer drives; another optimizer over the new ones is fine."""
    x = torch.randn(3, 6)
    bio = biofx.transform(nn.Sequential(nn.Linear(6, 4)), automatic=("fuzzy",), seed=0)
    stale = torch.optim.SGD(bio.parameters(), lr=0.1)
    bio(x).sum().backward()
    stale.step()
    bio.load_state_dict({k: v.clone() for k, v in bio.state_dict().items()}, assign=True)
    bio(x).sum().backward()
    assert len(_step_warnings(stale)) == 1
    fresh = torch.optim.SGD(bio.parameters(), lr=0.1)
    layer = bio.bio_layers()[0]
    before = layer.weight.detach().clone()
    grad = layer.weight.grad.clone()
    assert _step_warnings(fresh) == []
    torch.testing.assert_close(layer.weight.detach(), before - 0.1 * grad * layer.fuzzy_lr)  # driven: g·f


def test_setup_that_would_train_otherwise_is_said_once_at_the_users_line():
    import warnings

    model = MLP()
    early = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # built before the transform
    bio = biofx.transform(model, apply_dales_principle=True, rejuvenate_every=1)
    bio(torch.randn(2, 6)).sum().backward()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        early.step()
        early.step()
        bio.fuzzy_learning_rates()  # automatic: skipped with a warning
    messages = [(str(w.message), w.filename) for w in caught]
    assert [m for m, _ in messages if "DANN interneuron weights" in m and "build the optimizer after" in m]
    assert [m for m, _ in messages if "automatic rejuvenation ('fc1', 'fc2') with SGD" in m]
    assert len(messages) == 3 and all(filename == __file__ for _, filename in messages)  # once each, here
    later = torch.optim.SGD(bio.parameters(), lr=0.1)  # after the transform, plain SGD: nothing to say
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        later.step()
