"""AR-CDNet: shapes, gradient flow, parameter count and the loss terms (METHODS.md section 1)."""
from __future__ import annotations

import pytest
import torch

from rslab.models import registry
from rslab.models.arcdnet import ArcdNet, arcdnet_loss, bce, dice_loss


@pytest.mark.parametrize("bands,size", [(3, (64, 64)), (13, (70, 45)), (1, (33, 97))])
def test_shapes_any_bands_and_size(bands, size):
    torch.manual_seed(0)
    net = ArcdNet(bands=bands, base=8, channels=8)
    a, b = torch.randn(2, bands, *size), torch.randn(2, bands, *size)
    logit, uncertainty, aux = net.train()(a, b)
    assert logit.shape == uncertainty.shape == (2, 1, *size)
    assert [m.shape for m in aux] == [(2, 1, *size)] * 4
    net.eval()
    with torch.no_grad():
        logit, uncertainty, aux = net(a, b)
    assert logit.shape == (2, 1, *size) and aux == []


def test_full_configuration_has_the_papers_size_and_the_widths_say_their_sizes():
    from rslab.core.change_training import WIDTH_PARAMETERS, WIDTH_PRESETS

    params = sum(p.numel() for p in ArcdNet(bands=3, base=64, channels=64).parameters())
    assert 14.2e6 < params < 14.45e6  # "about 14.3 M parameters"
    assert registry.architecture("arcdnet") is ArcdNet
    for name, (base, channels) in WIDTH_PRESETS.items():  # the counts the dialog and Processing show
        count = sum(p.numel() for p in ArcdNet(bands=3, base=base, channels=channels).parameters())
        assert WIDTH_PARAMETERS[name] == f"{count / 1e6:.1f} M", name


def test_every_parameter_gets_a_gradient():
    # Seed 0 starts one 4-unit squeeze-excitation layer with all ReLUs dead at this tiny width, which
    # zeroes its gradient by ReLU's nature, not by a wiring error; seed 1 starts none dead.
    torch.manual_seed(1)
    net = ArcdNet(bands=3, base=8, channels=8).train()
    a, b = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    y = (torch.rand(2, 1, 64, 64) > 0.7).float()
    loss, parts = arcdnet_loss(net(a, b), y)
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []
    zero = [n for n, p in net.named_parameters() if p.grad.abs().sum() == 0]
    assert zero == []
    assert set(parts) == {"final", "m2", "m3", "m4", "m5", "uncertainty"}


def test_loss_terms():
    y = torch.zeros(1, 1, 8, 8)
    y[..., 2:6, 2:6] = 1
    perfect = (y * 2 - 1) * 40  # confident and right
    assert dice_loss(perfect, y) < 1e-6
    assert bce(perfect, y) < 1e-6
    assert dice_loss(-perfect, y) > 0.9  # eps = 1 smoothing keeps it just below 1
    wrong_inside = perfect.clone()
    wrong_inside[..., 2:6, 2:6] = -40  # misses every changed pixel
    valid = torch.zeros_like(y)
    valid[..., :1, :] = 1  # only an all-unchanged row is labelled
    assert bce(wrong_inside, y) > 5
    assert bce(wrong_inside, y, valid) < 1e-6  # wrong pixels outside the valid mask do not count

    # the uncertainty target is |stopgrad(p) - y|: its loss sends no gradient into the change logit
    logit = torch.linspace(-3, 3, 64).reshape(1, 1, 8, 8).requires_grad_()
    uncertainty = torch.full((1, 1, 8, 8), 2.0, requires_grad=True)
    total, parts = arcdnet_loss((logit, uncertainty, []), y)
    total.backward()
    logit_only = logit.detach().clone().requires_grad_()
    (bce(logit_only, y) + dice_loss(logit_only, y)).backward()
    assert torch.allclose(logit.grad, logit_only.grad)
    assert uncertainty.grad.abs().sum() > 0
    target = (torch.sigmoid(logit).detach() - y).abs()
    assert abs(parts["uncertainty"] - float(bce(uncertainty, target))) < 1e-6
