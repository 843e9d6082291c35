"""PIC-PQ (core/pic_pq.py, core/channel_pruning.py): bit rule, filter property, pruning, the whole job on ResNet-20 and AR-CDNet."""
from __future__ import annotations

import copy
import json
import math
import shutil

import numpy as np
import pytest
from levir import LEVIR
import torch
from torch import nn

from rslab.core.bops import count_bops
from rslab.core.channel_pruning import analyse_pruning, group_importance, max_reduction, prune_channels, select_channels
from rslab.core.checkpoint import Checkpoint, ModelCard, build_model, load_checkpoint, save_checkpoint
from rslab.core.compression_tasks import ChangeDetectionTask, ClassificationTask
from rslab.core.errors import JobCancelled, RSLabError
from rslab.core.job import JobMonitor
from rslab.core.pic_pq import PicPqParams, assign_bits, bits_for_ratio, compress_pic_pq, filter_property, layer_stages
from rslab.core.quantization import bit_plan, compressed_state
from rslab.models.arcdnet import ArcdNet
from rslab.models.resnet_cifar import ResNetCifar
from resnet_cards import resnet_card, untrained_resnet

TINY = dict(generations=2, population=3, sample=2, fitness_steps=2, rank_batches=1, rank_batch_size=16,
            finetune_steps=3, qat_steps=4, batch_size=16)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine two threads contend and run many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cifar(tmp_path_factory, samples):
    """(float ResNet-20, its classification task) on the 500/200-image CIFAR sample."""
    checkpoint = load_checkpoint(untrained_resnet(tmp_path_factory.mktemp("pic_pq") / "resnet20.pt"))
    return build_model(checkpoint).train(), ClassificationTask(checkpoint, str(samples / "cifar10_sample.npz"))


# --- bits ---------------------------------------------------------------------------------


def test_bit_rule_matches_hand_computed_values():
    lam = 1 / 6
    assert bits_for_ratio(0.5, 8, lam) == 7  # 8 - ceil(0.333)
    assert bits_for_ratio(0.1, 8, lam) == 6  # 8 - ceil(1.667)
    assert bits_for_ratio(1 / 6, 6, lam) == 5  # lambda / s = 1 exactly: one bit, not two
    assert bits_for_ratio(0.05, 4, lam) == 2  # 4 - ceil(3.33) = 0, clamped at 2
    assert bits_for_ratio(1.0, 6, lam) == 6 and bits_for_ratio(1.3, 6, lam) == 6  # s >= 1: Bmax
    assert bits_for_ratio(0.3, 8, 1.0) == 4  # 8 - ceil(3.33)

    before = {"conv1": 10.0, "a": 10.0, "b": 10.0, "c": 10.0, "d": 10.0, "fc": 10.0}
    after = {"conv1": 5.0, "a": 5.0, "b": 1.0, "c": 10.0, "d": 3.0}  # fc missing: unpruned
    stages = {"conv1": 0, "a": 1, "b": 2, "c": 3, "d": 5, "fc": 0}
    bits, ratios = assign_bits(before, after, stages, (8, 6, 4), lam)
    assert bits == {"conv1": 32, "a": 7, "b": 4, "c": 4, "d": 3, "fc": 32}
    assert ratios == pytest.approx({"conv1": 0.5, "a": 0.5, "b": 0.1, "c": 1.0, "d": 0.3, "fc": 1.0})


def test_stages_come_from_the_model():
    stages = layer_stages(ResNetCifar(20))
    assert stages["conv1"] == 0 and stages["fc"] == 0
    assert stages["layer.0.conv1"] == 1 and stages["layer.3.conv2"] == 2 and stages["layer.8.conv2"] == 3
    assert set(layer_stages(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3))).values()) == {1}


def test_bad_parameters_are_refused():
    for reduction in (-0.1, 0.96, 1.0):
        with pytest.raises(RSLabError, match="FLOPs reduction"):
            PicPqParams(flops_reduction=reduction)
    PicPqParams(flops_reduction=0.0)
    PicPqParams(flops_reduction=0.95)
    with pytest.raises(RSLabError):
        PicPqParams(max_bits=(8, 9))
    with pytest.raises(RSLabError):
        PicPqParams(population=4, sample=5)
    with pytest.raises(RSLabError):
        PicPqParams(finetune_steps=-1)


