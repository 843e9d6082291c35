"""GHOST (core/ghost.py): k-means bit search, the self-teaching switch and loss, and the whole job.

Small and fast: the end-to-end runs take a handful of steps on CIFAR ResNets and a
small AR-CDNet. torch runs on one thread here (restored afterwards): on a busy
two-core machine two threads make a training step 20-50 times slower.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rslab.core.bops import count_bops
from rslab.core.change_data import IMAGENET_MEAN, IMAGENET_STD
from rslab.core.checkpoint import Checkpoint, ModelCard, build_model, load_checkpoint, save_checkpoint
from rslab.core.compression_tasks import ChangeDetectionTask, ClassificationTask
from rslab.core.errors import JobCancelled, RSLabError
from rslab.core.ghost import (GhostParams, SelfTeaching, compress_ghost, distillation_points, hybrid_bits,
                              hybrid_search, kmeans_distortion, make_optimiser, spatial_attention)
from rslab.core.job import JobMonitor
from rslab.core.quantization import apply_bit_plan, bit_plan, compressed_state
from rslab.models.arcdnet import ArcdNet
from rslab.models.resnet_cifar import ResNetCifar
from resnet_cards import resnet_card

SAMPLES = Path(__file__).resolve().parent.parent / "resources" / "samples"
CIFAR = str(SAMPLES / "cifar10_sample.npz")
# Lloyd-Max (Max 1960): the positive levels of the optimal 4-, 8- and 16-level quantisers of N(0, 1).
LLOYD_MAX = {2: [0.4528, 1.510], 3: [0.2451, 0.7560, 1.344, 2.152],
             4: [0.1284, 0.3881, 0.6568, 0.9424, 1.256, 1.618, 2.069, 2.733]}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cifar(depth: int):
    torch.manual_seed(0)
    model = ResNetCifar(depth)
    card = resnet_card(depth)
    task = ClassificationTask(Checkpoint(card, model.state_dict()), CIFAR, eval_limit=64)
    return model, card, task


# --- k-means bit search ------------------------------------------------------------------


def test_kmeans_on_four_values_is_exact_and_gets_two_bits():
    gen = torch.Generator().manual_seed(1)
    values = torch.tensor([-0.3, -0.05, 0.1, 0.42])
    # unequal frequencies and more weights than the fitting subsample (20,000)
    w = values[torch.multinomial(torch.tensor([0.7, 0.1, 0.1, 0.1]), 30_000, True, generator=gen)]
    assert kmeans_distortion(w, 2) == pytest.approx(0.0, abs=1e-9)
    assert kmeans_distortion(w, 1) > 1.0  # two centres cannot fit four values

    model = nn.Sequential(nn.Conv2d(8, 16, 3), nn.Conv2d(16, 16, 3), nn.Flatten(), nn.Linear(16, 4))
    with torch.no_grad():
        model[0].weight.copy_(values[torch.randint(4, model[0].weight.shape, generator=gen)])
        model[1].weight.normal_(0.0, 0.05, generator=gen)
    bits = hybrid_bits(model, threshold=0.1)
    assert bits["0"] == 2
    assert bits["1"] == 8  # 2304 Gaussian weights need all 8 bits at threshold 0.1
    assert set(bits) == {"0", "1", "3"}
    search = hybrid_search(model, threshold=0.1)
    assert list(search["0"]["distortion"]) == ["2"]  # the search stops at the first n below the threshold
    assert list(search["1"]["distortion"]) == [str(n) for n in range(2, 9)]


def test_kmeans_on_gaussian_weights_matches_lloyd_max_and_decreases():
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(20_000, generator=gen, dtype=torch.float64) * 0.05
    d = {n: kmeans_distortion(w, n, seed=0) for n in range(2, 9)}
    for n, levels in LLOYD_MAX.items():
        # k-means fits this sample, so it does at least as well as the optimal codebook for the
        # distribution, and not much better on 20,000 samples
        codebook = torch.tensor([-v for v in levels] + levels, dtype=torch.float64) * 0.05
        optimal = float((w[:, None] - codebook[None, :]).pow(2).min(1).values.mean()) * 1e6
        assert 0.97 * optimal < d[n] <= 1.002 * optimal
    for n in range(2, 8):
        assert 2.5 < d[n] / d[n + 1] < 6.0  # about 6 dB (x4) per bit
    assert d[8] < 0.1 * d[5]


def test_kmeans_is_deterministic_under_the_seed():
    w = torch.randn(45_000, generator=torch.Generator().manual_seed(3)) * 0.02  # fitted on a subsample
    assert kmeans_distortion(w, 5, seed=7) == kmeans_distortion(w, 5, seed=7)
    model = ResNetCifar(8)
    a = hybrid_search(model, 0.1, seed=4)
    assert a == hybrid_search(model, 0.1, seed=4)


def test_threshold_and_max_bits():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Conv2d(8, 8, 3))
    assert set(hybrid_bits(model, threshold=1e-9).values()) == {8}
    assert set(hybrid_bits(model, threshold=1e-9, max_bits=5).values()) == {5}
    assert set(hybrid_bits(model, threshold=1e9).values()) == {2}
    with pytest.raises(RSLabError):
        hybrid_bits(model, threshold=0.1, max_bits=9)
    with pytest.raises(RSLabError):
        hybrid_bits(nn.ReLU(), threshold=0.1)


# --- self-teaching -----------------------------------------------------------------------


def _features(seed: int, batch: int = 6):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 8, 5, 5, generator=gen), torch.randn(batch, 16, 3, 4, generator=gen).relu(),
            torch.randn(batch, 4, 2, 3, 3, generator=gen)]  # a 5-D (Conv3d) map: 4 x 2 = 8 channels


def _attention(f: torch.Tensor) -> torch.Tensor:
    """Zagoruyko and Komodakis' attention map, written out independently."""
    f = f.reshape(f.shape[0], -1, f.shape[-2], f.shape[-1])
    a = (f * f).mean(1).reshape(f.shape[0], -1)
    return a / a.norm(dim=1, keepdim=True)


