"""Exports of compressed models: ONNX with QCDQ per layer, TorchScript, checkpoint, BOPs report."""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from rslab.core import export, onnx_check
from rslab.core.checkpoint import ModelCard, build_model, load_checkpoint
from rslab.core.compression_tasks import example_inputs_for
from rslab.core.errors import JobCancelled, RSLabError
from rslab.core.quantization import (activation_levels, apply_bit_plan, bit_plan, calibrate_activations,
                                     quantisable_layers, weight_integers)
from rslab.models.arcdnet import ArcdNet
from rslab.models.resnet_cifar import ResNetCifar

CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
CIFAR_STD = np.array([0.2470, 0.2435, 0.2616], np.float32)


def _images(array: np.ndarray) -> torch.Tensor:
    x = (array.astype(np.float32) / 255.0 - CIFAR_MEAN) / CIFAR_STD
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def _mixed_plan(model, first_full: bool = True):
    """Weight and activation bits cycling through 4..8 (different per layer), the first layer at 32."""
    plan = {}
    for i, (name, _) in enumerate(quantisable_layers(model)):
        if first_full and i == 0:
            plan[name] = {"weight": 32, "activation": 32}
        else:
            plan[name] = {"weight": 4 + i % 5, "activation": 4 + (3 * i) % 5}
    return plan


@pytest.fixture(scope="module")
def cifar(samples):
    data = np.load(samples / "cifar10_sample.npz")
    return _images(data["x_train"][:64]), _images(data["x_test"][:32])


@pytest.fixture(scope="module")
def resnet(cifar):
    """ResNet-20 with batch-norm statistics from real images, mixed bits, calibrated ranges."""
    train, _ = cifar
    torch.manual_seed(0)
    model = ResNetCifar(20)
    model.train()
    with torch.no_grad():
        for i in range(0, 64, 32):
            model(train[i:i + 32])
    model.eval()
    apply_bit_plan(model, _mixed_plan(model))
    calibrate_activations(model, [(train[:32],), (train[32:64],)])
    return model


@pytest.fixture(scope="module")
def resnet_onnx(resnet, cifar, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("onnx") / "resnet.onnx")
    info = export.export_onnx(resnet, (cifar[1][:1],), path)
    return path, info


@pytest.fixture(scope="module")
def arcdnet():
    torch.manual_seed(1)
    model = ArcdNet(bands=3, base=16, channels=16)
    generator = torch.Generator().manual_seed(2)
    before = torch.randn(2, 3, 64, 64, generator=generator)
    after = before + 0.5 * torch.randn(2, 3, 64, 64, generator=generator)
    model.train()
    with torch.no_grad():
        model(before, after)
    model.eval()
    apply_bit_plan(model, _mixed_plan(model, first_full=False))
    calibrate_activations(model, [(before, after)])
    return model, before, after