def test_the_job_the_engine_and_the_ui_take_one_penalty_range():
    """PicPqParams once took lambda up to 10 while the job, dock and Processing stopped at 8."""
    from rslab.core.compression import CompressParams
    from rslab.core.pic_pq import MAX_PENALTY
    PicPqParams(penalty=MAX_PENALTY)
    CompressParams(penalty=MAX_PENALTY)
    for build in (PicPqParams, CompressParams):
        with pytest.raises(RSLabError, match="between 0 and 8"):
            build(penalty=MAX_PENALTY + 1)


# --- filter property ----------------------------------------------------------------------


class NoiseTask:
    """Random inputs of a fixed shape: enough of the CompressionTask interface for filter_property."""

    def __init__(self, shape):
        self.shape = shape

    def batch(self, size):
        return (torch.randn(size, *self.shape),), None


def test_filter_property_shapes_and_range(cifar):
    model, task = cifar
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.layer[0].conv1.weight[5].zero_()  # an all-zero map: rank 0
    layers = ["layer.0.conv1", "layer.3.conv1", "layer.6.conv1"]
    fp = filter_property(model, task, layers, batches=1, batch_size=8)
    for name, channels, size in zip(layers, (16, 32, 64), (32, 16, 8)):
        assert fp[name].shape == (channels,)
        assert float(fp[name].min()) >= 0 and float(fp[name].max()) <= size
    assert float(fp["layer.0.conv1"][5]) == 0
    assert float(fp["layer.0.conv1"].max()) > 1  # real maps of a 3x3 conv on images are far from rank 1