def test_spatial_attention_has_unit_norm_per_sample():
    for f in _features(0):
        v = spatial_attention(f)
        assert v.shape == (f.shape[0], f.shape[-2] * f.shape[-1])
        assert torch.allclose(v.norm(dim=1), torch.ones(f.shape[0]), atol=1e-6)
        assert torch.allclose(v, _attention(f), atol=1e-6)
    tokens = torch.randn(4, 10)  # a token model's (B, C) features: attention over the C features
    assert torch.allclose(spatial_attention(tokens), torch.nn.functional.normalize(tokens.pow(2), dim=1))
    with pytest.raises(RSLabError):
        spatial_attention(torch.randn(4, 10, 3))


def test_self_teaching_loss_is_zero_on_identical_features():
    torch.manual_seed(0)
    teaching = SelfTeaching([8, 16, 8], projection_dim=32, generator=torch.Generator().manual_seed(0)).train()
    feats = _features(1)
    loss, switches = teaching([f.clone() for f in feats], feats)
    assert float(loss.detach()) == 0.0
    assert len(switches) == 3 and all(m.shape == (6,) for m in switches)


def test_switch_is_hard_with_straight_through_gradient_to_the_projections():
    torch.manual_seed(0)
    teaching = SelfTeaching([8, 16, 8], projection_dim=32, generator=torch.Generator().manual_seed(0)).train()
    student = [f.requires_grad_() for f in _features(2)]
    teacher = _features(3)
    loss, switches = teaching(student, teacher)
    for m in switches:
        assert set(m.detach().unique().tolist()) <= {0.0, 1.0}
    expected = sum((m.detach() * (_attention(s.detach()) - _attention(t)).pow(2).mean(1)).mean()
                   for m, s, t in zip(switches, student, teacher))
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    assert float(loss.detach()) > 0
    loss.backward()
    for projection in list(teaching.query) + list(teaching.key):
        grad = projection[0].weight.grad
        assert grad is not None and float(grad.abs().sum()) > 0
    # the student gets the distillation gradient where its switch is on, none where it is off
    assert any(bool((m > 0.5).any()) for m in switches)
    for m, s in zip(switches, student):
        on = m.detach() > 0.5
        if s.grad is None:
            assert not on.any()
            continue
        assert torch.all(s.grad[~on] == 0)
        assert float(s.grad[on].abs().sum()) > 0 or not on.any()