def _consumers(graph):
    users = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def test_resnet_onnx_has_qcdq_per_layer_with_its_bits(resnet, resnet_onnx):
    path, info = resnet_onnx
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    graph = proto.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    users = _consumers(graph)
    producer = {o: n for n in graph.node for o in n.output}
    plan = bit_plan(resnet)
    layers = dict(quantisable_layers(resnet))
    assert info["inputs"] == ["x"] and info["outputs"] == ["output"]
    assert info["quantised_layers"] == len(plan) - 1 == 19  # all but the full-precision first conv
    props = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert props["rslab.bit_plan"] == plan

    # Batch norm is not folded into the convs: one node per BN layer, and the conv weights are the int levels.
    assert sum(n.op_type == "BatchNormalization" for n in graph.node) == 19 == info["batch_norm_nodes"]
    for name, bits in plan.items():
        weight = inits[f"{name}.weight"]
        compute = [n for n in graph.node if n.op_type in ("Conv", "Gemm")
                   and n.input[1] in (f"{name}.weight", f"{name}.weight_dequantized")]
        assert len(compute) == 1, name
        compute = compute[0]
        if bits["weight"] == 32:
            assert weight.dtype == np.float32 and compute.input[1] == f"{name}.weight"
        else:
            top = 2 ** (bits["weight"] - 1) - 1
            assert weight.dtype == np.int8 and np.abs(weight).max() <= top
            levels, scale = weight_integers(layers[name].weight.detach(), bits["weight"])
            assert torch.equal(levels * scale, layers[name].quant_weight())
            assert np.array_equal(weight, levels.numpy().astype(np.int8)), name
            dq = producer[compute.input[1]]
            assert dq.op_type == "DequantizeLinear" and dq.input[0] == f"{name}.weight"
            assert f"int{bits['weight']}" in dq.name
            assert inits[dq.input[1]] == pytest.approx(float(scale), rel=1e-6)
        if bits["activation"] == 32:
            assert compute.input[0] == "x"  # only the first conv is at full precision: it reads the image
            continue
        # input -> QuantizeLinear -> Clip(b-bit range) -> DequantizeLinear -> Conv/Gemm
        dq = producer[compute.input[0]]
        clip = producer[dq.input[0]]
        q = producer[clip.input[0]]
        assert (q.op_type, clip.op_type, dq.op_type) == ("QuantizeLinear", "Clip", "DequantizeLinear")
        assert [u.name for u in users[q.output[0]]] == [clip.name]
        signed = bool(layers[name].a_signed)
        b = bits["activation"]
        low, high = inits[clip.input[1]], inits[clip.input[2]]
        assert low.dtype == high.dtype == inits[q.input[2]].dtype == (np.int8 if signed else np.uint8)
        expected = (-(2 ** (b - 1) - 1), 2 ** (b - 1) - 1) if signed else (0, 2 ** b - 1)
        assert (int(low), int(high)) == expected, name
        assert f"{'int' if signed else 'uint'}{b}" in clip.name and f"{b} bits" in clip.doc_string
        alpha = float(layers[name].a_alpha)
        assert inits[q.input[1]] == pytest.approx(alpha / activation_levels(b, signed), rel=1e-6)
    # The first conv eats the normalised image, which goes negative: the stem stays float here,
    # but the convs after a ReLU have unsigned ranges.
    assert not bool(layers["layer.0.conv1"].a_signed)


def test_resnet_onnx_matches_pytorch_on_real_images(resnet, resnet_onnx, cifar):
    path, _ = resnet_onnx
    _, test = cifar
    samples = [(test[:16],), (test[16:32],)]  # batch 16, exported with batch 1: the batch axis is dynamic
    result = onnx_check.check_onnx(resnet, samples, path, baseline=True)
    # Forced: every stretch between quantisers matches PyTorch from the same codes.
    assert result["agrees_within_one_step"] == 1.0
    assert result["forced.output.steps"] <= 0.05
    assert result["forced.codes.max_diff"] <= 1
    assert result["forced.codes.fraction_differing"] < 1e-4
    assert result["forced.codes.count"] > 1e6
    # Free running: rare one-level flips spread, about as far as PyTorch's own float32 rounding
    # spreads them (float64 baseline), and the classes mostly agree.
    # (measured: 0.45 % of codes and 1.04 in the logits, against 0.09 % and 0.37 for float64; the
    # ratio rests on a handful of flips, so the bound is loose; one weight scale 5 % off makes 7 %)
    assert result["codes.fraction_differing"] < 0.02
    assert result["codes.fraction_differing"] <= 10 * result["float64.codes.fraction_differing"] + 1e-3
    assert result["output.max_abs_diff"] <= 10 * result["float64.output.max_abs_diff"] + 1e-3
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    logits = session.run(None, {"x": test[:32].numpy()})[0]
    with torch.no_grad():
        ref = resnet(test[:32]).numpy()
    assert (logits.argmax(1) == ref.argmax(1)).mean() >= 0.9
    assert resnet.training is False and bit_plan(resnet) == _mixed_plan(resnet)  # the model is untouched


