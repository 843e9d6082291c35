"""rslab:model_bops and rslab:compress_model through processing.run, and model_bops through qgis_process."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from qgis.core import QgsProcessingContext, QgsProcessingException

import processing
from rslab.core.checkpoint import ModelCard, build_model, load_checkpoint, save_checkpoint
from rslab.core.weights import default_checkpoint
from resnet_cards import untrained_resnet


@pytest.fixture()
def resnet_checkpoint(tmp_path):
    return untrained_resnet(tmp_path / "resnet20.pt")


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
    assert report["input"] == "256 pixels square, batch of one"  # the size counted ('default' said nothing)
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


def test_compress_model_refuses_full_precision_max_bits_before_any_work(tmp_path, samples, provider,
                                                                       resnet_checkpoint):
    """32 is no bit ceiling for either method; it is refused before the data are read (here they do not fit)."""
    output = tmp_path / "never.pt"
    for method, bits in ((1, "32"), (1, "8,32"), (0, "8,6,32"), (0, "32")):
        params = {"MODEL": resnet_checkpoint, "METHOD": method, "DATA": str(samples / "abu-beach-2.mat"),
                  "MAX_BITS": bits, "EPOCHS": 0.05, "OUTPUT_MODEL": str(output)}
        with pytest.raises(QgsProcessingException, match=r"2\.\.8 .*got \[") as raised:
            processing.run("rslab:compress_model", params)
        assert "x_train" not in str(raised.value), (method, bits)
        assert not output.exists()


def test_compress_model_refuses_to_write_over_its_source(tmp_path, samples, provider, resnet_checkpoint):
    """OUTPUT_MODEL naming MODEL, directly or through a link, would replace the float checkpoint: refused."""
    original = open(resnet_checkpoint, "rb").read()
    alias, folder = tmp_path / "alias.pt", tmp_path / "linked"
    alias.symlink_to(resnet_checkpoint)
    folder.symlink_to(os.path.dirname(resnet_checkpoint))
    for output in (resnet_checkpoint, str(folder / os.path.basename(resnet_checkpoint)), str(alias)):
        params = {"MODEL": resnet_checkpoint, "METHOD": 1, "DATA": str(samples / "cifar10_sample.npz"),
                  "EPOCHS": 0.02, "OUTPUT_MODEL": output}
        with pytest.raises(QgsProcessingException, match="would replace the checkpoint being compressed"):
            processing.run("rslab:compress_model", params)
        assert open(resnet_checkpoint, "rb").read() == original
        assert load_checkpoint(resnet_checkpoint).card.bit_widths is None


def test_no_output_replaces_the_data_or_the_checkpoint_read(tmp_path, samples, provider, resnet_checkpoint):
    """model_bops wrote its report over the checkpoint it read, and compress_model its outputs over the data."""
    original = open(resnet_checkpoint, "rb").read()
    with pytest.raises(QgsProcessingException, match="the report would replace the checkpoint"):
        processing.run("rslab:model_bops", {"MODEL": resnet_checkpoint, "OUTPUT_REPORT": resnet_checkpoint})
    assert open(resnet_checkpoint, "rb").read() == original
    data = str(shutil.copy(samples / "cifar10_sample.npz", tmp_path / "data.npz"))
    kept = open(data, "rb").read()
    for output in ({"OUTPUT_MODEL": str(tmp_path / "c.pt"), "OUTPUT_REPORT": data}, {"OUTPUT_MODEL": data}):
        with pytest.raises(QgsProcessingException, match="would replace the data"):
            processing.run("rslab:compress_model", {"MODEL": resnet_checkpoint, "METHOD": 1, "DATA": data,
                                                    "EPOCHS": 0.02, **output})
        assert open(data, "rb").read() == kept and not (tmp_path / "c.pt").exists()


def test_a_change_detector_compresses_on_a_data_folder(tmp_path, samples, provider):
    """QGIS 3.22's file parameter refuses folders: the folder of change pairs the README promised was refused
    as DATA ('Incorrect parameter value'); it goes in DATA_FOLDER, and the checkpoint's name need not end .pt."""
    from rslab.core.change_data import IMAGENET_MEAN, IMAGENET_STD
    from rslab.models.arcdnet import ArcdNet

    folder = tmp_path / "pairs"
    for sub in ("A", "B", "label"):
        (folder / sub).mkdir(parents=True)
        for name in ("p1", "p2"):
            shutil.copy(samples / f"levir_test_7_{'label' if sub == 'label' else sub}.png", folder / sub / f"{name}.png")
    card = ModelCard(task="change_detection", architecture="arcdnet", arguments={"bands": 3, "base": 8, "channels": 8},
                     bands=["red", "green", "blue"], normalisation={"mean": IMAGENET_MEAN, "std": IMAGENET_STD})
    model = str(tmp_path / "small.pth")
    save_checkpoint(model, ArcdNet(bands=3, base=8, channels=8).state_dict(), card)
    params = {"MODEL": model, "METHOD": 1, "EPOCHS": 0.01, "MAX_BITS": "8", "OUTPUT_MODEL": str(tmp_path / "c.pt")}
    result = processing.run("rslab:compress_model", dict(params, DATA_FOLDER=str(folder)))
    compressed = load_checkpoint(result["OUTPUT_MODEL"]).card
    assert compressed.bit_widths and result["BOPS_RATIO"] > 1
    record = compressed.training["compression"]  # the dock reads the parameter count before from here
    assert record["params_before"] == record["params_after"] > 0  # GHOST prunes nothing
    for data, message in (({}, "no training / evaluation data"),
                          ({"DATA": str(samples / "cifar10_sample.npz"), "DATA_FOLDER": str(folder)}, "not both"),
                          ({"DATA_FOLDER": str(folder), "OUTPUT_REPORT": str(folder / "A" / "p1.png")},
                           "would replace p1.png in the data folder"),
                          ({"DATA_FOLDER": str(folder / "A")},  # the panel's message, from the one check
                           "A has no A/, B/, label/ sub-folder; a change-detection checkpoint needs a folder with")):
        with pytest.raises(QgsProcessingException, match=message):
            processing.run("rslab:compress_model", dict(params, OUTPUT_MODEL=str(tmp_path / "d.pt"), **data))
        assert not (tmp_path / "d.pt").exists()
    assert (folder / "A" / "p1.png").read_bytes() == (samples / "levir_test_7_A.png").read_bytes()