def test_the_optimiser_trains_the_projections_too():
    student = ResNetCifar(8)
    teaching = SelfTeaching([16, 32], projection_dim=8)
    optimiser, schedule = make_optimiser(student, teaching, GhostParams(steps=10))
    trained = {id(p) for group in optimiser.param_groups for p in group["params"]}
    assert {id(p) for p in teaching.parameters()} <= trained
    assert {id(p) for p in student.parameters()} <= trained
    group = optimiser.param_groups[0]
    assert group["nesterov"] and group["momentum"] == 0.9 and group["weight_decay"] == 5e-4
    for _ in range(10):
        optimiser.step()
        schedule.step()
    assert optimiser.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine decay to 0


def test_switch_has_noise_in_training_and_none_at_eval():
    torch.manual_seed(0)
    teaching = SelfTeaching([8, 16, 8], projection_dim=32, generator=torch.Generator().manual_seed(0))
    student, teacher = _features(4, batch=64), _features(5, batch=64)
    teaching.train()
    for _ in range(3):  # settle the batch-norm running statistics a little
        teaching(student, teacher)
    noisy = [torch.cat(teaching(student, teacher)[1]) for _ in range(4)]
    assert any(not torch.equal(noisy[0], n) for n in noisy[1:])  # Gumbel noise changes the decisions
    teaching.eval()
    loss_a, m_a = teaching(student, teacher)
    loss_b, m_b = teaching(student, teacher)
    assert torch.equal(loss_a, loss_b)
    assert all(torch.equal(a, b) for a, b in zip(m_a, m_b))
    logits = teaching.switch_logits(student, teacher)
    assert all(torch.equal(m, (z > 0).float()) for m, z in zip(m_a, logits))


def test_distillation_points():
    names, channels, skipped = distillation_points(ResNetCifar(20), (torch.randn(1, 3, 32, 32),))
    assert names == [f"layer.{i}" for i in range(9)]
    assert channels == [16] * 3 + [32] * 3 + [64] * 3 and skipped == []

    class Named(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.b = nn.Conv2d(8, 4, 3, padding=1)
            self.fc = nn.Linear(4, 2)

        def distillation_layers(self):
            return ["b", "fc"]

        def forward(self, x):
            return self.fc(self.b(self.a(x)).mean(dim=(2, 3)))

    assert distillation_points(Named(), (torch.randn(1, 3, 8, 8),)) == (["b"], [4], ["fc"])
    with pytest.raises(RSLabError):
        distillation_points(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), (torch.randn(1, 4),))


# --- the job -----------------------------------------------------------------------------


def test_params_are_validated():
    for bad in (dict(threshold=0.0), dict(threshold=float("nan")), dict(distillation_weight=-1.0),
                dict(steps=-1), dict(batch_size=1), dict(lr=0.0), dict(projection_dim=0), dict(seed=-1),
                dict(max_bits=1), dict(max_bits=9), dict(eval_every=-2)):
        with pytest.raises(RSLabError):
            GhostParams(**bad)
    GhostParams(steps=0)
    from rslab.core.compression import CompressParams  # the panel's and Processing's parameters, checked first

    for bad in (dict(ghost_threshold=float("nan")), dict(distillation_weight=float("nan")),
                dict(ghost_threshold=0.0), dict(distillation_weight=-1.0)):
        with pytest.raises(RSLabError):  # NaN passed these checks (and failed later, after the data was read)
            CompressParams(method="ghost", **bad)


