"""rslab:detect_anomalies through processing.run, runAndLoadResults, a background task (as the Processing
dialog runs it) and qgis_process, on a real ABU scene."""
from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest
import rasterio
from qgis.core import (
    QgsApplication,
    QgsPalettedRasterRenderer,
    QgsProcessingAlgRunnerTask,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProject,
    QgsSingleBandPseudoColorRenderer,
)
from qgis.PyQt import sip
from qgis.PyQt.QtCore import Qt, QTimer

import processing
from osgeo import ogr
from priorities import lowered_threads, priority, qgis_pool_priorities
from rslab.core.device import DEFAULT_JOB_NICENESS
from rslab.core.import_cube import import_cube

SCENE = "abu-urban-1"  # 100 x 100 x 204, 67 anomaly pixels
REPORT_KEYS = {"outputs", "method", "params", "metrics", "threshold", "mask_pixels", "score_range", "width", "height",
               "bands", "timings", "device"}


@pytest.fixture(scope="module")
def scene(shared_data, tmp_path_factory):
    """The ABU urban-1 cube and its ground truth as GeoTIFFs (imported once for the module)."""
    folder = tmp_path_factory.mktemp("abu")
    cube, gt = folder / "cube.tif", folder / "gt.tif"
    import_cube(str(shared_data / "anomaly" / "abu" / f"{SCENE}.mat"), str(cube), str(gt))
    return str(cube), str(gt)


def batch_dialog(algorithm_id, output, rows):
    """A Processing batch dialog of `algorithm_id`, shown, with one row per (parameter values, path of `output`)."""
    from processing.gui.BatchAlgorithmDialog import BatchAlgorithmDialog
    from processing.tools import dataobjects

    dialog = BatchAlgorithmDialog(QgsApplication.processingRegistry().createAlgorithmById(algorithm_id))
    dialog.show()
    panel = dialog.mainWidget()
    panel.clear()
    panel.addRow(len(rows))
    context = dataobjects.createContext()
    for row, (values, path) in enumerate(rows):
        for name, value in values.items():
            panel.wrappers[row][panel.parameter_to_column[name]].setParameterValue(value, context)
        panel.tblParameters.cellWidget(row + 1, panel.parameter_to_column[output]).setValue(str(path))
    return dialog


def batch_tasks():
    """The descriptions of the batch dialogs' progress tasks in QGIS's task manager."""
    return [task.description() for task in QgsApplication.taskManager().tasks()
            if "Batch Processing" in task.description()]


class Recorder(QgsProcessingFeedback):
    """What an algorithm tells its feedback: progress texts and the lines it logs with pushInfo."""

    def __init__(self):
        super().__init__()
        self.texts = []
        self.lines = []

    def setProgressText(self, text):  # noqa: N802
        self.texts.append(text)

    def pushInfo(self, text):  # noqa: N802
        self.lines.append(text)


def read(path):
    with rasterio.open(path) as ds:
        return ds.read(1), ds.profile


def test_rx_with_reference_and_false_alarm_rate(tmp_path, scene, provider):
    cube, gt = scene
    out = {"OUTPUT_SCORES": str(tmp_path / "scores.tif"), "OUTPUT_MASK": str(tmp_path / "mask.tif"),
           "OUTPUT_REPORT": str(tmp_path / "report.json")}
    log = Recorder()
    result = processing.run("rslab:detect_anomalies", {"INPUT": cube, "METHOD": 1, "REFERENCE": gt,
                                                       "FALSE_ALARM_RATE": 0.01, **out}, feedback=log)
    assert result == out

    scores, profile = read(out["OUTPUT_SCORES"])
    assert profile["dtype"] == "float32" and scores.shape == (100, 100) and np.isfinite(scores).all()
    mask, mask_profile = read(out["OUTPUT_MASK"])
    assert mask_profile["dtype"] == "uint8" and mask_profile["nodata"] == 255
    assert set(np.unique(mask)) == {0, 1} and abs(mask.mean() - 0.01) < 0.005

    report = json.loads((tmp_path / "report.json").read_text())
    assert REPORT_KEYS <= set(report)
    assert report["method"] == "rx" and report["params"] == {"method": "rx", "false_alarm_rate": 0.01}  # no
    # BSDM iterations or windows, as if RX had used them
    assert np.array_equal(mask == 1, scores > report["threshold"]) and report["mask_pixels"] == mask.sum()
    assert report["valid_pixels"] == 10_000  # the rate's base, in the log as rslab:threshold_anomalies words it
    assert f"threshold at a false-alarm rate of 0.01: {report['threshold']:.6g}; pixels above it: " \
           f"{report['mask_pixels']:,} of 10,000 scored" in log.lines
    metrics = report["metrics"]
    assert {"auc_df", "auc_ftau", "auc_bs", "anomaly_pixels"} <= set(metrics)
    assert metrics["auc_df"] > 0.95 and metrics["anomaly_pixels"] == 67  # RX finds urban-1's targets
    assert metrics["auc_bs"] == pytest.approx(metrics["auc_df"] - metrics["auc_ftau"])
    assert report["score_range"] == pytest.approx([float(scores.min()), float(scores.max())], rel=1e-6)
    assert report["timings"]["detect"] > 0
    peaks = report["peaks"]  # the strongest anomalies, strongest first (tests/test_anomaly_peaks.py: which)
    assert len(peaks) == 20 and [p["score"] for p in peaks] == sorted((p["score"] for p in peaks), reverse=True)
    assert (peaks[0]["row"], peaks[0]["col"]) == np.unravel_index(np.argmax(scores), scores.shape)
    assert all(mask[p["row"], p["col"]] == 1 for p in peaks[:10])  # the mask's 100 pixels hold the ten strongest
    named = "; ".join(f"{p['row']}, {p['col']}: {p['score']:.4g}" for p in peaks[:5])
    assert f"strongest anomalies (row, column: score): {named}; the report lists 20" in log.lines
    # what the mask finds of the reference, in the report and the log
    truth = read(gt)[0] != 0
    found = report["mask_detection"]
    assert (found["anomalies_flagged"], found["anomaly_pixels"]) == (int((mask == 1)[truth].sum()), 67)
    assert (found["false_alarms"], found["background_pixels"]) == (int((mask == 1)[~truth].sum()), 10_000 - 67)
    assert any(line.startswith(f"the mask flags {found['anomalies_flagged']} of the reference's 67 anomaly pixels")
               for line in log.lines)