def test_check_onnx_catches_a_wrong_scale(resnet, resnet_onnx, cifar, tmp_path):
    path, _ = resnet_onnx
    proto = onnx.load(path)
    for init in proto.graph.initializer:
        if init.name == "layer.4.conv2.weight_scale":
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(1.05), init.name))
    bad = str(tmp_path / "bad.onnx")
    onnx.save(proto, bad)
    result = onnx_check.check_onnx(resnet, [(cifar[1][:16],)], bad)
    assert result["agrees_within_one_step"] == 0.0
    assert result["forced.codes.max_diff"] > 1


def test_check_onnx_stops_between_samples_on_cancel(resnet, resnet_onnx, cifar):
    """Closing the export dialog during its ONNX check let the check run to its end."""
    from rslab.core.errors import JobCancelled

    path, _ = resnet_onnx
    asked = []

    def cancelled():
        asked.append(1)
        return len(asked) > 1  # after the first sample

    with pytest.raises(JobCancelled):
        onnx_check.check_onnx(resnet, [(cifar[1][:2],), (cifar[1][2:4],), (cifar[1][4:6],)], path, cancelled=cancelled)
    assert len(asked) == 2


def test_arcdnet_onnx_two_inputs_named_outputs(arcdnet, tmp_path):
    model, before, after = arcdnet
    path = str(tmp_path / "arcdnet.onnx")
    info = export.export_onnx(model, (before[:1], after[:1]), path)
    assert info["inputs"] == ["before", "after"]
    assert info["outputs"] == ["change_logit", "uncertainty_logit"]
    assert info["quantised_layers"] == len(quantisable_layers(model))
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    clips = [n for n in proto.graph.node if n.op_type == "Clip" and "/input_" in n.name]
    assert len(clips) == len(quantisable_layers(model))  # the 3-D convs and SE linears included
    # The stem reads the raw (zero-mean) images: a signed range, int8 [-(2^(b-1)-1), 2^(b-1)-1].
    stem = dict(quantisable_layers(model))["encoder.stem.0.0"]
    assert bool(stem.a_signed)
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    clip = next(n for n in clips if n.name.startswith("encoder.stem.0.0/"))
    top = 2 ** (stem.a_bits - 1) - 1
    assert inits[clip.input[1]].dtype == np.int8 and (int(inits[clip.input[1]]), int(inits[clip.input[2]])) == (-top, top)
    assert f"/input_int{stem.a_bits}/" in clip.name
    result = onnx_check.check_onnx(model, [(before[:2], after[:2])], path)
    assert result["agrees_within_one_step"] == 1.0
    for name in ("change_logit", "uncertainty_logit"):
        assert result[f"forced.{name}.steps"] <= 0.05
        assert result[f"{name}.max_abs_diff"] < 0.05
    assert result["forced.codes.fraction_differing"] < 1e-4


class TwoMaps(torch.nn.Module):
    """Returns (map, map, [aux]) like AR-CDNet, in a few layers."""

    export_output_names = ("first", "second", "aux")

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.b = torch.nn.Conv2d(4, 1, 1)
        self.c = torch.nn.Conv2d(4, 1, 1)

    def forward(self, before, after):
        h = torch.relu(self.a(before - after))
        return self.b(h), self.c(h), [self.b(h) * 2]


def test_onnx_of_a_layer_used_twice_and_nested_outputs(tmp_path):
    torch.manual_seed(4)
    model = TwoMaps()
    apply_bit_plan(model, {"a": {"weight": 8, "activation": 6}, "b": {"weight": 4, "activation": 4},
                           "c": {"weight": 32, "activation": 5}})
    x, y = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    calibrate_activations(model, [(x, y)])
    path = str(tmp_path / "two.onnx")
    info = export.export_onnx(model, (x[:1], y[:1]), path, output_names=["m1", "m2", "m3"])
    assert info["outputs"] == ["m1", "m2", "m3"] and info["inputs"] == ["before", "after"]
    proto = onnx.load(path)
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["rslab.quantised_layers"])
    assert meta["c"]["weight_bits"] == 32 and "weight_scale" not in meta["c"]
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    assert inits["c.weight"].dtype == np.float32 and inits["b.weight"].dtype == np.int8
    assert meta["a"]["signed"] and not meta["b"]["signed"]
    result = onnx_check.check_onnx(model, [(x, y)], path)
    assert result["agrees_within_one_step"] == 1.0
    assert np.isnan(result["m2.step"])  # c keeps float weights: no accumulator step
    assert result["m2.max_abs_diff"] < 1e-4
    with pytest.raises(RSLabError, match="2 output names given for 3 outputs"):
        export.export_onnx(model, (x, y), str(tmp_path / "bad.onnx"), output_names=["a", "b"])
    assert not os.path.exists(tmp_path / "bad.onnx")