def test_model_bops_input_size_has_a_ceiling(tmp_path, provider, resnet_checkpoint):
    """A huge INPUT_SIZE is refused by Processing and by the core, from one constant, before torch allocates."""
    from qgis.core import QgsApplication

    from rslab.core.compression import model_bops_report
    from rslab.core.errors import RSLabError

    out = tmp_path / "bops.json"
    with pytest.raises(QgsProcessingException, match="INPUT_SIZE"):
        processing.run("rslab:model_bops", {"MODEL": resnet_checkpoint, "INPUT_SIZE": 10 ** 6,
                                            "OUTPUT_REPORT": str(out)})
    assert not out.exists()
    algorithm = QgsApplication.processingRegistry().algorithmById("rslab:model_bops")
    context = QgsProcessingContext()
    for size, refused in ((4, "at least 8 pixels, got 4"), (10 ** 6, None), (0, None), (8, None)):
        ok, message = algorithm.checkParameterValues({"MODEL": resnet_checkpoint, "INPUT_SIZE": size,
                                                      "OUTPUT_REPORT": str(out)}, context)
        # 1-7 passed the up-front check, loaded the checkpoint and failed in the run
        assert ok == (refused is None and size <= 4096) and (refused is None or refused in message), (size, message)
    with pytest.raises(RSLabError, match="input size must be at most"):
        model_bops_report(resnet_checkpoint, input_size=10 ** 6)
    from rslab.core.compression_tasks import MAX_INPUT_SIZE

    assert algorithm.parameterDefinition("INPUT_SIZE").maximum() == MAX_INPUT_SIZE
    from rslab.core.pic_pq import MAX_PENALTY, MAX_REDUCTION
    compress = QgsApplication.processingRegistry().algorithmById("rslab:compress_model")
    assert compress.parameterDefinition("PENALTY").maximum() == MAX_PENALTY
    assert compress.parameterDefinition("FLOPS_REDUCTION").maximum() == MAX_REDUCTION


def test_model_bops_from_the_command_line(tmp_path, qgis_process, resnet_checkpoint):
    out = tmp_path / "bops.json"
    done = qgis_process("run", "rslab:model_bops", "--", f"MODEL={resnet_checkpoint}", "MODE=1",
                        f"OUTPUT_REPORT={out}")
    assert done.returncode == 0, done.stderr + done.stdout
    report = json.loads(out.read_text())
    assert report["mode"] == "pic_pq" and report["total_macs"] == 40_550_400 + 640  # ResNet-20 convs + the classifier