def test_a_mask_at_another_rate_from_the_scores_alone(tmp_path, scene, provider):
    """rslab:threshold_anomalies cuts the scores a detection wrote: at the detection's rate, its very mask."""
    cube, gt = scene
    detected = processing.run("rslab:detect_anomalies", {
        "INPUT": cube, "METHOD": 1, "FALSE_ALARM_RATE": 0.01, "REFERENCE": gt,
        "OUTPUT_SCORES": str(tmp_path / "scores.tif"), "OUTPUT_MASK": str(tmp_path / "mask.tif"),
        "OUTPUT_REPORT": str(tmp_path / "report.json")})
    again = processing.run("rslab:threshold_anomalies", {
        "INPUT": detected["OUTPUT_SCORES"], "FALSE_ALARM_RATE": 0.01, "OUTPUT_MASK": str(tmp_path / "again.tif")})
    assert again == {"OUTPUT_MASK": str(tmp_path / "again.tif")}
    assert np.array_equal(read(tmp_path / "again.tif")[0], read(tmp_path / "mask.tif")[0])
    log = Recorder()
    out = {"OUTPUT_MASK": str(tmp_path / "m005.tif"), "OUTPUT_REPORT": str(tmp_path / "m005.json")}
    result = processing.run("rslab:threshold_anomalies", {"INPUT": detected["OUTPUT_SCORES"], "FALSE_ALARM_RATE": 0.005,
                                                          "REFERENCE": gt, **out}, feedback=log)
    assert result == out
    scores, mask = read(tmp_path / "scores.tif")[0], read(tmp_path / "m005.tif")[0]
    report = json.loads((tmp_path / "m005.json").read_text())
    assert report["mask_pixels"] == (mask == 1).sum() == 50 and np.array_equal(mask == 1, scores > report["threshold"])
    assert log.lines[0] == f"threshold at a false-alarm rate of 0.005: {report['threshold']:.6g}; pixels above it: " \
                           "50 of 10,000 scored"
    found = report["mask_detection"]
    assert found["anomalies_flagged"] + found["false_alarms"] == 50 and found["anomaly_pixels"] == 67
    assert log.lines[1].startswith(f"the mask flags {found['anomalies_flagged']} of the reference's 67")
    # the image instead of its scores, and rates out of range, are refused before any work
    with pytest.raises(QgsProcessingException, match="204 bands; give the one-band scores"):
        processing.run("rslab:threshold_anomalies", {"INPUT": cube, "FALSE_ALARM_RATE": 0.01,
                                                     "OUTPUT_MASK": str(tmp_path / "bad.tif")})
    with pytest.raises(QgsProcessingException, match="mask.tif is an anomaly mask, not scores; give the scores"):
        processing.run("rslab:threshold_anomalies", {"INPUT": str(tmp_path / "mask.tif"), "FALSE_ALARM_RATE": 0.01,
                                                     "OUTPUT_MASK": str(tmp_path / "bad.tif")})
    for rate in (0, 1):
        with pytest.raises(QgsProcessingException, match="above 0 and below 1"):
            processing.run("rslab:threshold_anomalies", {"INPUT": detected["OUTPUT_SCORES"], "FALSE_ALARM_RATE": rate,
                                                         "OUTPUT_MASK": str(tmp_path / "bad.tif")})
    assert not (tmp_path / "bad.tif").exists()


def test_a_mask_from_scores_is_loaded_styled(tmp_path, scene, provider, qgis_app):
    cube, _ = scene
    processing.run("rslab:detect_anomalies", {"INPUT": cube, "METHOD": 1, "OUTPUT_SCORES": str(tmp_path / "s.tif")})
    project = QgsProject.instance()
    project.clear()
    try:
        result = processing.runAndLoadResults("rslab:threshold_anomalies", {
            "INPUT": str(tmp_path / "s.tif"), "FALSE_ALARM_RATE": 0.02, "OUTPUT_MASK": str(tmp_path / "m.tif")})
        (mask,) = [layer for layer in project.mapLayers().values()
                   if layer.source() == result["OUTPUT_MASK"]]
        assert isinstance(mask.renderer(), QgsPalettedRasterRenderer)
        assert {c.value: c.color.alpha() for c in mask.renderer().classes()} == {0: 0, 1: 255, 255: 0}
    finally:
        project.clear()


def test_bsdm_rx_with_few_iterations_and_no_mask(tmp_path, scene, provider):
    cube, gt = scene
    result = processing.run("rslab:detect_anomalies", {
        "INPUT": cube, "METHOD": 0, "ITERATIONS": 10, "SEED": 2, "REFERENCE": gt,
        "OUTPUT_SCORES": str(tmp_path / "scores.tif"), "OUTPUT_REPORT": str(tmp_path / "report.json")})
    assert set(result) == {"OUTPUT_SCORES", "OUTPUT_REPORT"}  # no rate, no mask
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["method"] == "bsdm_rx" and report["params"]["seed"] == 2 and report["params"]["iterations"] == 10
    assert report["training_loss"]["iterations"] == 10
    assert any(note.startswith("BSDM trained in ") for note in report["notes"])
    assert {"bsdm_train", "bsdm_suppress", "detect", "evaluate"} <= set(report["timings"])
    assert report["threshold"] is None and 0.5 < report["metrics"]["auc_df"] <= 1.0
    assert np.isfinite(read(result["OUTPUT_SCORES"])[0]).all()