def test_biases_of_quantised_layers_survive_onnxruntimes_default_optimisation(samples, tmp_path):
    """onnxruntime folded a float bias beside DequantizeLinear inputs into an int32 bias of scale s_x * s_w, and
    the rounded biases moved this CNN's outputs (by 0.12 at 2 bits on these patches). The biases are Adds after
    the quantised products now, which it leaves alone: the ordinary session equals PyTorch. (The shipped models'
    quantised layers have no biases, or none it folded.)"""
    from torch import nn

    class Cnn(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2, self.c3 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1)

        def forward(self, x):
            return self.c3(torch.relu(self.c2(torch.relu(self.c1(x)))))

    import rasterio

    with rasterio.open(samples / "rasterio_RGB.byte.tif") as ds:  # real image patches, scaled to 0..1
        pixels = torch.from_numpy(ds.read(window=((300, 364), (300, 364))).astype(np.float32) / 255)
    patches = pixels.unfold(1, 8, 8).unfold(2, 8, 8).permute(1, 2, 0, 3, 4).reshape(-1, 3, 8, 8)
    for bits in (2, 4, 8):
        torch.manual_seed(0)
        model = Cnn().eval()
        apply_bit_plan(model, {n: {"weight": bits, "activation": bits} for n in ("c1", "c2", "c3")})
        calibrate_activations(model, [(patches,)])
        path = str(tmp_path / f"cnn{bits}.onnx")
        export.export_onnx(model, (patches[:1],), path)
        assert sum(n.op_type == "Add" and n.name.endswith("/bias_add") for n in onnx.load(path).graph.node) == 3
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])  # default optimisation
        got = session.run(None, {session.get_inputs()[0].name: patches.numpy()})[0]
        with torch.no_grad():
            expected = model(patches).numpy()
        assert np.abs(got - expected).max() < 1e-5, bits


