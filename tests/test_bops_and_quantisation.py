"""BOPs counting (pinned figures), DoReFa quantisers, and compressed checkpoints that rebuild exactly."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

from rslab.core.bops import bops_ratio, count_bops
from rslab.core.checkpoint import ModelCard, build_model, load_checkpoint, save_checkpoint
from rslab.core.compression_tasks import AnomalyTask, ClassificationTask, example_inputs_for
from rslab.core.errors import RSLabError
from rslab.core.quantization import (
    apply_bit_plan,
    bit_plan,
    calibrate_activations,
    compressed_state,
    quantisable_layers,
    quantize_activation,
    quantize_weight,
)
from rslab.models.resnet_cifar import ResNetCifar
from resnet_cards import resnet_card

MEAN, STD = (resnet_card().normalisation[key] for key in ("mean", "std"))


def test_resnet56_full_precision_bops_are_pinned():
    report = count_bops(ResNetCifar(56), (torch.zeros(1, 3, 32, 32),))
    conv_macs = sum(layer.macs for layer in report.layers if layer.kind == "Conv2d")
    assert conv_macs == 125_485_056
    assert sum(layer.bops for layer in report.layers if layer.kind == "Conv2d") / 1e9 == pytest.approx(128.50, abs=0.005)
    assert len([layer for layer in report.layers if layer.kind == "Conv2d"]) == 55  # no 1x1 shortcut convs
    fc = report.layers[-1]
    assert fc.kind == "Linear" and fc.macs == 64 * 10 and fc.bops == 640 * 32 * 32
    assert report.params == sum(p.numel() for p in ResNetCifar(56).parameters())


def test_quantised_bops_size_and_counting_modes():
    model = ResNetCifar(20)
    before = count_bops(model, (torch.zeros(1, 3, 32, 32),))
    plan = {name: {"weight": 4, "activation": 8} for name, _ in quantisable_layers(model)[1:]}
    apply_bit_plan(model, plan)
    after = count_bops(model, (torch.zeros(1, 3, 32, 32),))
    first = after.layers[0]
    assert (first.weight_bits, first.activation_bits) == (32, 32) and first.bops == before.layers[0].bops
    assert all(layer.bops == layer.macs * 32 for layer in after.layers[1:])
    assert bops_ratio(before, after) > 20
    quantised_weights = sum(m.weight.numel() for _, m in quantisable_layers(model)[1:])
    assert before.size_mb - after.size_mb == pytest.approx(quantised_weights * 28 / 8 / 1e6)
    ghost = count_bops(model, (torch.zeros(1, 3, 32, 32),), mode="ghost")
    # GHOST's convention: activation bits = the previous layer's weight bits (32 after the first conv, then 4)
    assert ghost.layers[1].activation_bits == 32 and ghost.layers[2].activation_bits == 4

    grouped = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 4, 1))
    hawq = count_bops(grouped, (torch.zeros(1, 8, 10, 10),))
    picpq = count_bops(grouped, (torch.zeros(1, 8, 10, 10),), mode="pic_pq")
    assert hawq.layers[0].macs == 100 * 8 * 1 * 9 and picpq.layers[0].macs == 100 * 8 * 8 * 9
    with pytest.raises(RSLabError, match="mode"):
        count_bops(grouped, (torch.zeros(1, 8, 10, 10),), mode="flops")


def test_bsdm_offset_layer_is_counted_and_quantised(samples):
    """BSDM's statistical-offset layer takes the (N, 2) pixel statistics, but to BOPs and quantisation it is the
    Linear(2B -> 512) over the repeated statistics that METHODS.md defines, and its quantised form computes the
    same as a quantised Linear on the repeated input."""
    import scipy.io

    from rslab.models.bsdm import BSDMDenoiser, pixel_statistics

    cube = scipy.io.loadmat(str(samples / "abu-beach-2.mat"))["data"].astype(np.float32)
    pixels = cube.reshape(-1, cube.shape[2])
    x = torch.from_numpy((pixels - pixels.min()) / (pixels.max() - pixels.min()))[:2000]
    bands, step = x.shape[1], torch.tensor(500)
    torch.manual_seed(0)
    model = BSDMDenoiser(bands).eval()
    layer = model.offset[0]
    statistics = pixel_statistics(x)
    literal = torch.nn.functional.linear(statistics.repeat_interleave(bands, 1), layer.weight, layer.bias)
    assert torch.allclose(layer(statistics), literal, atol=1e-5)
    report = count_bops(model, (x[:1], step))
    offset = next(row for row in report.layers if row.name == "offset.0")
    assert (offset.in_channels, offset.out_channels, offset.macs) == (2 * bands, 512, 2 * bands * 512)
    # one pixel token: every linear layer, the offset one included, counted once at its full size
    assert report.total_macs == sum(m.in_features * m.out_features for _, m in quantisable_layers(model))

    with torch.no_grad():
        float_out = model(x, step)
        apply_bit_plan(model, {"offset.0": {"weight": 2, "activation": 2}})
        calibrate_activations(model, [(x, step)])
        quantised_out = model(x, step)
        layer = model.offset[0]
        expected = torch.nn.functional.linear(layer.quant_input(statistics.repeat_interleave(bands, 1)),
                                              layer.quant_weight(), layer.bias)
    assert torch.allclose(layer(statistics), expected, atol=1e-5)
    assert not torch.allclose(quantised_out, float_out, atol=1e-3)  # the 2-bit layer is really applied
    assert count_bops(model, (x[:1], step)).total_bops < report.total_bops


def test_dorefa_quantisers(samples):
    torch.manual_seed(0)
    w = torch.randn(64, 32, 3, 3, requires_grad=True)
    for bits in (2, 3, 4, 8):
        q = quantize_weight(w, bits)
        levels = torch.unique(torch.round(q.detach() / (w.detach().abs().max() / (2 ** (bits - 1) - 1))))
        assert len(levels) <= 2 ** bits - 1 and levels.abs().max() == 2 ** (bits - 1) - 1
    # The formula itself (DoReFa, as METHODS.md gives it) on a trained layer of the shipped ResNet-20: counting
    # levels alone passed without the tanh.
    model = build_model(load_checkpoint(str(samples.parent / "weights" / "resnet20_cifar_subset.pt")))
    trained = dict(model.named_parameters())["layer.4.conv1.weight"].detach()
    for bits in (2, 4, 6, 8):
        k = 2 ** (bits - 1) - 1
        t = torch.tanh(trained)
        expected = torch.round(t / t.abs().max() * k) * (trained.abs().max() / k)
        assert torch.allclose(quantize_weight(trained, bits), expected, rtol=0, atol=1e-7), bits
    q = quantize_weight(w, 4)
    q.sum().backward()
    assert w.grad is not None and torch.all(w.grad != 0)  # straight-through: rounding passes the gradient
    assert quantize_weight(w, 32) is w
    x = torch.linspace(-1, 3, 101)
    a = quantize_activation(x, 2, torch.tensor(2.0), signed=False)
    assert torch.allclose(torch.unique(a), torch.tensor([0.0, 2 / 3, 4 / 3, 2.0]))
    s = quantize_activation(x, 3, torch.tensor(1.0), signed=True)
    assert s.min() == -1 and s.max() == 1 and len(torch.unique(s)) == 7
    with pytest.raises(RSLabError, match="2 to 8 bits"):
        apply_bit_plan(ResNetCifar(20), {"conv1": {"weight": 9, "activation": 8}})
    with pytest.raises(RSLabError, match="does not have"):
        apply_bit_plan(ResNetCifar(20), {"nope": {"weight": 4, "activation": 4}})


def test_compressed_checkpoint_rebuilds_pruned_and_quantised_models_exactly(tmp_path, samples):
    import torch_pruning as tp

    torch.manual_seed(0)
    model = ResNetCifar(20).eval()
    apply_bit_plan(model, {name: {"weight": 3, "activation": 4} for name, _ in quantisable_layers(model)[1:-1]})
    images = np.load(samples / "cifar10_sample.npz")["x_test"][:16].astype(np.float32)
    x = torch.from_numpy(((images - MEAN) / STD).transpose(0, 3, 1, 2).astype(np.float32))
    calibrate_activations(model, [(x,)])
    block = model.layer[4]  # physically remove 5 inner channels of one block
    tp.prune_conv_out_channels(block.conv1, list(range(5)))
    tp.prune_batchnorm_out_channels(block.bn1, list(range(5)))
    tp.prune_conv_in_channels(block.conv2, list(range(5)))
    expected = model(x)
    plan, state = compressed_state(model)
    assert state["layer.4.conv1.weight_levels"].dtype == torch.int8 and "layer.4.conv1.weight" not in state
    assert plan["conv1"] == {"weight": 32, "activation": 32} and plan["layer.0.conv1"]["weight"] == 3
    save_checkpoint(str(tmp_path / "c.pt"), state, resnet_card(bit_widths=plan))
    rebuilt = build_model(load_checkpoint(str(tmp_path / "c.pt")))
    assert rebuilt.layer[4].conv1.out_channels == 32 - 5
    assert torch.equal(rebuilt(x), expected)
    assert bit_plan(rebuilt) == plan
    save_checkpoint(str(tmp_path / "float.pt"), ResNetCifar(20).state_dict(), resnet_card())
    assert os.path.getsize(tmp_path / "c.pt") < 0.5 * os.path.getsize(tmp_path / "float.pt")


def test_task_adapters_read_real_data(tmp_path, samples):
    save_checkpoint(str(tmp_path / "r.pt"), ResNetCifar(20).state_dict(), resnet_card())
    checkpoint = load_checkpoint(str(tmp_path / "r.pt"))
    task = ClassificationTask(checkpoint, str(samples / "cifar10_sample.npz"))
    (images,), labels = task.batch(8)
    assert images.shape == (8, 3, 32, 32) and labels.shape == (8,)
    scores = task.evaluate(build_model(checkpoint))
    assert 0 <= scores["accuracy"] <= 100 and scores["loss"] > 0
    # the shipped ResNet-20 on the sample's 200 test images: 75.0 % (the README's compression panel figure);
    # an untrained network guesses about one class in ten
    from rslab.core.weights import default_checkpoint

    shipped = load_checkpoint(default_checkpoint("classification"))
    trained = ClassificationTask(shipped, str(samples / "cifar10_sample.npz")).evaluate(build_model(shipped))
    assert trained["accuracy"] == pytest.approx(75.0, abs=1.0) and trained["loss"] < scores["loss"]  # 2 images: CPUs differ
    assert [t.shape for t in example_inputs_for(checkpoint.card)] == [(1, 3, 32, 32)]
    with pytest.raises(RSLabError, match="input size must be at most"):
        example_inputs_for(checkpoint.card, 10 ** 6)  # refused before torch tries to allocate 12 TB
    with pytest.raises(RSLabError, match="at least 8"):
        example_inputs_for(checkpoint.card, 4)
    with pytest.raises(RSLabError, match="x_train"):
        np.savez(tmp_path / "bad.npz", images=np.zeros((2, 32, 32, 3)))
        ClassificationTask(checkpoint, str(tmp_path / "bad.npz"))

    from rslab.models.bsdm import BSDMDenoiser

    card = ModelCard(task="anomaly_detection", architecture="bsdm", arguments={"bands": 193})
    save_checkpoint(str(tmp_path / "b.pt"), BSDMDenoiser(193).state_dict(), card)
    bsdm = load_checkpoint(str(tmp_path / "b.pt"))
    anomaly = AnomalyTask(bsdm, str(samples / "abu-beach-2.mat"))
    (tokens, step), noise = anomaly.batch(64)
    assert tokens.shape == noise.shape == (64, 193) and int(step) == 500
    assert anomaly.metric == "auc" and anomaly.notes == []
    assert 0 <= anomaly.evaluate(build_model(bsdm))["auc"] <= 100
    from scipy.io import loadmat, savemat  # the scene without its reference: scored by fit, not called an AUC

    savemat(str(tmp_path / "unlabelled.mat"), {"data": loadmat(str(samples / "abu-beach-2.mat"))["data"]})
    unlabelled = AnomalyTask(bsdm, str(tmp_path / "unlabelled.mat"))
    assert unlabelled.metric == "fit" and "not an AUC" in unlabelled.notes[0]
    scores = unlabelled.evaluate(build_model(bsdm))
    assert set(scores) == {"loss", "fit"} and scores["fit"] == pytest.approx(100 * (1 - scores["loss"]))