def test_local_rx_windows_and_a_rate_without_a_mask_destination(tmp_path, scene, provider):
    cube, _ = scene
    result = processing.run("rslab:detect_anomalies", {
        "INPUT": cube, "METHOD": 2, "INNER_WINDOW": 3, "OUTER_WINDOW": 7, "FALSE_ALARM_RATE": 0.05,
        "OUTPUT_SCORES": str(tmp_path / "scores.tif"), "OUTPUT_REPORT": str(tmp_path / "report.json")})
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["method"] == "lrx" and (report["params"]["inner_window"], report["params"]["outer_window"]) == (3, 7)
    assert "iterations" not in report["params"] and "seed" not in report["params"]
    assert report["metrics"] == {}  # no reference
    mask = result["OUTPUT_MASK"]  # the rate alone asks for a mask: written to a temporary file
    assert os.path.isfile(mask) and not mask.startswith(str(tmp_path))
    assert abs(read(mask)[0].mean() - 0.05) < 0.01


@pytest.mark.parametrize("extra, message", [
    ({"OUTER_WINDOW": 8, "METHOD": 2}, "the outer window must be an odd number"),
    ({"OUTPUT_MASK": "mask.tif"}, "a mask output needs a false-alarm rate"),
    ({"FALSE_ALARM_RATE": 1.0}, "false-alarm rate must be above 0 and below 1, got 1.0"),
    ({"FALSE_ALARM_RATE": 0.0}, "false-alarm rate must be above 0 and below 1, got 0.0"),
    ({"OUTER_WINDOW": 257, "METHOD": 2}, "OUTER_WINDOW"),
    ({"OUTPUT_SCORES": "scores.img"}, r"the scores raster \(scores.img\) is written as a GeoTIFF: give it a .tif name"),
    ({"OUTPUT_MASK": "scores.tif", "FALSE_ALARM_RATE": 0.01}, "the scores raster and the mask raster are one file"),
    ({"OUTPUT_PEAKS": "peaks.shp"}, r"the strongest anomalies \(peaks.shp\) are written as a GeoPackage or GeoJSON"),
])
def test_bad_parameters_are_refused_with_no_outputs(tmp_path, scene, provider, extra, message):
    cube, _ = scene
    params = {"INPUT": cube, "METHOD": 1, "OUTPUT_SCORES": str(tmp_path / "scores.tif"),
              "OUTPUT_REPORT": str(tmp_path / "report.json"), **extra}
    for name in ("OUTPUT_MASK", "OUTPUT_SCORES", "OUTPUT_PEAKS"):
        params[name] = str(tmp_path / params[name]) if name in params else None
    with pytest.raises(QgsProcessingException, match=message):
        processing.run("rslab:detect_anomalies", params)
    assert os.listdir(tmp_path) == []


def test_single_band_raster_is_refused(tmp_path, scene, provider):
    _, gt = scene
    with pytest.raises(QgsProcessingException, match="gt.tif has 1 band; anomaly detection needs a multiband image"):
        processing.run("rslab:detect_anomalies", {"INPUT": gt, "METHOD": 1,
                                                  "OUTPUT_SCORES": str(tmp_path / "scores.tif"),
                                                  "OUTPUT_REPORT": str(tmp_path / "report.json")})
    assert os.listdir(tmp_path) == []


def test_loaded_outputs_are_styled_and_the_ramp_fits_the_scores(tmp_path, scene, provider, qgis_app):
    """runAndLoadResults, as the Processing dialog does: the scores ramp spans this layer's 2-99 % cut, not 0..1."""
    cube, gt = scene
    project = QgsProject.instance()
    project.clear()
    try:
        result = processing.runAndLoadResults("rslab:detect_anomalies", {
            "INPUT": cube, "METHOD": 1, "FALSE_ALARM_RATE": 0.01, "OUTPUT_SCORES": str(tmp_path / "scores.tif"),
            "OUTPUT_MASK": str(tmp_path / "mask.tif"), "OUTPUT_REPORT": str(tmp_path / "report.json"),
            "OUTPUT_PEAKS": str(tmp_path / "peaks.gpkg")})
        loaded = {layer.source().split("|")[0]: layer for layer in project.mapLayers().values()}
        scores, mask = loaded[result["OUTPUT_SCORES"]], loaded[result["OUTPUT_MASK"]]
        peaks = loaded[result["OUTPUT_PEAKS"]]  # points ringed and labelled by rank (anomaly_peaks.qml)
        assert peaks.featureCount() == 20 and peaks.labelsEnabled()
        assert peaks.labeling().settings().fieldName == "rank"
        assert [layer.strokeColor().name() for layer in peaks.renderer().symbol().symbolLayers()] == ["#000000",
                                                                                                       "#00e5ff"]
        renderer = scores.renderer()
        assert isinstance(renderer, QgsSingleBandPseudoColorRenderer)
        values, _ = read(str(tmp_path / "scores.tif"))
        low, high = np.percentile(values, [2, 99])
        assert renderer.classificationMin() == pytest.approx(low, rel=0.005)
        assert renderer.classificationMax() == pytest.approx(high, rel=0.005)
        items = renderer.shader().rasterShaderFunction().colorRampItemList()
        assert items[0].value == pytest.approx(renderer.classificationMin())
        assert items[-1].value == pytest.approx(renderer.classificationMax())
        assert isinstance(mask.renderer(), QgsPalettedRasterRenderer)
        assert {c.value: c.color.alpha() for c in mask.renderer().classes()} == {0: 0, 1: 255, 255: 0}
    finally:
        project.clear()


