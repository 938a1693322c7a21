"""Alignment before the weight test: function-preserving symmetries no longer hide a copy, and innocents stay innocent."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

import tracemark as tm
from tests.fingerprint.conftest import CUSTOMERS
from tracemark.attacks import AttackError, FineTune, Prune
from tracemark.attacks.base import ThiefData
from tracemark.attacks.symmetry import add_dead_units, derangement, permute_units, rescale_units
from tracemark.fingerprint import trace, weight_trace
from tracemark.fingerprint.align import NotAlignable, align_to_base, unit_layers
from tracemark.fingerprint.weights import add_weight_code

MANY = [f"customer-{i:04d}" for i in range(1000)] + CUSTOMERS
ALPHA = 1e-9


def disguised(model: nn.Module, seed: int = 1) -> nn.Module:
    """The thief's free moves: a derangement of every hidden layer, then per-unit rescaling by 1/4 to 4."""
    return rescale_units(permute_units(model, seed), seed + 1)


def bn_chain(seed: int) -> nn.Sequential:
    """A conv / linear chain with batch norm after both hidden layers, with non-trivial statistics."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(8 * 4 * 4, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
    with torch.no_grad():
        for bn in (model[1], model[6]):
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.normal_()
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def independent_cnn(models) -> nn.Module:
    """A small CNN trained independently of the base (another seed)."""
    model = tm.build_model("small_cnn", models.data.input_shape, 10, seed=1)
    tm.fit(model, tm.to_tensor_dataset(models.data.x_train, models.data.y_train), epochs=2, seed=1)
    return model.eval()


def test_symmetry_attacks_preserve_the_function_and_move_every_unit(models):
    x = torch.from_numpy(models.data.x_test[:200])
    for base in (models.base.eval(), bn_chain(0)):
        with torch.no_grad():
            before = base(x)
            permuted, scaled, wider = permute_units(base, 3), rescale_units(base, 3), add_dead_units(base, 3, extra=5)
            for attacked in (permuted, scaled, wider, disguised(base)):
                assert torch.allclose(attacked(x), before, rtol=1e-4, atol=1e-5)
        for b_layer, p_layer, w_layer in zip(unit_layers(base)[:-1], unit_layers(permuted), unit_layers(wider)):
            b_rows = b_layer.module.weight.reshape(b_layer.module.weight.shape[0], -1)
            p_rows = p_layer.module.weight.reshape(b_rows.shape[0], -1)
            if b_layer is unit_layers(base)[0]:  # the first layer's rows are comparable as they are: none kept its place
                assert not (b_rows == p_rows).all(dim=1).any()
            assert w_layer.module.weight.shape[0] == b_rows.shape[0] + 5
    with pytest.raises(AttackError, match="feed-forward chain"):
        permute_units(tm.build_model("resnet18", (1, 8, 8), 10, seed=0), 0)
    perm = derangement(50, torch.Generator().manual_seed(0))
    assert sorted(perm.tolist()) == list(range(50)) and not (perm == torch.arange(50)).any()


def test_a_disguised_copy_is_named_only_after_alignment(fingerprinted):
    scheme, base = fingerprinted.scheme, fingerprinted.base
    for customer, attacked in (("acme", disguised(fingerprinted.copies["acme"])),
                               ("globex", add_dead_units(disguised(fingerprinted.copies["globex"], 5), 7, extra=9))):
        if customer == "acme":
            blind = weight_trace(scheme, MANY, attacked, base, alpha=ALPHA, align=False)
            assert blind.applies and blind.accused == [] and blind.alignment is None
        result = weight_trace(scheme, MANY, attacked, base, alpha=ALPHA)
        assert result.accused == [customer] and result.best.log10_p_adjusted < -100
        assert result.runner_up.log10_p_adjusted > math.log10(ALPHA)
        layers = result.alignment.layers  # conv layers as shipped; the copy's fine-tune re-learned some of 7's rows
        assert result.alignment.method == "weights" and all(x.moved >= x.units - x.weak for x in layers)
        assert [x.weak for x in layers[:2]] == [0, 0] and all(x.similarity > 0.99 for x in layers[:2])
        assert [x.dropped for x in layers] == ([0, 0, 0] if customer == "acme" else [9, 9, 9])
    text = str(trace(scheme, MANY, tm.TorchTarget(disguised(fingerprinted.copies["initech"])), base=base))
    assert "weight test: CUSTOMER initech" in text and "units moved per hidden layer 0: 32/32, 3: 64/64, 7: 1" in text


def test_an_unattacked_copy_aligns_to_the_identity(fingerprinted):
    result = weight_trace(fingerprinted.scheme, MANY, fingerprinted.copies["acme"], fingerprinted.base, alpha=ALPHA)
    assert result.accused == ["acme"] and result.compared == result.entries
    assert all(x.moved <= x.weak for x in result.alignment.layers)  # only re-learned units can find a better match
    assert [x.moved for x in result.alignment.layers[:2]] == [0, 0]
    state, report = align_to_base(fingerprinted.base, fingerprinted.base)
    assert report.moved == 0
    assert all(torch.equal(state[k].float(), v) for k, v in fingerprinted.base.state_dict().items())


def test_disguise_then_retraining_or_pruning_still_names_the_copy(fingerprinted, models):
    thief = ThiefData(models.data.x_test[:300], models.data.y_test[:300], seed=1)
    customer = "globex"
    leaked = disguised(fingerprinted.copies[customer])
    runs = [FineTune("RTAL", n_samples=300, epochs=5, lr=2e-3).run(leaked, thief).model,
            FineTune("RTLL", n_samples=300, epochs=3, lr=5e-4).run(leaked, thief).model,
            FineTune("FTAL", n_samples=300, epochs=3, lr=5e-4).run(Prune(0.5).run(leaked, thief).model, thief).model]
    for stolen in runs:
        result = weight_trace(fingerprinted.scheme, MANY, stolen, fingerprinted.base, alpha=ALPHA)
        assert result.accused == [customer] and result.best.log10_p_adjusted < -50


def test_innocents_are_not_named_disguised_or_not(fingerprinted, independent_cnn):
    scheme, base = fingerprinted.scheme, fingerprinted.base
    others = [c for c in MANY if c != "acme"]
    suspects = [(fingerprinted.copies["acme"], others), (independent_cnn, MANY), (base, MANY)]
    for model, registry in suspects:
        for suspect in (model, disguised(model, 11), add_dead_units(disguised(model, 13), 2)):
            result = weight_trace(scheme, registry, suspect, base, alpha=ALPHA)
            assert result.applies and result.accused == [], result.best
            assert result.best.log10_p_adjusted > math.log10(ALPHA)
    plain = weight_trace(scheme, MANY, base, base, alpha=ALPHA)
    assert plain.compared == 0 and plain.alignment.moved == 0


def test_the_null_stays_exact_after_alignment(fingerprinted, independent_cnn):
    """300 random sign vectors (unregistered ids) against three aligned innocents: p-values as the binomial says."""
    scheme, base = fingerprinted.scheme, fingerprinted.base
    ids = [f"random-{i}" for i in range(300)]
    log10_p = []
    for suspect in (disguised(independent_cnn, 21), disguised(fingerprinted.copies["initech"], 22), disguised(base, 23)):
        result = weight_trace(scheme, ids, suspect, base, alpha=ALPHA, shown=len(ids))
        assert result.compared > 0.2 * result.entries  # the disguised base: float rounding, the rest: real changes
        log10_p += [s.log10_p for s in result.top]
    p = 10 ** np.array(log10_p)
    assert len(p) == 900
    # P(p <= a) <= a for an exact (discrete, so slightly conservative) null; bounds hold with probability > 0.999
    assert (p <= 0.01).sum() <= 20
    assert 55 <= (p <= 0.1).sum() <= 125
    assert 390 <= (p <= 0.5).sum() <= 510


def test_batch_norm_chains_are_folded_and_the_copy_named(fingerprinted, models):
    scheme = fingerprinted.scheme
    base = bn_chain(0)
    leaked = copy.deepcopy(base)
    add_weight_code(leaked, scheme, "hooli")
    attacked = add_dead_units(disguised(leaked, 4), 5, extra=3)
    result = weight_trace(scheme, MANY, attacked, base, alpha=ALPHA)
    assert result.accused == ["hooli"] and result.best.log10_p_adjusted < -100
    assert [x.moved for x in result.alignment.layers] == [8, 32]
    assert weight_trace(scheme, MANY, attacked, base, alpha=ALPHA, align=False).applies is False  # wider: shapes differ
    innocent = weight_trace(scheme, MANY, disguised(bn_chain(1), 6), base, alpha=ALPHA)
    assert innocent.accused == []


def test_architectures_alignment_does_not_handle_are_compared_unaligned(fingerprinted, models):
    resnet = tm.build_model("resnet18", (1, 8, 8), 10, seed=0)
    with pytest.raises(NotAlignable, match="residual"):
        align_to_base(resnet, resnet)
    result = weight_trace(fingerprinted.scheme, CUSTOMERS, copy.deepcopy(resnet), resnet, alpha=ALPHA)
    assert result.applies and result.compared == 0 and result.alignment.method == "none"
    assert "compared unaligned" in result.alignment.note and "residual" in result.alignment.line()
    broken = copy.deepcopy(fingerprinted.base)
    with torch.no_grad():
        broken[0].weight[0, 0, 0, 0] = float("nan")
    result = weight_trace(fingerprinted.scheme, CUSTOMERS, broken, fingerprinted.base, alpha=ALPHA)
    assert result.accused == [] and "non-finite" in result.alignment.note
    lenet = weight_trace(fingerprinted.scheme, CUSTOMERS, models.independent, fingerprinted.base, alpha=ALPHA)
    assert not lenet.applies and "another architecture" in lenet.note
