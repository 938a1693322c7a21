"""Weight-access attacks: pruning, quantization, fine-tuning and weight noise do what they claim."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tracemark as tm
from tracemark.attacks import AttackError, FineTune, Prune, Quantize, WeightNoise, int8_layers, last_linear, prunable_weights


def _zero_count(model: nn.Module) -> tuple[int, int]:
    weights = [w for _, w in prunable_weights(model)]
    return sum(int((w == 0).sum()) for w in weights), sum(w.numel() for w in weights)


@pytest.mark.parametrize("method", ["magnitude", "random"])
@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_pruning_zeroes_exactly_the_asked_fraction(models, thief, method, rate):
    before, total = _zero_count(models.marked)
    assert before == 0
    stolen = Prune(rate, method).run(models.marked, thief)
    zeros, _ = _zero_count(stolen.model)
    assert zeros == round(rate * total)
    assert _zero_count(models.marked)[0] == 0  # the victim is untouched


def test_magnitude_pruning_removes_the_smallest_weights(models, thief):
    stolen = Prune(0.5, "magnitude").run(models.marked, thief)
    original = torch.cat([w.detach().flatten() for _, w in prunable_weights(models.marked)])
    pruned = torch.cat([w.detach().flatten() for _, w in prunable_weights(stolen.model)])
    assert original[pruned == 0].abs().max() <= original[pruned != 0].abs().min()


def test_random_pruning_is_seeded(models, thief):
    a = Prune(0.3, "random").run(models.marked, thief).model
    b = Prune(0.3, "random").run(models.marked, thief).model
    for (_, wa), (_, wb) in zip(prunable_weights(a), prunable_weights(b)):
        assert torch.equal(wa, wb)


def test_pruning_rejects_a_rate_outside_0_1(models, thief):
    with pytest.raises(AttackError):
        Prune(1.5).run(models.marked, thief)


def test_quantized_layers_are_int8_and_keep_accuracy(models, thief):
    stolen = Quantize().run(models.marked, thief)
    layers = int8_layers(stolen.model)
    n_float_layers = len(prunable_weights(models.marked))
    assert len(layers) == n_float_layers
    assert set(layers.values()) == {torch.qint8}
    data = models.data
    victim_acc = tm.accuracy(models.marked, data.x_test, data.y_test)
    assert stolen.target.predict_labels(data.x_test).shape == data.y_test.shape
    thief_acc = float((stolen.target.predict_labels(data.x_test) == data.y_test).mean())
    assert abs(thief_acc - victim_acc) < 0.03


def _changed(before: nn.Module, after: nn.Module) -> dict[str, bool]:
    a, b = before.state_dict(), after.state_dict()
    return {name: not torch.equal(a[name], b[name]) for name in a}


@pytest.mark.parametrize("mode", ["FTLL", "RTLL"])
def test_last_layer_modes_change_only_the_last_layer(models, thief, mode):
    stolen = FineTune(mode, n_samples=300, epochs=1).run(models.marked, thief)
    changed = _changed(models.marked, stolen.model)
    head_names = {f"{i}.{p}" for i, m in enumerate(models.marked) if m is last_linear(models.marked) for p in ("weight", "bias")}
    assert {n for n, c in changed.items() if c} == head_names


@pytest.mark.parametrize("mode", ["FTAL", "RTAL"])
def test_all_layer_modes_change_every_layer(models, thief, mode):
    stolen = FineTune(mode, n_samples=300, epochs=1).run(models.marked, thief)
    assert all(_changed(models.marked, stolen.model).values())


def test_re_initialising_modes_start_from_a_fresh_head(models, thief):
    # with zero epochs nothing is trained: only the re-initialisation shows
    ftll = FineTune("FTLL", n_samples=64, epochs=0).run(models.marked, thief).model
    rtll = FineTune("RTLL", n_samples=64, epochs=0).run(models.marked, thief).model
    assert not any(_changed(models.marked, ftll).values())
    assert _changed(models.marked, rtll)[next(n for n in rtll.state_dict())] is False
    assert not torch.equal(last_linear(rtll).weight, last_linear(models.marked).weight)


def test_fine_tuning_needs_labels_and_weights(models, thief):
    from tracemark.attacks import ThiefData

    with pytest.raises(AttackError):
        FineTune("FTAL").run(models.marked, ThiefData(x=thief.x))
    with pytest.raises(AttackError):
        FineTune("FTAL").run(tm.CallableTarget(lambda x: x.reshape(len(x), -1)[:, :10]), thief)
    with pytest.raises(AttackError):
        FineTune("XX")  # type: ignore[arg-type]


def test_weight_noise_scales_with_sigma_and_is_seeded(models, thief):
    small = WeightNoise(0.01).run(models.marked, thief).model
    large = WeightNoise(0.5).run(models.marked, thief).model
    again = WeightNoise(0.5).run(models.marked, thief).model
    w0 = last_linear(models.marked).weight
    d_small = (last_linear(small).weight - w0).std() / w0.std()
    d_large = (last_linear(large).weight - w0).std() / w0.std()
    assert 0.005 < d_small < 0.02
    assert 0.35 < d_large < 0.65
    assert torch.equal(last_linear(large).weight, last_linear(again).weight)
