"""rslab:model_bops and rslab:compress_model through processing.run, and model_bops through qgis_process."""
from __future__ import annotations

import json

import pytest
import torch
from qgis.core import QgsProcessingException

import processing
from rslab.core.checkpoint import ModelCard, build_model, load_checkpoint, save_checkpoint
from rslab.core.weights import default_checkpoint
from rslab.models.resnet_cifar import ResNetCifar


@pytest.fixture()
def resnet_checkpoint(tmp_path):
    torch.manual_seed(0)
    card = ModelCard(task="classification", architecture="resnet_cifar",
                     arguments={"depth": 20, "num_classes": 10, "bands": 3}, bands=["red", "green", "blue"],
                     normalisation={"mean": [125.3, 123.0, 113.9], "std": [63.0, 62.1, 66.7]},
                     class_names=[f"class {i}" for i in range(10)])
    path = tmp_path / "resnet20.pt"
    save_checkpoint(str(path), ResNetCifar(20).state_dict(), card)
    return str(path)


def test_model_bops_of_the_default_change_detector(tmp_path, provider):
    out = tmp_path / "bops.json"
    result = processing.run("rslab:model_bops", {"MODEL": default_checkpoint("change_detection"),
                                                 "OUTPUT_REPORT": str(out)})
    report = json.loads(out.read_text())
    assert result["OUTPUT_REPORT"] == str(out) and result["TOTAL_BOPS"] == report["total_bops"]
    assert report["total_bops"] == 1024 * report["total_macs"]  # a float model counts 32 x 32 everywhere
    assert report["total_macs"] == sum(layer["macs"] for layer in report["layers"])
    assert {"name", "macs", "weight_bits", "activation_bits", "bops"} <= set(report["layers"][0])
    assert report["size_mb"] == pytest.approx(report["params"] * 4 / 1e6, rel=0.01)
    bigger = json.loads(open(processing.run("rslab:model_bops", {
        "MODEL": default_checkpoint("change_detection"), "INPUT_SIZE": 512,
        "OUTPUT_REPORT": str(tmp_path / "b512.json")})["OUTPUT_REPORT"]).read())
    assert bigger["total_macs"] == pytest.approx(4 * report["total_macs"], rel=0.01)


def test_compress_model_processing_run_end_to_end(tmp_path, samples, provider, resnet_checkpoint):
    output, report_path = tmp_path / "small.pt", tmp_path / "report.json"
    result = processing.run("rslab:compress_model", {
        "MODEL": resnet_checkpoint, "METHOD": 0, "DATA": str(samples / "cifar10_sample.npz"),
        "FLOPS_REDUCTION": 0.4, "MAX_BITS": "8,6,4", "PENALTY": 1 / 6, "EPOCHS": 0.1,
        "OUTPUT_MODEL": str(output), "OUTPUT_REPORT": str(report_path),
    })
    assert result["OUTPUT_MODEL"] == str(output) and result["BOPS_RATIO"] > 10
    report = json.loads(report_path.read_text())
    assert report["method"] == "pic_pq" and report["metric"] == "accuracy"
    assert report["after"]["total_macs"] <= 0.6 * report["before"]["total_macs"] + 2000
    card = load_checkpoint(str(output)).card
    assert card.bit_widths["conv1"] == {"weight": 32, "activation": 32}  # stage 0 stays full precision
    assert {b["weight"] for name, b in card.bit_widths.items() if name.startswith("layer.")} <= set(range(2, 9))
    assert card.training["compression"]["method"] == "pic_pq"
    model = build_model(load_checkpoint(str(output)))
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    bops = json.loads(open(processing.run("rslab:model_bops", {"MODEL": str(output),
                                                               "OUTPUT_REPORT": str(tmp_path / "b.json")})
                           ["OUTPUT_REPORT"]).read())
    assert bops["compressed"] and bops["total_bops"] == report["after"]["total_bops"]


def test_compress_model_bad_input_leaves_nothing(tmp_path, samples, provider, resnet_checkpoint):
    output = tmp_path / "never.pt"
    bad = tmp_path / "bad.pt"
    bad.write_bytes((samples / "levir_test_7_A.png").read_bytes())
    cases = [
        ({"DATA": str(samples / "abu-beach-2.mat")}, "x_train"),  # a classification model given a hyperspectral scene
        ({"MAX_BITS": "8,six"}, "MAX_BITS"),
        ({"MAX_BITS": "12"}, "2..8"),
        ({"MODEL": str(bad)}, "not an RS Lab checkpoint"),
    ]
    for change, message in cases:
        params = {"MODEL": resnet_checkpoint, "METHOD": 1, "DATA": str(samples / "cifar10_sample.npz"),
                  "EPOCHS": 0.05, "OUTPUT_MODEL": str(output), **change}
        with pytest.raises(QgsProcessingException, match=message):
            processing.run("rslab:compress_model", params)
        assert not output.exists()


def test_model_bops_from_the_command_line(tmp_path, qgis_process, resnet_checkpoint):
    out = tmp_path / "bops.json"
    done = qgis_process("run", "rslab:model_bops", "--", f"MODEL={resnet_checkpoint}", "MODE=1",
                        f"OUTPUT_REPORT={out}")
    assert done.returncode == 0, done.stderr + done.stdout
    report = json.loads(out.read_text())
    assert report["mode"] == "pic_pq" and report["total_macs"] == 40_550_400 + 640  # ResNet-20 convs + the classifier
