"""ssl_zoo.lars.LARS steps as lightly's LARS does, without making the host wait."""

import copy

import pytest
import torch
from lightly.utils.lars import LARS as LightlyLARS
from torch import nn

from ssl_zoo.host_sync import HostSyncCounter
from ssl_zoo.lars import LARS


class Tiny(nn.Module):
    """A small model with each kind of parameter lightly's LARS branches on."""

    def __init__(self) -> None:
        super().__init__()
        self.linear1 = nn.Linear(8, 16)
        self.norm = nn.BatchNorm1d(16)
        self.linear2 = nn.Linear(16, 4)
        self.zero_weight = nn.Parameter(torch.zeros(4))  # ||p|| = 0 at the first step
        self.zero_gradient = nn.Parameter(torch.randn(4))  # ||g|| = 0 at every step
        self.no_grad = nn.Parameter(torch.randn(3))  # never gets a gradient (grad is None)

    def forward(self, x):  # x: (B, 8) -> (B, 4)
        out = self.linear2(torch.relu(self.norm(self.linear1(x))))
        return out + self.zero_weight + 0 * self.zero_gradient


def param_groups(model: Tiny, nesterov: bool) -> list[dict]:
    return [
        # As configure_optimizers names them; the group's settings are the optimiser's defaults.
        {"name": "ssl", "params": [model.linear1.weight, model.zero_weight, model.zero_gradient, model.no_grad]},
        {"name": "ssl_no_weight_decay", "params": [model.linear1.bias, *model.norm.parameters()], "weight_decay": 0.0},
        # Settings of its own, and dampening where nesterov allows it.
        {"name": "head", "params": list(model.linear2.parameters()), "lr": 0.5, "weight_decay": 0.1,
         "trust_coefficient": 0.05, "dampening": 0.0 if nesterov else 0.1},
    ]


def make_optimizer(cls, model: Tiny, nesterov: bool):
    # Large enough that the weights move far beyond the tolerance: about 2% a step.
    return cls(param_groups(model, nesterov), lr=1.0, momentum=0.9, weight_decay=1e-2,
               nesterov=nesterov, trust_coefficient=0.02)


def train_step(model: Tiny, optimizer, step: int) -> None:
    generator = torch.Generator().manual_seed(step)
    x, target = torch.randn(16, 8, generator=generator), torch.randn(16, 4, generator=generator)
    optimizer.zero_grad()
    ((model(x) - target) ** 2).mean().backward()
    optimizer.step()


@pytest.mark.parametrize("nesterov", [False, True])
def test_steps_like_lightly(nesterov):
    torch.manual_seed(0)
    ours = Tiny()
    theirs = copy.deepcopy(ours)
    start = copy.deepcopy(ours.state_dict())
    ours_opt, theirs_opt = make_optimizer(LARS, ours, nesterov), make_optimizer(LightlyLARS, theirs, nesterov)
    for step in range(20):
        train_step(ours, ours_opt, step)
        train_step(theirs, theirs_opt, step)
        for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=f"{name} differs after step {step + 1}")
    # Non-vacuous: adapted, plain-SGD and first-step-zero parameters all moved well past
    # the tolerance; a zero gradient and a missing one leave theirs untouched.
    for name in ["linear1.weight", "norm.weight", "norm.bias", "linear2.weight", "zero_weight"]:
        assert (ours.state_dict()[name] - start[name]).abs().max() > 1e-2, name
    for name in ["zero_gradient", "no_grad"]:
        assert torch.equal(ours.state_dict()[name], start[name]), name


def count_syncs_of_steps(cls) -> HostSyncCounter:
    """Two steps of ``cls`` (the first makes the momentum buffers), counted."""
    torch.manual_seed(0)
    model = Tiny()
    optimizer = make_optimizer(cls, model, nesterov=False)
    counter = HostSyncCounter()
    with counter:
        for step in range(2):
            ((model(torch.randn(16, 8)) - 1) ** 2).mean().backward()
            counter.counting = True
            optimizer.step()
            counter.counting = False
    return counter


def test_a_step_makes_no_host_sync():
    counter = count_syncs_of_steps(LARS)
    assert counter.ops_seen > 20  # the steps ran under the counter
    assert not counter.calls, "\n".join(counter.calls)


def test_the_counter_sees_lightlys_host_syncs():
    # What LARS is for: lightly's reads norms on the host, at least one per weight-decayed
    # parameter with a gradient (5 here) and step.
    counter = count_syncs_of_steps(LightlyLARS)
    assert len(counter.calls) >= 2 * 5
    assert all("lightly/utils/lars.py" in call for call in counter.calls)


def test_clip_lr_caps_each_layers_rate_at_the_global_one_as_solo_learn_does():
    """solo-learn's LARS (clip_lr): lars_lr = min(eta * ||p|| / (||g|| + wd ||p|| + eps) / lr, 1),
    then p -= lr * lars_lr * (g + wd p) (one step, no momentum), written out per parameter."""
    torch.manual_seed(0)
    small, large = nn.Parameter(torch.randn(6, 5)), nn.Parameter(100 * torch.randn(7))
    small.grad, large.grad = 10 * torch.randn(6, 5), 1e-3 * torch.randn(7)
    lr, wd, eta = 0.5, 1e-4, 0.02
    expected, ratios = [], []
    for p in (small, large):
        trust = eta * p.norm() / (p.grad.norm() + wd * p.norm() + 1e-8)
        ratios.append(trust.item() / lr)
        expected.append(p.detach() - lr * min(ratios[-1], 1.0) * (p.grad + wd * p.detach()))
    assert min(ratios) < 1 < max(ratios)  # one layer is clipped, the other is not
    LARS([small, large], lr=lr, weight_decay=wd, trust_coefficient=eta, clip_lr=True).step()
    assert torch.allclose(small, expected[0]) and torch.allclose(large, expected[1])