def test_bsdm_onnx_quantises_the_statistical_offset_layer(samples, tmp_path):
    """BSDM's offset layer takes the (N, 2) pixel statistics and sums weight columns in PyTorch; the ONNX graph
    holds it as the Linear(2B -> 512) on the repeated statistics, with int8 weights and its input quantiser."""
    import scipy.io

    from rslab.models.bsdm import BSDMDenoiser

    cube = scipy.io.loadmat(str(samples / "abu-beach-2.mat"))["data"].astype(np.float32)
    pixels = cube.reshape(-1, cube.shape[2])
    x = torch.from_numpy((pixels - pixels.min()) / (pixels.max() - pixels.min()))[::7].contiguous()
    bands = x.shape[1]
    torch.manual_seed(0)
    model = BSDMDenoiser(bands).eval()
    apply_bit_plan(model, _mixed_plan(model, first_full=False))
    step = torch.tensor(500)
    calibrate_activations(model, [(x[:512], step)])
    path = str(tmp_path / "bsdm.onnx")
    info = export.export_onnx(model, (x[:1], step), path)
    assert info["quantised_layers"] == len(quantisable_layers(model))
    proto = onnx.load(path)
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["rslab.quantised_layers"])
    assert "offset.0" in meta
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    assert inits["offset.0.weight"].dtype == np.int8 and inits["offset.0.weight"].shape == (512, 2 * bands)
    clips = [n for n in proto.graph.node if n.op_type == "Clip" and n.name.startswith("offset.0/input_")]
    assert len(clips) == 1
    ops = [n.op_type for n in proto.graph.node]  # each activation one Tanh node (not its inference-time form)
    assert ops.count("Tanh") == 15 and "Sigmoid" not in ops
    result = onnx_check.check_onnx(model, [(x[:256], step)], path)
    assert result["agrees_within_one_step"] == 1.0
    assert result["forced.codes.fraction_differing"] < 1e-3
    # the export dialog's path: every format, from the example input a BSDM card gets (one token, a 0-dim step)
    card = ModelCard(task="anomaly_detection", architecture="bsdm", arguments={"bands": bands},
                     bands=[f"band {i + 1}" for i in range(bands)], bit_widths=bit_plan(model))
    written = export.export_all(model, card, example_inputs_for(card), str(tmp_path / "all"), "bsdm")
    assert sorted(written) == sorted(export.FORMATS) and all(os.path.isfile(p) for p in written.values())
    rebuilt = build_model(load_checkpoint(written["checkpoint"]))
    assert torch.allclose(rebuilt(x[:64], step), model(x[:64], step), atol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit")
def test_torchscript_round_trip_is_identical(resnet, cifar, tmp_path):
    test = cifar[1][:16]
    path = export.export_torchscript(resnet, (test[:1],), str(tmp_path / "resnet.torchscript.pt"))
    extra = {"rslab_bit_plan.json": "", "rslab_output_names.json": "", "rslab_input_names.json": ""}
    loaded = torch.jit.load(path, _extra_files=extra)
    assert json.loads(extra["rslab_bit_plan.json"]) == bit_plan(resnet)
    with torch.no_grad():
        (got,), ref = loaded(test), resnet(test)
    assert torch.equal(got, ref)

    # Tuple and list outputs come back as one flat tuple of tensors.
    torch.manual_seed(3)
    model = TwoMaps()
    apply_bit_plan(model, {"a": {"weight": 8, "activation": 6}, "b": {"weight": 4, "activation": 4}})
    x, y = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    calibrate_activations(model, [(x, y)])
    path = export.export_torchscript(model, (x, y), str(tmp_path / "two.torchscript.pt"))
    loaded = torch.jit.load(path, _extra_files=extra)
    assert json.loads(extra["rslab_output_names.json"]) == ["first", "second", "aux"]
    assert json.loads(extra["rslab_input_names.json"]) == ["before", "after"]
    with torch.no_grad():
        got, (first, second, (aux,)) = loaded(x, y), model(x, y)
    assert len(got) == 3 and all(torch.equal(a, b) for a, b in zip(got, (first, second, aux)))


def test_checkpoint_round_trip_is_identical(resnet, cifar, tmp_path):
    card = ModelCard(task="classification", architecture="resnet_cifar", arguments={"depth": 20},
                     bands=["red", "green", "blue"])
    path = export.export_checkpoint(resnet, card, str(tmp_path / "resnet.pt"))
    assert card.bit_widths is None and not card.created  # the caller's card is not changed
    checkpoint = load_checkpoint(path, task="classification")
    assert checkpoint.card.bit_widths == bit_plan(resnet)
    rebuilt = build_model(checkpoint)
    test = cifar[1][:16]
    with torch.no_grad():
        assert torch.equal(rebuilt(test), resnet(test))
    assert os.listdir(tmp_path) == ["resnet.pt"]

    # The rebuilt model (weights frozen on the integer grid) exports the very levels the checkpoint stores.
    onnx_path = str(tmp_path / "rebuilt.onnx")
    export.export_onnx(rebuilt, (test[:1],), onnx_path)
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(onnx_path).graph.initializer}
    packed = {k[:-len("_levels")]: v for k, v in checkpoint.state_dict.items() if k.endswith(".weight_levels")}
    assert len(packed) == 19
    for name, levels in packed.items():
        assert np.array_equal(inits[name], levels.numpy()), name
    result = onnx_check.check_onnx(rebuilt, [(test[:4],)], onnx_path)
    assert result["agrees_within_one_step"] == 1.0


