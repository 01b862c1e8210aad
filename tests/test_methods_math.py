"""Oracle and property tests for the methods' math (pure functions and wrapper modules)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from multisource.methods.base import order_sources
from multisource.methods.ensemble import EnsembleConfig, EnsembleModule
from multisource.methods.grasp import alignment_scores, gradient_groups
from multisource.methods.merge import (average_state_dicts, batchnorm_buffers_for, running_mean_, select_tensors,
                                       transfer_tensors)
from multisource.config import ConfigError


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(5))


def _materialised(seed: int) -> nn.Module:
    net = _net(seed)
    net(torch.randn(2, 3, 6, 6))  # materialise the lazy layer and move BN statistics
    return net


def test_average_equals_elementwise_mean_and_keeps_integer_buffers():
    nets = [_materialised(s) for s in range(3)]
    for i, n in enumerate(nets):
        n[1].num_batches_tracked.fill_(10 + i)
    avg = average_state_dicts(n.state_dict() for n in nets)
    for key, value in nets[0].state_dict().items():
        stacked = torch.stack([n.state_dict()[key] for n in nets])
        if torch.is_floating_point(value):
            torch.testing.assert_close(avg[key], stacked.mean(0), rtol=1e-6, atol=1e-7)
        else:
            assert torch.equal(avg[key], value)  # taken from the first model, not averaged
    assert int(avg["1.num_batches_tracked"]) == 10


def test_streaming_mean_in_place_matches_batch_mean():
    nets = [_materialised(s) for s in range(4)]
    acc_model = _materialised(0)
    acc = acc_model.state_dict()
    for k, n in enumerate(nets[1:], start=2):
        running_mean_(acc, n.state_dict(), k)
    expected = average_state_dicts(n.state_dict() for n in nets)
    for key, value in acc_model.state_dict().items():  # the live model was updated through its state dict
        torch.testing.assert_close(value, expected[key], rtol=1e-6, atol=1e-6)


def test_identical_sources_average_to_the_same_model():
    net = _materialised(1)
    avg = average_state_dicts([net.state_dict()] * 5)
    for key, value in net.state_dict().items():
        torch.testing.assert_close(avg[key], value, rtol=1e-6, atol=1e-7)


def test_running_mean_rejects_other_architectures():
    a, b = _materialised(0).state_dict(), nn.Linear(2, 2).state_dict()
    with pytest.raises(ValueError, match="different keys"):
        running_mean_(a, b, 2)


@pytest.mark.parametrize("passes", [1, 3])
@pytest.mark.parametrize("num_batches", [1, 2])
def test_alignment_scores_are_per_tensor_cosines_of_summed_gradients(num_batches, passes):
    """Against plain autograd: per parameter, cosine(sum of the source's batch gradients, the current model's),
    in one pass or several; both models end without gradients and with their BatchNorm statistics unchanged."""
    torch.manual_seed(5)
    batches = [(torch.randn(6, 3, 6, 6), torch.randint(0, 5, (6,))) for _ in range(num_batches)]
    current, source = _materialised(0), _materialised(1)
    with torch.no_grad():
        source[4].weight.copy_(-current[4].weight)  # a tensor whose gradient is unlikely to align
    buffers = [{k: v.clone() for k, v in m.named_buffers()} for m in (current, source)]

    def summed(model):
        model.train()
        loss = sum(nn.functional.cross_entropy(model(x), y) for x, y in batches)
        return dict(zip([n for n, _ in model.named_parameters()], torch.autograd.grad(loss, list(model.parameters()))))

    g_cur, g_src = summed(current), summed(source)
    for m, saved in zip((current, source), buffers):  # the oracle's train-mode forwards moved the statistics
        with torch.no_grad():
            for k, v in m.named_buffers():
                v.copy_(saved[k])
    scores = alignment_scores(current, source, batches, torch.device("cpu"), "32", eval_mode=False, passes=passes)
    for name in g_cur:
        expected = float(torch.nn.functional.cosine_similarity(g_src[name].flatten().double(),
                                                               g_cur[name].flatten().double(), dim=0))
        assert scores[name] == pytest.approx(expected, abs=1e-9)
    for m, saved in zip((current, source), buffers):
        assert all(p.grad is None for p in m.parameters())
        assert all(torch.equal(v, saved[k]) for k, v in m.named_buffers())


class _Branches(nn.Module):
    """Dropout, BatchNorm, a weight used twice, and two heads each used by one of two batches only."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv, self.bn, self.drop = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5)
        self.shared = nn.Linear(64, 64)
        self.heads = nn.ModuleList([nn.Linear(64, 5), nn.Linear(64, 5)])
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(torch.relu(self.bn(self.conv(x))).flatten(1))
        h = self.shared(torch.relu(self.shared(h)))  # the same weight twice: one gradient, summed
        head = self.heads[self.calls % 2]
        self.calls += 1
        return head(h)