def test_numbers_are_declared_outputs_a_model_can_chain(provider):
    """TOTAL_BOPS, SIZE_MB and BOPS_RATIO were returned but not declared: the modeler could not offer them."""
    from qgis.core import QgsApplication

    registry = QgsApplication.processingRegistry()
    declared = {alg: {o.name() for o in registry.algorithmById(alg).outputDefinitions()}
                for alg in ("rslab:model_bops", "rslab:compress_model")}
    assert {"TOTAL_BOPS", "SIZE_MB"} <= declared["rslab:model_bops"]
    assert "BOPS_RATIO" in declared["rslab:compress_model"]


def test_outputs_that_cannot_be_written_are_refused_before_any_work(tmp_path, samples, provider, resnet_checkpoint,
                                                                    monkeypatch):
    """A report (or checkpoint) path through a file, or in a folder not writable, failed only after the whole
    compression (8-14 min at the README's settings), and a failed report left the checkpoint behind. The data
    here do not fit the model: an error about them would mean the work had started."""
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder")
    output = tmp_path / "c.pt"
    params = {"MODEL": resnet_checkpoint, "METHOD": 1, "DATA": str(samples / "abu-beach-2.mat"), "EPOCHS": 0.02,
              "OUTPUT_MODEL": str(output)}
    for change, message in (({"OUTPUT_REPORT": str(blocker / "sub" / "r.json")}, f"{blocker} is a file, not a folder"),
                            ({"OUTPUT_MODEL": str(blocker / "c.pt")}, f"{blocker} is a file, not a folder")):
        with pytest.raises(QgsProcessingException, match=message):
            processing.run("rslab:compress_model", dict(params, **change))
    real_access = os.access
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if str(path) == str(locked)
                        else real_access(path, mode, **kw))
    with pytest.raises(QgsProcessingException, match=f"the folder {locked} is not writable"):
        processing.run("rslab:compress_model", dict(params, OUTPUT_REPORT=str(locked / "r.json")))
    assert sorted(os.listdir(tmp_path)) == sorted(["locked", "notes.txt", os.path.basename(resnet_checkpoint)])


def test_checkpoint_and_report_are_written_together(tmp_path, samples, resnet_checkpoint, monkeypatch):
    """A report that fails as it is written takes the checkpoint with it (it was committed first and stayed), and
    the error says what failed and the room left (it was a bare OSError with its traceback)."""
    from rslab.core import outputs
    from rslab.core.compression import CompressParams, compress_checkpoint
    from rslab.core.errors import RSLabError

    def no_room_for_json(path, *args, **kwargs):  # the checkpoint, written first, has room
        if str(path).endswith(".json"):
            raise OSError(28, "No space left on device")
        return open(path, *args, **kwargs)

    monkeypatch.setattr(outputs, "open", no_room_for_json, raising=False)  # outputs' own name only
    with pytest.raises(RSLabError, match=r"^could not write the report \(\[Errno 28\] No space left on device\); "
                                         r".* free in .*: is the disk full\?$"):
        compress_checkpoint(resnet_checkpoint, str(samples / "cifar10_sample.npz"), str(tmp_path / "c.pt"),
                            CompressParams(method="ghost", epochs=0.02), report_path=str(tmp_path / "r.json"))
    assert os.listdir(tmp_path) == [os.path.basename(resnet_checkpoint)]


def test_model_bops_of_a_bsdm_denoiser_says_an_input_size_does_not_apply(tmp_path, provider):
    """A BSDM denoiser runs pixel by pixel: INPUT_SIZE 256 counted one pixel token (0.064 GBOPs, 65,536 times
    less than a 256 x 256 image) and only the report's `input` field said so."""
    from qgis.core import QgsProcessingFeedback

    from rslab.models.bsdm import BSDMDenoiser

    class Notes(QgsProcessingFeedback):
        def __init__(self):
            super().__init__()
            self.warnings = []

        def pushWarning(self, text):  # noqa: N802 (QGIS API)
            self.warnings.append(text)

    card = ModelCard(task="anomaly_detection", architecture="bsdm", arguments={"bands": 50},
                     bands=[f"band {i}" for i in range(1, 51)], normalisation={"min": [0.0] * 50, "max": [1.0] * 50})
    path = str(tmp_path / "bsdm.pt")
    save_checkpoint(path, BSDMDenoiser(50).state_dict(), card)
    for size, warned in ((0, False), (256, True)):
        feedback = Notes()
        processing.run("rslab:model_bops", {"MODEL": path, "INPUT_SIZE": size, "OUTPUT_REPORT": str(tmp_path / "r.json")},
                       feedback=feedback)
        notes = [w for w in feedback.warnings if "BSDM denoiser runs pixel by pixel" in w]
        assert len(notes) == int(warned), (size, feedback.warnings)
    assert "a 256 x 256 image takes 65,536 times as many" in notes[0]