def test_compress_ghost_on_a_cifar_resnet(tmp_path):
    model, card, task = _cifar(20)
    float_model = copy.deepcopy(model).eval()
    teacher = copy.deepcopy(model).train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    events = []
    params = GhostParams(steps=5, batch_size=8, seed=1)
    student, details = compress_ghost(model, task, params, JobMonitor(), events.append, teacher=teacher)

    assert student is model and not student.training
    bits = bit_plan(student)
    assert all(b["weight"] == b["activation"] == details["bits"][n] <= 8 for n, b in bits.items())
    assert set(details["bits"]) == set(bits)
    example = task.example_inputs()
    assert count_bops(student, example).total_bops < count_bops(float_model, example).total_bops
    assert details["bops_after"]["gbops"] < details["bops_before"]["gbops"]
    # the teacher: weights and batch-norm statistics untouched, its mode given back
    assert teacher.training
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(p.requires_grad for p in teacher.parameters())
    # the student did train
    assert any(not torch.equal(p, q) for p, q in zip(student.parameters(), float_model.parameters()))

    json.dumps(details)
    assert details["distillation_layers"] == [f"layer.{i}" for i in range(9)]
    assert len(details["kd_history"]) == len(details["loss_history"]) == 5
    assert all(k > 0 for k in details["kd_history"])
    train_events = [e for e in events if "loss" in e]
    metric_events = [e for e in events if "metric" in e]
    assert [e["step"] for e in train_events] == [5]
    assert {"phase", "step", "loss", "kd", "teach_rate"} <= set(train_events[0]) and train_events[0]["phase"] == "ghost"
    assert 0.0 <= train_events[0]["teach_rate"] <= 1.0
    assert [e["step"] for e in metric_events] == [0, 5]
    assert metric_events[-1]["metric"] == pytest.approx(task.evaluate(student)["accuracy"])

    # round trip through a checkpoint
    plan, state = compressed_state(student)
    path = str(tmp_path / "ghost.pt")
    save_checkpoint(path, state, dataclasses.replace(card, bit_widths=plan))
    rebuilt = build_model(load_checkpoint(path))
    x = task.x_test[:16]
    with torch.no_grad():
        assert torch.equal(rebuilt(x), student.eval()(x))


def test_cancel_and_refusals():
    model, _, task = _cifar(8)
    events = []
    monitor = JobMonitor(cancelled=lambda: any("loss" in e for e in events))
    with pytest.raises(JobCancelled):  # cancelled inside the training loop, after the first report
        compress_ghost(model, task, GhostParams(steps=30, batch_size=4), monitor, events.append)
    assert [e["step"] for e in events if "loss" in e] == [10]

    quantised, _, task = _cifar(8)
    apply_bit_plan(quantised, {"conv1": {"weight": 4, "activation": 4}})
    with pytest.raises(RSLabError):
        compress_ghost(quantised, task, GhostParams(steps=1, batch_size=4), JobMonitor())


def test_compress_ghost_on_a_two_input_change_detector(tmp_path):
    for sub, suffix in (("A", "A"), ("B", "B"), ("label", "label")):
        (tmp_path / sub).mkdir()
        shutil.copy(SAMPLES / f"levir_test_7_{suffix}.png", tmp_path / sub / "levir_test_7.png")
    torch.manual_seed(0)
    model = ArcdNet(bands=3, base=16, channels=16)
    float_model = copy.deepcopy(model).eval()
    card = ModelCard(task="change_detection", architecture="arcdnet", arguments={"bands": 3, "base": 16, "channels": 16},
                     bands=["red", "green", "blue"], normalisation={"mean": IMAGENET_MEAN, "std": IMAGENET_STD})
    task = ChangeDetectionTask(Checkpoint(card, model.state_dict()), str(tmp_path), crop=64)
    student, details = compress_ghost(model, task, GhostParams(steps=2, batch_size=2), JobMonitor())

    assert len(details["distillation_layers"]) == 12
    assert "encoder.stages.3" in details["distillation_layers"] and "tdm.1" in details["distillation_layers"]
    assert max(details["bits"].values()) <= 8
    assert details["bops_after"]["gbops"] < details["bops_before"]["gbops"]
    assert np.isfinite(details["kd_history"]).all() and details["evaluations"][-1]["step"] == 2
    # the hybrid bits on the model's own Conv3d layers
    assert all(b["weight"] <= 8 for n, b in bit_plan(student).items() if n.startswith("tdm."))
    a, b = task.example_inputs()
    a, b = a[..., :64, :64], b[..., :64, :64]
    with torch.no_grad():
        logit, _, _ = student(a, b)
        reference, _, _ = float_model(a, b)
    assert logit.shape == reference.shape and torch.isfinite(logit).all()