def test_temporary_outputs_loaded_as_the_dialog_loads_them_are_all_generated(scene, provider, qgis_app):
    """The dialog (and runAndLoadResults) checks the parameters, runs and loads in one context: the check named a
    temporary mask of its own and had it loaded, so a good run ended 'The following layers were not correctly
    generated' (and the dialog stayed open)."""
    from qgis.core import QgsProcessingOutputLayerDefinition

    cube, _ = scene
    project = QgsProject.instance()
    context = QgsProcessingContext()
    context.setProject(project)
    parameters = {"INPUT": cube, "METHOD": 1, "FALSE_ALARM_RATE": 0.01}
    for name in ("OUTPUT_SCORES", "OUTPUT_MASK", "OUTPUT_PEAKS"):
        parameters[name] = QgsProcessingOutputLayerDefinition("TEMPORARY_OUTPUT", project)
    algorithm = QgsApplication.processingRegistry().createAlgorithmById("rslab:detect_anomalies")
    ok, message = algorithm.checkParameterValues(parameters, context)
    assert ok, message
    results = processing.run(algorithm, parameters, context=context)
    to_load = set(context.layersToLoadOnCompletion())
    assert to_load == {results["OUTPUT_SCORES"], results["OUTPUT_MASK"], results["OUTPUT_PEAKS"]}
    assert all(os.path.isfile(path) for path in to_load)