def test_filter_property_of_constant_and_3d_maps():
    conv = nn.Conv2d(2, 3, 3, padding=1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.copy_(torch.tensor([0.0, 1.0, -2.5]))  # every map is constant
    fp = filter_property(nn.Sequential(conv), NoiseTask((2, 12, 9)), ["0"], batches=2, batch_size=3)["0"]
    assert fp.tolist() == [0.0, 1.0, 1.0]

    volume = nn.Sequential(nn.Conv3d(2, 4, (2, 3, 3), padding=(0, 1, 1)))
    fp = filter_property(volume, NoiseTask((2, 3, 10, 7)), ["0"], batches=1, batch_size=2)["0"]
    assert fp.shape == (4,) and float(fp.min()) > 1 and float(fp.max()) <= 7


# --- pruning ------------------------------------------------------------------------------


def test_pruning_meets_the_target_and_removes_channels(cifar):
    model, task = cifar
    model = copy.deepcopy(model)
    original = copy.deepcopy(model)
    example = task.example_inputs()
    analysis = analyse_pruning(model, example)
    # option-A shortcuts: only the inner channels of each block can be pruned
    assert sorted(g.root for g in analysis.groups) == [f"layer.{i}.conv1" for i in range(9)]
    assert "padding" in analysis.skipped["layer.0.conv2"] and "conv1" in analysis.skipped
    assert 0.5 < max_reduction(analysis) < 0.95

    fp = filter_property(model, task, analysis.scored_layers, batches=1, batch_size=8)
    for reduction in (0.5, 0.8):
        pruned = copy.deepcopy(model)
        importance = group_importance(analysis, fp, {}, {})
        removal, estimate = select_channels(analysis, importance, reduction)
        prune_channels(pruned, example, removal)
        macs = count_bops(pruned, example).total_macs
        one_channel = max(analysis.shapes[n].unit * analysis.shapes[n].in_channels for n in analysis.shapes)
        assert macs <= (1 - reduction) * analysis.macs + one_channel
        assert macs == pytest.approx(estimate, rel=1e-9)
        assert macs > (1 - reduction) * analysis.macs - 2 * one_channel  # it stops once the target is met
        for i, block in enumerate(pruned.layer):
            before = original.layer[i].conv1.out_channels
            kept = [c for c in range(before) if c not in removal.get(f"layer.{i}.conv1", [])]
            assert block.conv1.out_channels == len(kept) >= max(2, math.ceil(0.1 * before))
            assert block.conv2.in_channels == len(kept)
            assert block.conv2.out_channels == original.layer[i].conv2.out_channels
            assert torch.equal(block.conv1.weight, original.layer[i].conv1.weight[kept])
            assert torch.equal(block.bn1.running_mean, original.layer[i].bn1.running_mean[kept])
            assert torch.equal(block.conv2.weight, original.layer[i].conv2.weight[:, kept])
        assert pruned.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert any(len(c) for c in removal.values())
    # the channels go lowest importance first
    lowest = int(np.argmin(importance["layer.6.conv1"]))
    assert lowest in removal["layer.6.conv1"]


class Residual(nn.Module):
    """stem -> inner conv a -> conv b, summed with the stem output (an identity shortcut), linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 12, 3, padding=1)
        self.b = nn.Conv2d(12, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.b(torch.relu(self.a(x))))
        return self.head(x.mean((2, 3)))


def test_residual_channels_share_a_summed_importance():
    torch.manual_seed(0)
    model = Residual()
    original = copy.deepcopy(model)
    example = (torch.randn(1, 3, 10, 10),)
    analysis = analyse_pruning(model, example)
    groups = {g.root: g for g in analysis.groups}
    assert set(groups) == {"stem", "a"}
    assert set(groups["stem"].scored) == {"stem", "b"}  # tied by the residual sum
    assert set(groups["stem"].in_share) == {"a", "head"} and set(groups["a"].in_share) == {"b"}
    assert not analysis.skipped  # linear layers never root a group: the classifier keeps its outputs

    fp = filter_property(model, NoiseTask((3, 10, 10)), analysis.scored_layers, batches=1, batch_size=4)
    importance = group_importance(analysis, fp, {"stem": 2.0, "b": 0.5}, {"stem": 1.0, "b": -3.0})
    expected = 2.0 * fp["stem"].double() + 1.0 + 0.5 * fp["b"].double() - 3.0
    assert importance["stem"] == pytest.approx(expected.numpy())

    prune_channels(model, example, {"stem": [1, 4], "a": [0]})
    kept = [0, 2, 3, 5, 6, 7]
    assert torch.equal(model.stem.weight, original.stem.weight[kept])
    assert torch.equal(model.b.weight, original.b.weight[kept][:, 1:])
    assert torch.equal(model.a.weight, original.a.weight[1:][:, kept])
    assert torch.equal(model.head.weight, original.head.weight[:, kept])
    assert model(torch.randn(2, 3, 10, 10)).shape == (2, 4) and model.head.out_features == 4
    assert count_bops(model, example).total_macs == analysis.estimate_macs({"stem": 2, "a": 1})


# --- the job ------------------------------------------------------------------------------


def test_compress_resnet20_end_to_end(cifar, tmp_path):
    model, task = cifar
    untouched = copy.deepcopy(model.state_dict())
    progress, steps = [], []
    params = PicPqParams(flops_reduction=0.5, **TINY)
    global_state = torch.random.get_rng_state()
    compressed, details = compress_pic_pq(model, task, params, JobMonitor(lambda f, m: progress.append(f)),
                                          steps.append)
    # nothing drawn from torch's process-wide generator, which other jobs of the QGIS process share
    assert torch.equal(torch.random.get_rng_state(), global_state)
    json.dumps(details)
    example = task.example_inputs()
    before, after = count_bops(model, example), count_bops(compressed, example)
    assert all(torch.equal(v, untouched[k]) for k, v in model.state_dict().items())  # the input stays as it was

    assert after.total_macs <= 0.5 * before.total_macs + 64 * 64 * 9 * 8 * 8
    assert details["flops_after"] == after.total_macs and details["flops_before"] == before.total_macs
    assert before.total_bops / after.total_bops > 20  # half the MACs at <= 8 x 8 bits instead of 32 x 32
    assert details["bops_ratio"] == pytest.approx(before.total_bops / after.total_bops)

    plan = bit_plan(compressed)
    assert plan == details["bits"]
    stages = layer_stages(compressed)
    for name, bits in plan.items():
        assert bits["weight"] == bits["activation"]
        if stages[name] == 0:
            assert bits["weight"] == 32
        else:
            assert 2 <= bits["weight"] <= (8, 6, 4)[stages[name] - 1]
        layer = details["layers"][name]
        assert 0 < layer["l1_ratio"] <= 1
        assert (layer["l1_ratio"] < 1) == (layer["out_after"] < layer["out_before"] or layer["in_after"] < layer["in_before"])
        bmax = 32 if stages[name] == 0 else (8, 6, 4)[stages[name] - 1]
        assert bits["weight"] == (32 if bmax == 32 else bits_for_ratio(layer["l1_ratio"], bmax, params.penalty))
        if stages[name] and layer["in_after"] < layer["in_before"]:
            assert bits["weight"] < bmax  # pruned inputs: s < 1, at least one bit below Bmax
    assert any(layer["out_after"] < layer["out_before"] for layer in details["layers"].values())

    evolution = details["evolution"]
    assert len(evolution["best_fitness"]) == params.generations
    assert all(b <= a for a, b in zip(evolution["best_fitness"], evolution["best_fitness"][1:]))
    assert evolution["best_fitness"][-1] <= evolution["initial_best_fitness"]
    phases = {s["phase"] for s in steps}
    assert {"evolution", "finetune", "qat_activations", "qat_full"} <= phases
    assert all(math.isfinite(s["loss"]) for s in steps if "loss" in s)
    assert any("metric" in s for s in steps)
    # the final score sits where training ended (it was drawn at qat_steps, past the phase's last step)
    qat_full = [s for s in steps if s["phase"] == "qat_full"]
    assert [s["step"] for s in qat_full if "metric" in s] == [max(s["step"] for s in qat_full if "loss" in s)]
    assert progress == sorted(progress) and progress[-1] == pytest.approx(1.0)

    plan, state = compressed_state(compressed)
    path = str(tmp_path / "compressed.pt")
    save_checkpoint(path, state, resnet_card(bit_widths=plan))
    rebuilt = build_model(load_checkpoint(path))
    x = task.x_test[:16]
    with torch.no_grad():
        assert torch.equal(rebuilt(x), compressed.eval()(x))


@pytest.mark.parametrize("method", ["pic_pq", "ghost"])
def test_the_shipped_resnet_compressed_scores_as_its_report_says(samples, tmp_path, method):
    """The trained ResNet-20 the plugin ships (the other compression tests start from random weights): its score
    before is the README's 75.0 % on the bundled sample, and the saved compressed checkpoint, read back and
    evaluated afresh, scores exactly what the result reports after."""
    from rslab.core.compression import CompressParams, compress_checkpoint
    from rslab.core.compression_tasks import task_for

    shipped = str(samples.parent / "weights" / "resnet20_cifar_subset.pt")
    data = str(samples / "cifar10_sample.npz")
    params = CompressParams(method=method, flops_reduction=0.3 if method == "pic_pq" else 0.5, max_bits=(8, 6, 4),
                            epochs=0.1, generations=2)
    result = compress_checkpoint(shipped, data, str(tmp_path / "c.pt"), params)
    assert result.scores_before["accuracy"] == 75.0
    saved = load_checkpoint(str(tmp_path / "c.pt"))
    assert task_for(saved, data).evaluate(build_model(saved)) == result.scores_after
    assert 10.0 < result.scores_after["accuracy"] <= 100.0 and result.bops_ratio > 2


def test_quantise_only_keeps_every_channel(cifar):
    model, task = cifar
    params = PicPqParams(flops_reduction=0.0, max_bits=(5, 4, 3), qat_steps=2, batch_size=8)
    compressed, details = compress_pic_pq(model, task, params, JobMonitor())
    assert details["flops_after"] == details["flops_before"] and details["removed_channels"] == {}
    stages = layer_stages(compressed)
    assert {n: b["weight"] for n, b in bit_plan(compressed).items()} == {
        n: (32, 5, 4, 3)[s] for n, s in stages.items()}


def test_unreachable_target_and_cancel(cifar):
    model, task = cifar
    with pytest.raises(RSLabError, match="at most"):
        compress_pic_pq(model, task, PicPqParams(flops_reduction=0.95, **TINY), JobMonitor())
    with pytest.raises(JobCancelled):
        compress_pic_pq(model, task, PicPqParams(**TINY), JobMonitor(cancelled=lambda: True))
    calls = []

    def later() -> bool:  # cancel in the middle of the evolution
        calls.append(1)
        return len(calls) > 8

    with pytest.raises(JobCancelled):
        compress_pic_pq(model, task, PicPqParams(**TINY), JobMonitor(cancelled=later))
    assert len(calls) == 9


def test_compress_arcdnet(tmp_path, samples):
    """AR-CDNet (Conv3d, concatenations, squeeze-excitation, 1-channel heads) on two LEVIR pairs."""
    from rslab.core.change_data import IMAGENET_MEAN, IMAGENET_STD

    for sub in ("A", "B", "label"):
        (tmp_path / sub).mkdir()
        suffix = "label" if sub == "label" else sub
        for name in ("p1", "p2"):
            shutil.copy(samples / f"levir_test_7_{suffix}.png", tmp_path / sub / f"{name}.png")
    card = ModelCard(task="change_detection", architecture="arcdnet", arguments={"bands": 3, "base": 8, "channels": 8},
                     bands=["red", "green", "blue"], normalisation={"mean": IMAGENET_MEAN, "std": IMAGENET_STD})
    task = ChangeDetectionTask(Checkpoint(card=card, state_dict={}), str(tmp_path), held_out=["p2"], crop=64)
    torch.manual_seed(0)
    model = ArcdNet(bands=3, base=8, channels=8)
    params = PicPqParams(flops_reduction=0.3, generations=1, population=2, sample=1, fitness_steps=1,
                         rank_batches=1, rank_batch_size=2, finetune_steps=2, qat_steps=2, batch_size=2)
    compressed, details = compress_pic_pq(model, task, params, JobMonitor())
    json.dumps(details)
    assert details["flops_after"] <= 0.7 * details["flops_before"] * 1.01
    layers = details["layers"]
    assert layers["final.1.1"]["out_after"] == 1 and layers["uncertainty_head.1"]["out_after"] == 1
    assert any(v["out_after"] < v["out_before"] for n, v in layers.items() if n.startswith("tdm."))  # Conv3d
    assert all(2 <= b["weight"] <= 8 for b in bit_plan(compressed).values())  # no stage_of: max_bits[0]

    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = compressed.eval()(x, x + 0.5)
    assert out[0].shape == (1, 1, 64, 64) and out[1].shape == (1, 1, 64, 64)
    assert torch.isfinite(out[0]).all() and torch.isfinite(out[1]).all()
    plan, state = compressed_state(compressed)
    card.bit_widths = plan
    path = str(tmp_path / "arcdnet_pq.pt")
    save_checkpoint(path, state, card)
    rebuilt = build_model(load_checkpoint(path))
    with torch.no_grad():
        again = rebuilt(x, x + 0.5)
    assert torch.equal(again[0], out[0]) and torch.equal(again[1], out[1])


def test_a_change_detector_is_never_scored_on_pairs_it_trained_on(shared_data, samples, tmp_path):
    """The shipped model's card lists stage 1's pairs (DSIFN-CD among them) apart from stage 2's: reading stage
    2's alone, compressing it on the DSIFN folder fine-tuned and scored on pairs it had trained on and reported
    F1 19.10 -> 49.23 without a word."""
    from rslab.core.compression_tasks import trained_pairs
    from rslab.core.weights import default_checkpoint

    shipped = load_checkpoint(default_checkpoint("change_detection"))
    seen = trained_pairs(shipped.card.training)
    with pytest.raises(RSLabError, match="the model trained on every pair in .*dsifn_cd_256"):
        ChangeDetectionTask(shipped, str(shared_data / "change" / "dsifn_cd_256"))
    levir = ChangeDetectionTask(shipped, str(shared_data / LEVIR))
    assert sorted(p.name for p in levir.evaluation) == ["test_102_0512_0000", "test_55_0256_0000",
                                                        "test_7_0256_0512", "val_27_0000_0256"]
    assert not {p.name for p in levir.evaluation} & seen and levir.notes == []
    for sub in ("A", "B", "label"):  # pairs the card does not name: some held out to score on, with a note
        (tmp_path / sub).mkdir()
        for name in ("p1", "p2"):
            shutil.copy(samples / f"levir_test_7_{'label' if sub == 'label' else sub}.png", tmp_path / sub / f"{name}.png")
    unseen = ChangeDetectionTask(shipped, str(tmp_path))
    assert len(unseen.evaluation) == 1 and not set(unseen.evaluation) & set(unseen.training)
    assert "trained on none of these 2 pairs" in unseen.notes[0]


def test_ranking_feature_maps_stops_on_cancel_within_a_batch():
    """One batch of AR-CDNet's maps took 30 s to rank, and a cancel waited for every layer of every batch."""
    model = ArcdNet(bands=3, base=8, channels=8)
    layers = [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]

    class Task:
        def batch(self, size):
            x = torch.zeros((size, 3, 64, 64))
            return (x, x.clone()), None

    ranked = []
    monitor = JobMonitor(lambda fraction, text: None, lambda: len(ranked) > 0)
    hook = model.get_submodule(layers[0]).register_forward_hook(lambda *args: ranked.append(1))
    with pytest.raises(JobCancelled):
        filter_property(model, Task(), layers, batches=3, batch_size=2, monitor=monitor)
    hook.remove()
    assert len(ranked) == 1  # stopped at the first layer ranked, in the first of three batches
    assert not any(module._forward_hooks for module in model.modules())  # its hooks are gone