def test_a_full_precision_checkpoint_exports_as_full_precision_and_can_be_compressed(samples, tmp_path):
    """A float model exported as a checkpoint has no bit widths in its card, so it is not taken as compressed."""
    from rslab.core.compression import CompressParams, compress_checkpoint, model_bops_report
    from rslab.core.weights import default_checkpoint

    source = load_checkpoint(default_checkpoint("classification"))
    model = build_model(source)
    path = export.export_checkpoint(model, source.card, str(tmp_path / "float.pt"))
    checkpoint = load_checkpoint(path)
    assert checkpoint.card.bit_widths is None and not model_bops_report(path)["compressed"]
    assert set(checkpoint.state_dict) == set(source.state_dict)  # plain float weights, nothing packed
    test = _images(np.load(samples / "cifar10_sample.npz")["x_test"][:8])
    with torch.no_grad():
        assert torch.equal(build_model(checkpoint)(test), model(test))
    result = compress_checkpoint(path, str(samples / "cifar10_sample.npz"), str(tmp_path / "ghost.pt"),
                                 CompressParams(method="ghost", epochs=0.02, batch_size=16))
    assert result.bops_ratio > 1 and load_checkpoint(result.checkpoint).card.bit_widths


def test_report_has_totals_and_per_layer_costs(resnet, cifar, tmp_path):
    path = str(tmp_path / "r.report.json")
    returned = export.export_bops_report(resnet, (cifar[1][:1],), path, extra={"method": "test", "accuracy": 12.5})
    with open(path, encoding="utf-8") as handle:
        report = json.load(handle)
    assert report == returned
    assert report["method"] == "test" and report["accuracy"] == 12.5
    assert report["bit_plan"] == bit_plan(resnet)
    assert report["size_mb"] > 0 and report["total_macs"] == sum(l["macs"] for l in report["layers"])
    assert report["total_bops"] == sum(l["bops"] for l in report["layers"])
    by_name = {l["name"]: l for l in report["layers"]}
    assert set(by_name) == set(report["bit_plan"])
    for name, layer in by_name.items():
        bits = report["bit_plan"][name]
        assert (layer["weight_bits"], layer["activation_bits"]) == (bits["weight"], bits["activation"])
        assert layer["bops"] == layer["macs"] * bits["weight"] * bits["activation"] > 0
    assert by_name["conv1"]["macs"] == 32 * 32 * 16 * 3 * 9
    with pytest.raises(RSLabError, match="already has a field"):
        export.export_bops_report(resnet, (cifar[1][:1],), str(tmp_path / "x.json"), extra={"total_bops": 1})
    assert not os.path.exists(tmp_path / "x.json")


@pytest.mark.filterwarnings("ignore:`torch.jit")
def test_export_all_writes_every_format(resnet, cifar, tmp_path):
    card = ModelCard(task="classification", architecture="resnet_cifar", arguments={"depth": 20})
    steps = []
    paths = export.export_all(resnet, card, (cifar[1][:2],), str(tmp_path / "out"), "r20",
                              progress=lambda f, m: steps.append(f))
    assert sorted(os.listdir(tmp_path / "out")) == ["r20.onnx", "r20.pt", "r20.report.json", "r20.torchscript.pt"]
    assert set(paths) == set(export.FORMATS) and steps[-1] == 1.0
    with open(paths["report"], encoding="utf-8") as handle:
        report = json.load(handle)
    assert report["onnx_check"]["agrees_within_one_step"] == 1.0
    assert report["onnx_check"]["inputs"].startswith("4 random inputs")  # not the example's zeros
    assert report["onnx"]["outputs"] == ["output"]