def test_detect_anomalies_from_the_command_line(tmp_path, samples, qgis_process):
    """`qgis_process.bin run rslab:detect_anomalies -- INPUT=...` with the plugin in a fresh profile."""
    run = qgis_process
    cube, gt = str(tmp_path / "beach2.tif"), str(tmp_path / "beach2_gt.tif")
    imported = run("--json", "run", "rslab:import_cube", "--", f"INPUT={samples / 'abu-beach-2.mat'}",
                   f"OUTPUT_CUBE={cube}", f"OUTPUT_GT={gt}")
    assert imported.returncode == 0, imported.stdout[-2000:] + imported.stderr[-2000:]
    done = run("--json", "run", "rslab:detect_anomalies", "--", f"INPUT={cube}", "METHOD=1", f"REFERENCE={gt}",
               "FALSE_ALARM_RATE=0.02", f"OUTPUT_SCORES={tmp_path / 's.tif'}", f"OUTPUT_MASK={tmp_path / 'm.tif'}",
               f"OUTPUT_REPORT={tmp_path / 'r.json'}", f"OUTPUT_PEAKS={tmp_path / 'p.gpkg'}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads(done.stdout)["results"]
    written = ogr.Open(str(tmp_path / "p.gpkg"))  # held: its layer dies with it
    points = written.GetLayer(0)
    assert results["OUTPUT_PEAKS"] == str(tmp_path / "p.gpkg") and points.GetFeatureCount() == 20
    assert [point["rank"] for point in points] == list(range(1, 21))
    written = points = None
    assert results["OUTPUT_SCORES"] == str(tmp_path / "s.tif") and results["OUTPUT_MASK"] == str(tmp_path / "m.tif")
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["metrics"]["auc_df"] > 0.9 and report["params"]["false_alarm_rate"] == 0.02
    without_rate = run("--json", "run", "rslab:detect_anomalies", "--", f"INPUT={cube}", "METHOD=1",
                       f"OUTPUT_SCORES={tmp_path / 's2.tif'}", f"OUTPUT_REPORT={tmp_path / 'r2.json'}")
    assert without_rate.returncode == 0, without_rate.stdout[-2000:] + without_rate.stderr[-2000:]
    assert "OUTPUT_MASK" not in json.loads(without_rate.stdout)["results"]
    assert json.loads((tmp_path / "r2.json").read_text())["threshold"] is None
    rethreshold = run("--json", "run", "rslab:threshold_anomalies", "--", f"INPUT={tmp_path / 's.tif'}",
                      "FALSE_ALARM_RATE=0.005", f"REFERENCE={gt}", f"OUTPUT_MASK={tmp_path / 'm005.tif'}",
                      f"OUTPUT_REPORT={tmp_path / 'm005.json'}")
    assert rethreshold.returncode == 0, rethreshold.stdout[-2000:] + rethreshold.stderr[-2000:]
    assert json.loads(rethreshold.stdout)["results"]["OUTPUT_MASK"] == str(tmp_path / "m005.tif")
    assert json.loads((tmp_path / "m005.json").read_text())["mask_pixels"] == int(read(tmp_path / "m005.tif")[0].sum())
    # BSDM trains inside QGIS's own Python: torch's optimiser needs a newer sympy than Debian's
    bsdm = run("--json", "run", "rslab:detect_anomalies", "--", f"INPUT={cube}", "METHOD=0", "ITERATIONS=3",
               f"REFERENCE={gt}", f"OUTPUT_SCORES={tmp_path / 's3.tif'}", f"OUTPUT_REPORT={tmp_path / 'r3.json'}")
    assert bsdm.returncode == 0, bsdm.stdout[-2000:] + bsdm.stderr[-2000:]
    report = json.loads((tmp_path / "r3.json").read_text())
    assert report["method"] == "bsdm_rx" and len(report["training_loss"]) == 3 and report["metrics"]["auc_df"] > 0.8


def test_bsdm_in_a_background_task_as_the_processing_dialog_runs_it(tmp_path, scene, provider, qtbot):
    """The toolbox's dialog runs algorithms in a QgsProcessingAlgRunnerTask on a worker thread, not on the GUI thread."""
    cube, gt = scene
    algorithm = QgsApplication.processingRegistry().createAlgorithmById("rslab:detect_anomalies")
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    feedback = QgsProcessingFeedback()
    progress, reported_at = [], set()
    feedback.progressChanged.connect(progress.append)
    # where the engine reports from: below QGIS's priority, not in the task manager's thread (QGIS draws there)
    feedback.progressChanged.connect(lambda _: reported_at.add((threading.get_native_id(), priority())),
                                     Qt.DirectConnection)
    params = {"INPUT": cube, "METHOD": 0, "ITERATIONS": 3, "REFERENCE": gt, "FALSE_ALARM_RATE": 0.01,
              "OUTPUT_SCORES": str(tmp_path / "s.tif"), "OUTPUT_MASK": str(tmp_path / "m.tif"),
              "OUTPUT_REPORT": str(tmp_path / "r.json")}
    task = QgsProcessingAlgRunnerTask(algorithm, params, context, feedback)
    with qtbot.waitSignal(task.executed, timeout=120000) as done:
        QgsApplication.taskManager().addTask(task)
    ok, results = done.args
    assert ok and results["OUTPUT_SCORES"] == str(tmp_path / "s.tif") and results["OUTPUT_MASK"] == str(tmp_path / "m.tif")
    report = json.loads((tmp_path / "r.json").read_text())
    assert len(report["training_loss"]) == 3 and report["metrics"]["auc_df"] > 0.8
    assert progress and max(progress) == pytest.approx(100)
    assert {nice for _, nice in reported_at} == {min(19, priority() + DEFAULT_JOB_NICENESS)}
    # QGIS's own threads are as they were; GDAL's compression threads, started by the job, keep its priority
    assert qgis_pool_priorities(qtbot) == {priority()}
    assert set(lowered_threads(priority(), deadline_s=2).values()) <= {"rslab-job"}


def test_on_the_gui_thread_the_engine_runs_there_at_qgis_priority(tmp_path, scene, provider):
    """processing.run, qgis_process and the batch and model dialogs run algorithms on the GUI thread, whose
    progress reports keep QGIS's window drawn: the engine runs there as it is (a thread of its own would leave the
    window frozen until the end)."""
    cube, _ = scene
    feedback = QgsProcessingFeedback()
    reported_at = set()
    feedback.progressChanged.connect(lambda _: reported_at.add((threading.current_thread(), priority())),
                                     Qt.DirectConnection)
    processing.run("rslab:detect_anomalies", {"INPUT": cube, "METHOD": 1, "OUTPUT_SCORES": str(tmp_path / "s.tif")},
                   feedback=feedback)
    assert reported_at == {(threading.main_thread(), priority())}


def test_a_cancelled_run_fails_in_processing_run_and_qgis_process(tmp_path, scene, provider, qgis_process):
    """A cancel returned an empty result as a success: qgis_process exited 0 (so `… && next_step` went on) and
    processing.run returned {} to a script that then met a KeyError."""
    import signal
    import subprocess
    import threading

    cube, _ = scene
    feedback = QgsProcessingFeedback()
    feedback.cancel()
    with pytest.raises(QgsProcessingException, match="cancelled; no output was written"):
        processing.run("rslab:detect_anomalies", {"INPUT": cube, "METHOD": 1, "OUTPUT_SCORES": str(tmp_path / "s.tif")},
                       feedback=feedback)
    assert not (tmp_path / "s.tif").exists()

    proc = subprocess.Popen(["/usr/bin/qgis_process.bin", "run", "rslab:detect_anomalies", "--", f"INPUT={cube}",
                             "METHOD=0", "ITERATIONS=100000", f"OUTPUT_SCORES={tmp_path / 'b.tif'}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=qgis_process.env)
    said = []
    reader = threading.Thread(target=lambda: said.extend(iter(lambda: proc.stdout.read(1), b"")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while b"BSDM iteration" not in b"".join(said) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)  # until training has begun
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) != 0
    finally:
        proc.kill()  # never left training for 100,000 iterations
    reader.join(timeout=10)
    output = b"".join(said).decode(errors="replace")
    assert "cancelled; no output was written" in output, output[-2000:]
    assert not (tmp_path / "b.tif").exists() and not list(tmp_path.glob(".rslab-partial-*"))


def test_outputs_naming_an_input_are_refused_and_the_input_is_kept(tmp_path, scene, provider):
    """Before, the scores replaced the cube they were computed from (a 1-band float raster in its place)."""
    import shutil

    cube, gt = scene
    copy, reference = str(tmp_path / "cube.tif"), str(tmp_path / "gt.tif")
    shutil.copy(cube, copy)
    shutil.copy(gt, reference)
    before = {path: open(path, "rb").read() for path in (copy, reference)}
    for output, message in ((copy, "the scores raster would replace the input image"),
                            (reference, "the scores raster would replace the reference")):
        with pytest.raises(QgsProcessingException, match=message):
            processing.run("rslab:detect_anomalies", {"INPUT": copy, "METHOD": 1, "REFERENCE": reference,
                                                      "OUTPUT_SCORES": output})
    assert sorted(os.listdir(tmp_path)) == ["cube.tif", "gt.tif"]
    assert all(open(path, "rb").read() == data for path, data in before.items())
    assert provider.supportedOutputRasterLayerExtensions() == ["tif"]


def test_a_mask_asked_for_by_a_rate_alone_is_loaded_styled(tmp_path, scene, provider, qgis_app):
    """FALSE_ALARM_RATE without OUTPUT_MASK: the mask was written to a temporary file and returned, but the
    dialog (runAndLoadResults) did not load it."""
    from qgis.core import QgsApplication

    cube, _ = scene
    project = QgsProject.instance()
    project.clear()
    logged = []
    log = QgsApplication.messageLog()
    log.messageReceived.connect(lambda message, tag, level: logged.append((tag, message)))
    try:
        result = processing.runAndLoadResults("rslab:detect_anomalies", {
            "INPUT": cube, "METHOD": 1, "FALSE_ALARM_RATE": 0.01, "OUTPUT_SCORES": str(tmp_path / "scores.tif")})
        loaded = {layer.source(): layer for layer in project.mapLayers().values()}
        assert os.path.isfile(result["OUTPUT_MASK"]) and result["OUTPUT_MASK"] in loaded
        assert isinstance(loaded[result["OUTPUT_MASK"]].renderer(), QgsPalettedRasterRenderer)
        qgis_app.processEvents()
        assert not [entry for entry in logged if entry[0] == "OGR"]  # loaded as a raster, not tried as a vector
        project.clear()
        # where nothing is loaded (processing.run, a batch with loading off, a child algorithm), neither is the
        # mask: it was loaded into every project, once per batch row
        context = QgsProcessingContext()
        context.setProject(project)
        result = processing.run("rslab:detect_anomalies", {
            "INPUT": cube, "METHOD": 1, "FALSE_ALARM_RATE": 0.01, "OUTPUT_SCORES": str(tmp_path / "again.tif")},
            context=context)
        assert os.path.isfile(result["OUTPUT_MASK"]) and context.layersToLoadOnCompletion() == {}
        assert project.mapLayers() == {}
    finally:
        log.messageReceived.disconnect()
        project.clear()


def test_the_log_gets_each_kind_of_message_and_counts_only_every_tenth_of_the_run():
    """Processing writes every progress text into the log: 'tile i of N' gave 288 lines for one RX run on a
    3000 x 3000 image, 'iteration i of N' 2000 for a default training."""
    from rslab.provider.base import feedback_callbacks

    feedback = Recorder()
    progress, _ = feedback_callbacks(feedback)
    progress(0.0, "scene statistics")
    for i in range(1000):
        progress(0.5 * i / 1000, f"tile {i + 1} of 1000")
    progress(0.5, "tiles done")
    for i in range(2000):
        progress(0.5 + 0.5 * i / 2000, f"BSDM iteration {i + 1} of 2000")
    assert feedback.texts[:3] == ["scene statistics", "tile 1 of 1000", "tile 201 of 1000"]
    assert len([t for t in feedback.texts if t.startswith("tile ")]) == 5
    assert "tiles done" in feedback.texts and feedback.texts[-1].startswith("BSDM iteration 160")
    assert len(feedback.texts) == 1 + 5 + 1 + 5
    assert feedback.progress() == pytest.approx(100 * (0.5 + 0.5 * 1999 / 2000))
    # Two counted kinds taking turns, as BSDM's suppression and the tiles under it report every window: each
    # went through every time (the kind had changed), 512 lines for a 4000 x 4000 image.
    feedback = Recorder()
    progress, _ = feedback_callbacks(feedback)
    for i in range(256):
        progress(i / 256, f"tile {i + 1} of 256")
        progress((i + 0.5) / 256, f"suppressing the background: window {i + 1} of 256")
    assert len([t for t in feedback.texts if t.startswith("tile ")]) == 10
    assert len([t for t in feedback.texts if t.startswith("suppressing")]) == 10
    assert feedback.texts[:2] == ["tile 1 of 256", "suppressing the background: window 1 of 256"]


def test_combinations_that_cannot_run_are_caught_before_the_run(tmp_path, scene, provider):
    """checkParameterValues (the Processing dialog's check before running; processing.run's and qgis_process's)
    runs the engine's checks: before, each of these passed it and failed only once the run had started."""
    from qgis.core import QgsApplication, QgsProcessingContext

    cube, _ = scene
    algorithm = QgsApplication.processingRegistry().algorithmById("rslab:detect_anomalies")
    base = {"INPUT": cube, "METHOD": 1, "OUTPUT_SCORES": str(tmp_path / "s.tif")}
    cases = [({"FALSE_ALARM_RATE": 1.0}, "above 0 and below 1"),
             ({"OUTPUT_MASK": str(tmp_path / "m.tif")}, "a mask output needs a false-alarm rate"),
             ({"METHOD": 2, "INNER_WINDOW": 4}, "the inner window must be an odd number")]
    for extra, message in cases:
        ok, text = algorithm.checkParameterValues(dict(base, **extra), QgsProcessingContext())
        assert not ok and message in text
    assert algorithm.checkParameterValues(dict(base, FALSE_ALARM_RATE=0.01), QgsProcessingContext()) == (True, "")
    # a vector mask as the reference: Processing's own message was 'not found', for a file that is there
    from qgis.core import QgsFeature, QgsGeometry, QgsVectorFileWriter, QgsVectorLayer
    polygons = QgsVectorLayer("Polygon?crs=EPSG:32633", "anomalies", "memory")
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromWkt("POLYGON((0 0, 10 0, 10 10, 0 10, 0 0))"))
    polygons.dataProvider().addFeatures([feature])
    gpkg = str(tmp_path / "anomalies.gpkg")
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    QgsVectorFileWriter.writeAsVectorFormatV2(polygons, gpkg, QgsProcessingContext().transformContext(), options)
    ok, text = algorithm.checkParameterValues(dict(base, REFERENCE=gpkg), QgsProcessingContext())
    assert not ok and text == f"REFERENCE: {gpkg} is not a raster GDAL can read (a vector layer: rasterise it first)"
    # and a run without a feedback object (the API allows it)
    results, ok = algorithm.run(dict(base, OUTPUT_REPORT=str(tmp_path / "r.json")), QgsProcessingContext(), None)
    assert ok and os.path.exists(results["OUTPUT_SCORES"])


def test_the_parameters_are_the_issues_names_order_and_defaults(provider, qtbot, iface):
    """The issue's parameter names (MODEL, OUTPUT_MODEL and OUTPUT_PEAKS added, all optional), the method enum in its order, and
    the defaults the Processing dialog and the dock start from: 500 iterations, seed 0, windows 3 and 11."""
    from rslab.ui.anomaly_dock import AnomalyDock

    algorithm = QgsApplication.processingRegistry().algorithmById("rslab:detect_anomalies")
    names = [p.name() for p in algorithm.parameterDefinitions()]
    assert names == ["INPUT", "METHOD", "ITERATIONS", "SEED", "INNER_WINDOW", "OUTER_WINDOW", "REFERENCE",
                     "FALSE_ALARM_RATE", "OUTPUT_SCORES", "OUTPUT_MASK", "OUTPUT_REPORT", "MODEL", "OUTPUT_MODEL",
                     "OUTPUT_PEAKS"]
    method = algorithm.parameterDefinition("METHOD")
    assert [option.split(":")[0] for option in method.options()] == ["bsdm_rx", "rx", "lrx"]
    defaults = {name: algorithm.parameterDefinition(name).defaultValue()
                for name in ("METHOD", "ITERATIONS", "SEED", "INNER_WINDOW", "OUTER_WINDOW")}
    assert defaults == {"METHOD": 0, "ITERATIONS": 500, "SEED": 0, "INNER_WINDOW": 3, "OUTER_WINDOW": 11}
    optional = {p.name() for p in algorithm.parameterDefinitions() if p.flags() & p.FlagOptional}
    assert optional == {"REFERENCE", "FALSE_ALARM_RATE", "OUTPUT_MASK", "OUTPUT_REPORT", "MODEL", "OUTPUT_MODEL",
                        "OUTPUT_PEAKS"}
    dock = AnomalyDock(iface)
    qtbot.addWidget(dock)
    assert dock.method_combo.currentData() == "bsdm_rx"
    assert [spin.value() for spin in (dock.iterations_spin, dock.seed_spin, dock.inner_spin, dock.outer_spin)] == [
        500, 0, 3, 11]


def test_unloading_while_the_toolbox_runs_an_algorithm_cancels_it_and_closes_its_dialog(tmp_path, scene, provider,
                                                                                          qtbot):
    """The plugin unloaded (or reloaded) while its algorithm ran from the Processing toolbox: QGIS deleted the
    provider, and when the run ended the toolbox dialog asked its algorithm for its id and QGIS died (signal 11).
    stop_running, which unload calls first, cancels the run, waits until the task has handed over its result
    and closes the dialog. The toolbox's dialog needs the desktop's interface: the dialog class it derives from
    stands in for it, the task is the one it starts."""
    from qgis.gui import QgsProcessingAlgorithmDialogBase

    from rslab.provider.base import RUNNING

    class ToolboxDialog(QgsProcessingAlgorithmDialogBase):
        def runAlgorithm(self):  # noqa: N802 (the task below is what it would start)
            pass

    cube, _ = scene
    dialog = ToolboxDialog()
    dialog.setAlgorithm(QgsApplication.processingRegistry().createAlgorithmById("rslab:detect_anomalies"))
    algorithm = dialog.algorithm()
    qtbot.addWidget(dialog)
    dialog.show()
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    feedback = QgsProcessingFeedback()
    params = {"INPUT": cube, "METHOD": 0, "ITERATIONS": 500, "OUTPUT_SCORES": str(tmp_path / "s.tif")}
    task = QgsProcessingAlgRunnerTask(algorithm, params, context, feedback)
    handed_over = []
    task.executed.connect(lambda ok, results: handed_over.append((ok, algorithm.id())))  # as the dialog does
    QgsApplication.taskManager().addTask(task)
    qtbot.waitUntil(lambda: bool(RUNNING), timeout=30000)
    assert provider.stop_running()
    assert handed_over == [(False, "rslab:detect_anomalies")] and not RUNNING
    assert QgsApplication.taskManager().countActiveTasks() == 0 and not dialog.isVisible()
    assert not (tmp_path / "s.tif").exists()


def test_unloading_during_a_batch_run_cancels_it_and_removes_the_provider_after_it(tmp_path, scene, iface, qtbot):
    """The batch dialog runs its rows on the GUI thread, so an unload (a Plugin Manager click, a reload) comes
    from inside that run: waiting for it stalled QGIS for 30 s, the dialog was deleted under its own run
    (RuntimeError) and the next row would have run an
    algorithm whose provider had been deleted. Now the batch is cancelled (no second row), the unload returns
    at once, and the provider leaves the registry only once the run has returned; a plugin started again
    meanwhile registers its provider then."""
    from rslab.plugin import RSLabPlugin
    from rslab.provider.base import RUNNING

    registry = QgsApplication.processingRegistry()
    assert registry.providerById("rslab") is None
    plugin = RSLabPlugin(iface)
    plugin.initGui()
    old_provider = registry.providerById("rslab")
    cube, _ = scene
    outputs = [tmp_path / f"row{row}.tif" for row in range(2)]
    # Not given to qtbot: the unload deletes it.
    dialog = batch_dialog("rslab:detect_anomalies", "OUTPUT_SCORES",
                          [({"INPUT": cube, "METHOD": 0, "ITERATIONS": 500}, output) for output in outputs])

    seen = {}
    again = RSLabPlugin(iface)

    def unload_while_running():
        if not RUNNING:  # Not started yet: the first row is still importing torch.
            QTimer.singleShot(100, unload_while_running)
            return
        plugin.unload()
        seen["run going on after unload"] = bool(RUNNING)
        seen["provider registered after unload"] = registry.providerById("rslab") is old_provider
        again.initGui()  # A reload: its provider waits for the old one to go.
        seen["new provider registered at once"] = registry.providerById("rslab") is again.provider

    QTimer.singleShot(500, unload_while_running)
    dialog.runAlgorithm()
    assert seen == {"run going on after unload": True, "provider registered after unload": True,
                    "new provider registered at once": False}
    assert not any(output.exists() for output in outputs)  # The first row cancelled, the second never run.
    qtbot.waitUntil(lambda: registry.providerById("rslab") is again.provider, timeout=5000)
    qtbot.waitUntil(lambda: sip.isdeleted(dialog))  # Its algorithm's provider is gone.
    qtbot.waitUntil(lambda: batch_tasks() == [])
    again.unload()
    assert registry.providerById("rslab") is None


def test_unloading_during_another_algorithms_batch_removes_the_provider_at_once(tmp_path, iface, qtbot):
    """Any batch dialog's run below the unload counted as an RS Lab run: the provider stayed until that batch
    ended, and the unload said an RS Lab run was cancelled."""
    from rslab.plugin import RSLabPlugin

    registry = QgsApplication.processingRegistry()
    plugin = RSLabPlugin(iface)
    plugin.initGui()
    values = {"EXTENT": "0,1000,0,1000 [EPSG:3857]", "POINTS_NUMBER": 1000000, "MIN_DISTANCE": 0.0,
              "TARGET_CRS": "EPSG:3857"}
    dialog = batch_dialog("native:randompointsinextent", "OUTPUT", [(values, tmp_path / "points.gpkg")])
    qtbot.addWidget(dialog)
    seen = {}
    bar = len(iface.messageBar().items())

    def unload_while_running():
        seen["batch running"] = dialog.cancelButton().isEnabled()
        plugin.unload()
        seen["provider registered after unload"] = registry.providerById("rslab") is not None
        seen["messages"] = len(iface.messageBar().items()) - bar
        dialog.cancelButton().click()

    QTimer.singleShot(300, unload_while_running)
    dialog.runAlgorithm()
    assert seen == {"batch running": True, "provider registered after unload": False, "messages": 0}


def test_a_cancelled_batch_leaves_no_task_that_keeps_qgis_from_quitting(tmp_path, scene, provider, qtbot):
    """QGIS 3.22 keeps the exception that a Python algorithm raises, and through its traceback the batch dialog's
    frames, whose progress task then never finished: File > Exit asked about an active 'Batch Processing' task
    and, told to quit anyway, stayed open."""
    from rslab.provider.base import RUNNING

    cube, _ = scene
    dialog = batch_dialog("rslab:detect_anomalies", "OUTPUT_SCORES",
                          [({"INPUT": cube, "METHOD": 0, "ITERATIONS": 500}, tmp_path / "s.tif")])
    qtbot.addWidget(dialog)
    seen = {}

    def cancel_while_running():
        if not RUNNING:
            QTimer.singleShot(100, cancel_while_running)
            return
        seen["batch task while running"] = batch_tasks()
        dialog.cancelButton().click()

    QTimer.singleShot(300, cancel_while_running)
    dialog.runAlgorithm()
    assert seen == {"batch task while running": ["Batch Processing - " + dialog.algorithm().displayName()]}
    qtbot.waitUntil(lambda: batch_tasks() == [], timeout=3000)


def test_a_cancelled_run_leaves_no_image_or_model_in_memory(tmp_path, scene, provider):
    """QGIS 3.22 keeps every exception that a Python algorithm raises, with its traceback, for good (its sip error
    handler never releases it): the frames of a cancelled or failed run, with their locals (image, statistics,
    model), stayed in memory. processAlgorithm clears them before it raises."""
    import gc
    import types

    cube, _ = scene
    feedback = QgsProcessingFeedback()
    feedback.progressChanged.connect(lambda percent: feedback.cancel() if percent > 5 else None)
    with pytest.raises(QgsProcessingException):
        processing.run("rslab:detect_anomalies", {"INPUT": cube, "METHOD": 0, "ITERATIONS": 500,
                                                  "OUTPUT_SCORES": str(tmp_path / "s.tif")}, feedback=feedback)
    gc.collect()
    engine = os.path.join("rslab", "core", "")
    kept = [(frame.f_code.co_name, sorted(frame.f_locals)) for frame in gc.get_objects()
            if isinstance(frame, types.FrameType) and engine in frame.f_code.co_filename and frame.f_locals]
    assert kept == []


def test_removing_the_provider_closes_the_dialogs_of_models_that_run_its_algorithms(provider, qtbot):
    """A model's output parameters keep the provider of the algorithm that writes them: Run in a model dialog
    left open over an unload crashed QGIS. The dialogs of models using an RS Lab algorithm close with the
    provider; others stay."""
    from qgis.core import (QgsProcessingModelAlgorithm, QgsProcessingModelChildAlgorithm,
                           QgsProcessingModelOutput)
    from qgis.gui import QgsProcessingAlgorithmDialogBase

    class ModelDialog(QgsProcessingAlgorithmDialogBase):
        def runAlgorithm(self):  # noqa: N802
            pass

    def model_dialog(algorithm_id, output):
        model = QgsProcessingModelAlgorithm("anomalies", "tests")
        child = QgsProcessingModelChildAlgorithm(algorithm_id)
        child.setChildId("step")
        result = QgsProcessingModelOutput("result")
        result.setChildOutputName(output)
        result.setChildId("step")
        child.setModelOutputs({"result": result})
        model.addChildAlgorithm(child)
        model.setProvider(QgsApplication.processingRegistry().providerById("model"))  # The dialog asks for it.
        dialog = ModelDialog()
        dialog.setAlgorithm(model.create())  # A copy, as the toolbox gives its dialogs.
        qtbot.addWidget(dialog)
        dialog.show()
        return dialog

    ours = model_dialog("rslab:detect_anomalies", "OUTPUT_SCORES")
    other = model_dialog("native:buffer", "OUTPUT")
    assert provider.dialogs() == [ours]
    provider.close_dialogs()  # As retire does before removing the provider.
    assert not ours.isVisible() and other.isVisible()