def test_alignment_passes_give_the_same_scores_to_the_bit_with_dropout():
    """Each pass repeats the forwards: the random number generator is replayed, so dropout draws the same masks
    in every pass and the scores do not depend on how many passes hold the gradients (nor does the generator's
    state afterwards), with a tied weight, a tensor that only an earlier batch reaches and one frozen in the
    source alone."""
    batches = [(torch.randn(6, 3, 6, 6), torch.randint(0, 5, (6,))) for _ in range(2)]
    results = []
    for passes in (1, 2, 3, 7):
        current, source = _Branches(0), _Branches(1)
        source.heads[1].bias.requires_grad_(False)
        torch.manual_seed(11)
        scores = alignment_scores(current, source, batches, torch.device("cpu"), "32", eval_mode=False, passes=passes)
        results.append((scores, torch.rand(1).item()))
        assert all(p.grad is None for m in (current, source) for p in m.parameters())
    assert results[0] == results[1] == results[2] == results[3]
    scores = results[0][0]
    assert scores["heads.1.bias"] == 0.0 and scores["heads.0.weight"] != 0.0 and scores["heads.1.weight"] != 0.0
    assert len(set(scores.values())) > 5  # real, distinct cosines


def test_gradient_groups_balance_the_bytes_and_hold_every_tensor_once():
    """Largest tensor first into the lightest group: within 4/3 of the best split. Cutting the tensors in model
    order would give [500, 900] and [100, 500] here (1400 bytes against a best of 1000)."""
    model = nn.ParameterDict({n: nn.Parameter(torch.zeros(size // 4)) for n, size in
                              (("a", 500), ("b", 900), ("c", 100), ("d", 500))})
    groups = gradient_groups(model, 2)
    sizes = sorted(sum(model[n].numel() * 4 for n in g) for g in groups)
    assert sizes == [1000, 1000] and sorted(n for g in groups for n in g) == ["a", "b", "c", "d"]
    net = nn.Sequential(*[nn.Linear(10 * (i + 1), 10) for i in range(8)])
    net[3].weight.requires_grad_(False)
    trainable = {n: p.numel() * 4 for n, p in net.named_parameters() if p.requires_grad}
    for passes in (1, 2, 3, 4, 40):
        groups = gradient_groups(net, passes)
        assert sorted(n for g in groups for n in g) == sorted(trainable) and all(groups)
        assert len(groups) == min(passes, len(trainable))
        best = max(max(trainable.values()), sum(trainable.values()) / len(groups))
        assert max(sum(trainable[n] for n in g) for g in groups) <= best * 4 / 3


def test_select_tensors_threshold_is_strict():
    scores = {"x": 0.3, "y": 0.31, "z": -0.5}
    assert select_tensors(scores, 0.3) == ["y"]
    assert select_tensors(scores, -1.0) == ["x", "y", "z"]
    assert select_tensors(scores, 1.01) == []


def test_transfer_copies_exactly_the_named_tensors():
    dst, src = _materialised(0), _materialised(1)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    n = transfer_tensors(dst, src.state_dict(), ["0.weight", "4.bias"])
    assert n == src.state_dict()["0.weight"].numel() + 5
    after = dst.state_dict()
    for key in before:
        if key in ("0.weight", "4.bias"):
            assert torch.equal(after[key], src.state_dict()[key])
        else:
            assert torch.equal(after[key], before[key])


def test_batchnorm_buffers_follow_transferred_weights():
    net = _materialised(0)
    assert batchnorm_buffers_for(net, ["1.weight"]) == ["1.running_mean", "1.running_var"]
    assert batchnorm_buffers_for(net, ["0.weight"]) == []


def test_source_orders():
    bins = ["e1", "e2", "e3", "e4", "e5"]
    sources = ["e4", "e1", "e2", "e5"]
    assert order_sources(sources, "e3", bins, "chronological") == ["e1", "e2", "e4", "e5"]
    assert order_sources(sources, "e3", bins, "nearest-first") == ["e2", "e4", "e1", "e5"]
    assert order_sources(sources, "e3", bins, "farthest-first") == ["e1", "e5", "e2", "e4"]
    r1 = order_sources(sources, "e3", bins, "random", seed=1)
    assert sorted(r1) == sorted(sources) and r1 == order_sources(sources, "e3", bins, "random", seed=1)
    assert any(order_sources(sources, "e3", bins, "random", seed=s) != r1 for s in range(2, 8))
    with pytest.raises(ConfigError, match="source_order"):
        order_sources(sources, "e3", bins, "alphabetical")


class _Fixed(nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits[: len(x)]


def test_ensemble_voting_oracles():
    torch.manual_seed(0)
    member_logits = [torch.randn(6, 4) * 2 for _ in range(3)]
    members = [_Fixed(l) for l in member_logits]
    x = torch.zeros(6, 1)
    soft = EnsembleModule(members, "soft")(x).softmax(-1)
    expected_soft = torch.stack([l.softmax(-1) for l in member_logits]).mean(0)
    torch.testing.assert_close(soft, expected_soft)
    mean_logits = EnsembleModule(members, "logits")(x)
    torch.testing.assert_close(mean_logits, torch.stack(member_logits).mean(0))
    hard = EnsembleModule(members, "hard")(x).argmax(-1)
    votes = torch.stack([l.argmax(-1) for l in member_logits])
    for i in range(6):
        counts = torch.bincount(votes[:, i], minlength=4)
        winners = (counts == counts.max()).nonzero().flatten()
        if len(winners) == 1:
            assert hard[i] == winners[0]
        else:  # tie: broken by the soft score among the tied classes
            assert hard[i] == winners[expected_soft[i, winners].argmax()]


def test_hard_vote_tie_is_broken_by_soft_score():
    a = torch.tensor([[5.0, 0.0, 0.0]])  # votes class 0, very confident
    b = torch.tensor([[0.0, 0.2, 0.0]])  # votes class 1, barely
    out = EnsembleModule([_Fixed(a), _Fixed(b)], "hard")(torch.zeros(1, 1))
    assert out.argmax(-1).item() == 0
    c = torch.tensor([[0.0, 3.0, 0.0]])
    out = EnsembleModule([_Fixed(a), _Fixed(b), _Fixed(c)], "hard")(torch.zeros(1, 1))
    assert out.argmax(-1).item() == 1  # two votes beat one confident vote


def test_ensemble_config_validates_voting():
    with pytest.raises(ConfigError, match="voting"):
        EnsembleConfig(voting="median")


def test_alignment_scores_skip_frozen_parameters():
    torch.manual_seed(2)
    current, source = _materialised(0), _materialised(1)
    for m in (current, source):
        m[1].weight.requires_grad_(False)  # a frozen BatchNorm weight: no gradient, no hook, score 0
    batches = [(torch.randn(4, 3, 6, 6), torch.randint(0, 5, (4,))) for _ in range(2)]
    scores = alignment_scores(current, source, batches, torch.device("cpu"), "32", eval_mode=False)
    assert scores["1.weight"] == 0.0 and set(scores) == {n for n, _ in current.named_parameters()}
    assert all(p.grad is None for m in (current, source) for p in m.parameters())