def test_an_export_shows_no_torch_deprecation_notices(samples, tmp_path):
    """In QGIS every warning reaches the Log Messages panel with its traceback: an export showed about five
    deprecation notices of the exporters it uses on purpose. A fresh process, so that the once-per-process filter
    is not already in place (pytest resets the filter list between tests)."""
    import subprocess
    import sys

    script = f"""
import warnings
warnings.simplefilter("default")  # as QGIS's Python shows DeprecationWarnings
import numpy as np, torch
from rslab.core import export
from rslab.core.checkpoint import ModelCard
from rslab.core.quantization import apply_bit_plan, calibrate_activations, quantisable_layers
from rslab.models.resnet_cifar import ResNetCifar
data = np.load({str(samples / "cifar10_sample.npz")!r})
x = torch.from_numpy((data["x_test"][:4].astype(np.float32) / 255).transpose(0, 3, 1, 2).copy())
model = ResNetCifar(20).eval()
apply_bit_plan(model, {{name: {{"weight": 6, "activation": 6}} for name, _ in quantisable_layers(model)}})
calibrate_activations(model, [(x,)])
card = ModelCard(task="classification", architecture="resnet_cifar", arguments={{"depth": 20}})
shown = []
warnings.showwarning = lambda message, category, *rest: shown.append(f"{{category.__name__}}: {{message}}")
export.export_all(model, card, (x[:2],), {str(tmp_path / "out")!r}, "r20")
print("SHOWN", shown)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SHOWN []" in done.stdout, done.stdout[-3000:]


@pytest.mark.filterwarnings("ignore:`torch.jit")
def test_a_full_disk_stops_an_onnx_or_torchscript_export_with_a_message(resnet, cifar):
    """torch.jit.save straight to a full disk aborted the whole process (QGIS with it: a C++ error thrown as its
    writer closed); ONNX's save raised a bare OSError. /dev/full answers every write with ENOSPC."""
    x = (cifar[1][:1],)
    for write, what in ((export._write_torchscript, "TorchScript"), (export._write_onnx, "ONNX")):
        arguments = (resnet, x, "/dev/full") + ((None, None, 17) if what == "ONNX" else ())
        with pytest.raises(RSLabError, match=rf"^could not write the {what} file \(\[Errno 28\] No space left on "
                                             r"device\); .* free in /dev: is the disk full\?$"):
            write(*arguments)


def test_refuses_to_overwrite_and_writes_nothing(resnet, cifar, tmp_path):
    x = (cifar[1][:1],)
    existing = tmp_path / "m.onnx"
    existing.write_bytes(b"old")
    with pytest.raises(RSLabError, match="exists"):
        export.export_onnx(resnet, x, str(existing))
    with pytest.raises(RSLabError, match="exists"):
        export.export_torchscript(resnet, x, str(existing))
    assert existing.read_bytes() == b"old"
    # export_all checks every target before writing any: the report exists, so not even the checkpoint is written.
    (tmp_path / "m.report.json").write_text("{}")
    card = ModelCard(task="classification", architecture="resnet_cifar", arguments={"depth": 20})
    with pytest.raises(RSLabError, match=r"m\.onnx, .*m\.report\.json exist already"):
        export.export_all(resnet, card, x, str(tmp_path), "m")
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.report.json"]
    # Allowed, it replaces the file.
    export.export_onnx(resnet, x, str(existing), overwrite=True)
    onnx.checker.check_model(onnx.load(str(existing)))
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.report.json"]


def test_failure_midway_leaves_no_files(resnet, cifar, tmp_path):
    card = ModelCard(task="classification", architecture="resnet_cifar", arguments={"depth": 20})
    folder = tmp_path / "exports"

    def progress(fraction, message):
        if "torchscript" in message:  # the checkpoint and the ONNX file are written by now
            raise JobCancelled()

    with pytest.raises(JobCancelled):
        export.export_all(resnet, card, (cifar[1][:1],), str(folder), "m", progress=progress)
    assert not folder.exists()  # the folder it made is gone again, with the partial files

    class Broken(torch.nn.Module):  # exports to ONNX fine, fails in the tracer
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 2, 1)

        def forward(self, x):
            if torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export():
                raise RuntimeError("no tracing here")
            return self.conv(x)

    tmp_path.joinpath("keep.txt").write_text("x")
    with pytest.raises(RSLabError, match="TorchScript export failed"):
        export.export_all(Broken(), None, (cifar[1][:1],), str(tmp_path), "b", formats=("onnx", "torchscript"))
    assert os.listdir(tmp_path) == ["keep.txt"]
