"""rslab:detect_changes and rslab:train_change_detector through processing.run, and detect_changes
through qgis_process on the command line."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import rasterio
from qgis.core import QgsProcessingException, QgsRasterLayer

import processing
from levir import LEVIR


@pytest.fixture()
def change_copy(shared_data, tmp_path):
    """A copy of a ../shared/data/change folder in the test's folder: QGIS writes .aux.xml statistics beside
    the rasters it loads, and the shared data is left as it came."""
    def copy(name: str):
        return shutil.copytree(shared_data / "change" / name, tmp_path / "data" / name, dirs_exist_ok=True)
    return copy


def _pair(samples, tmp_path):
    """Copies of the bundled LEVIR pair and label: QGIS writes .aux.xml statistics beside the rasters it opens
    (they appeared in resources/samples)."""
    folder = tmp_path / "inputs"
    folder.mkdir(exist_ok=True)
    return tuple(str(shutil.copy(samples / f"levir_test_7_{part}.png", folder)) for part in ("A", "B", "label"))


def test_detect_changes_processing_run_with_reference(tmp_path, samples, provider, tiny_change_checkpoint):
    before, after, label = _pair(samples, tmp_path)
    for method, model in ((1, None), (0, tiny_change_checkpoint)):
        out = tmp_path / str(method)
        params = {"BEFORE": before, "AFTER": after, "METHOD": method, "THRESHOLD": 0.5, "REFERENCE": label,
                  "OUTPUT_CHANGE": str(out / "change.tif"), "OUTPUT_PROBABILITY": str(out / "prob.tif"),
                  "OUTPUT_UNCERTAINTY": str(out / "unc.tif"), "OUTPUT_REPORT": str(out / "report.json")}
        if model:
            params["MODEL"] = model
        result = processing.run("rslab:detect_changes", params)
        assert set(result) == {"OUTPUT_CHANGE", "OUTPUT_PROBABILITY", "OUTPUT_UNCERTAINTY", "OUTPUT_REPORT"}
        report = json.loads((out / "report.json").read_text())
        assert report["method"] == ("cva", "arcdnet")[method == 0]
        assert {"f1", "iou", "kappa", "uncertainty_auc"} <= set(report["metrics"])
        layer = QgsRasterLayer(result["OUTPUT_CHANGE"], "change")
        assert layer.isValid() and layer.width() == 256


def test_detect_changes_reads_a_partial_reference(tmp_path, change_copy, provider):
    root = change_copy("landsat_nanjing")
    params = {"BEFORE": str(root / "Nanjing_t1_TM6b.tif"), "AFTER": str(root / "Nanjing_t2_TM6b.tif"), "METHOD": 1,
              "REFERENCE": str(root / "Nanjing_reference_0unl_1unch_2ch.tif"), "REFERENCE_CODING": 1,
              "OUTPUT_CHANGE": str(tmp_path / "change.tif"), "OUTPUT_REPORT": str(tmp_path / "report.json")}
    processing.run("rslab:detect_changes", params)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["reference_coding"] == "partial" and report["metrics"]["pixels"] == 14756
    assert report["metrics"]["f1"] > 0.7


def test_detect_changes_scored_against_polygons(tmp_path, change_copy, provider):
    """Nanjing's reference as polygons gives the same scores as the raster read as partial."""
    from test_change_labels import polygonise

    root = change_copy("landsat_nanjing")
    polygons = polygonise(str(root / "Nanjing_reference_0unl_1unch_2ch.tif"), str(tmp_path / "drawn.gpkg"))
    params = {"BEFORE": str(root / "Nanjing_t1_TM6b.tif"), "AFTER": str(root / "Nanjing_t2_TM6b.tif"), "METHOD": 1}
    reports = {}
    for name, reference in (("raster", {"REFERENCE": str(root / "Nanjing_reference_0unl_1unch_2ch.tif"),
                                        "REFERENCE_CODING": 1}),
                            ("polygons", {"REFERENCE_POLYGONS": polygons, "REFERENCE_FIELD": "label"})):
        processing.run("rslab:detect_changes", dict(params, **reference, OUTPUT_CHANGE=str(tmp_path / f"{name}.tif"),
                                                    OUTPUT_REPORT=str(tmp_path / f"{name}.json")))
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert reports["polygons"]["metrics"] == reports["raster"]["metrics"]
    assert reports["polygons"]["reference_coding"] == "partial" and reports["polygons"]["metrics"]["pixels"] == 14756
    with pytest.raises(QgsProcessingException, match="REFERENCE or REFERENCE_POLYGONS, not both"):
        processing.run("rslab:detect_changes", dict(params, REFERENCE=str(root / "Nanjing_reference_0unl_1unch_2ch.tif"),
                                                    REFERENCE_POLYGONS=polygons, OUTPUT_CHANGE=str(tmp_path / "x.tif")))
    # the polygons given as REFERENCE: Processing's own message was 'not found', for a file that is there
    with pytest.raises(QgsProcessingException, match=f"REFERENCE: {polygons} is not a raster GDAL can read "
                                                     r"\(a vector layer: give it as REFERENCE_POLYGONS\)"):
        processing.run("rslab:detect_changes", dict(params, REFERENCE=polygons, OUTPUT_CHANGE=str(tmp_path / "x.tif")))
    assert not (tmp_path / "x.tif").exists()


def test_detect_changes_on_chosen_bands(tmp_path, change_copy, provider):
    """Sentinel-2's 10 m bands only (B02, B03, B04, B08 of 13): CVA finds OSCD Rennes' changes there."""
    root = change_copy("oscd_s2")
    params = {"BEFORE": str(root / "rennes_t1_S2_13b_10m.tif"), "AFTER": str(root / "rennes_t2_S2_13b_10m.tif"),
              "METHOD": 1, "BANDS": [2, 3, 4, 8], "REFERENCE": str(root / "rennes_cm.tif"),
              "OUTPUT_CHANGE": str(tmp_path / "change.tif"), "OUTPUT_REPORT": str(tmp_path / "report.json")}
    processing.run("rslab:detect_changes", params)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["bands"] == [2, 3, 4, 8] and report["metrics"]["f1"] > 0.4  # all 13 bands: 0.001
    # written as the messages write band lists (QGIS's own parser read '4,3,2' as band 0)
    for text in ("4,3,2", "4, 3, 2", "4;3;2"):
        processing.run("rslab:detect_changes", dict(params, BANDS=text, REFERENCE=None))
        assert json.loads((tmp_path / "report.json").read_text())["bands"] == [4, 3, 2], text
    for empty in ("", " "):  # `BANDS=` from a script's empty variable: all bands, as [] (it read as band 0)
        processing.run("rslab:detect_changes", dict(params, BANDS=empty, REFERENCE=None))
        assert json.loads((tmp_path / "report.json").read_text())["bands"] is None, repr(empty)
    with pytest.raises(QgsProcessingException, match="is not a list of band numbers"):
        processing.run("rslab:detect_changes", dict(params, BANDS="4, three", OUTPUT_CHANGE=str(tmp_path / "no.tif")))
    with pytest.raises(QgsProcessingException, match="there is no band 14"):
        processing.run("rslab:detect_changes", dict(params, BANDS=[2, 14], OUTPUT_CHANGE=str(tmp_path / "no.tif")))
    assert not (tmp_path / "no.tif").exists()


def test_detect_changes_with_loaded_layers_and_bad_input(tmp_path, samples, provider):
    before, after, _ = _pair(samples, tmp_path)
    b, a = QgsRasterLayer(before, "before"), QgsRasterLayer(after, "after")
    result = processing.run("rslab:detect_changes", {"BEFORE": b, "AFTER": a, "METHOD": 1,
                                                     "OUTPUT_CHANGE": str(tmp_path / "c.tif")})
    assert os.path.exists(result["OUTPUT_CHANGE"])
    with pytest.raises(QgsProcessingException, match="bands"):
        processing.run("rslab:detect_changes", {"BEFORE": before, "AFTER": str(shutil.copy(samples / "stars_L7_ETMs.tif", tmp_path)),
                                                "METHOD": 1, "OUTPUT_CHANGE": str(tmp_path / "bad.tif")})
    assert not (tmp_path / "bad.tif").exists()


def test_a_raster_inside_a_zip_gets_the_docks_message(tmp_path, samples, provider):
    """Processing passed '/vsizip/…' on to the engine, which said 'raster file not found' of a file QGIS reads."""
    import zipfile

    before, after, _ = _pair(samples, tmp_path)
    with zipfile.ZipFile(tmp_path / "pair.zip", "w") as archive:
        archive.write(before, "before.tif")
        archive.write(after, "after.tif")
    layers = [QgsRasterLayer(f"/vsizip/{tmp_path}/pair.zip/{name}.tif", name) for name in ("before", "after")]
    assert all(layer.isValid() for layer in layers)
    with pytest.raises(QgsProcessingException, match="BEFORE layer 'before' is not a raster file on disk"):
        processing.run("rslab:detect_changes", {"BEFORE": layers[0], "AFTER": layers[1], "METHOD": 1,
                                                "OUTPUT_CHANGE": str(tmp_path / "c.tif")})
    assert not (tmp_path / "c.tif").exists()


def test_a_crs_set_on_the_layer_in_qgis_is_not_taken_for_the_files(tmp_path, samples, provider):
    """A user set another CRS on a layer (Layer > Set CRS): the engine reads the file, so the results landed where
    the file's CRS puts them, hundreds of km from the layer; the run now stops and says how to fix the file."""
    from qgis.core import QgsCoordinateReferenceSystem

    source = shutil.copy(samples / "rasterio_RGB.byte.tif", tmp_path / "scene.tif")  # EPSG:32618
    layers = [QgsRasterLayer(str(source), name) for name in ("before", "after")]
    layers[1].setCrs(QgsCoordinateReferenceSystem("EPSG:32617"))
    with pytest.raises(QgsProcessingException, match="the AFTER layer 'after' is shown in EPSG:32617 set in QGIS, "
                                                     "but its file says EPSG:32618: write the CRS into the file "
                                                     r"\(Raster > Projections > Assign Projection"):
        processing.run("rslab:detect_changes", {"BEFORE": layers[0], "AFTER": layers[1], "METHOD": 1,
                                                "OUTPUT_CHANGE": str(tmp_path / "c.tif")})
    assert not (tmp_path / "c.tif").exists()
    from rslab.ui.layers import crs_label, layer_file

    custom = tmp_path / "custom.tif"  # a CRS without an EPSG code, as a project of an older QGIS keeps it
    with rasterio.open(source) as src:
        lcc = "+proj=lcc +lat_0=23 +lon_0=-96 +lat_1=29.5 +lat_2=45.5 +x_0=0 +y_0=0 +ellps=GRS80 +units=m +no_defs"
        with rasterio.open(custom, "w", **dict(src.profile, crs=lcc)) as dst:
            dst.write(src.read())
    layer = QgsRasterLayer(str(custom), "custom")
    layer.setCrs(QgsCoordinateReferenceSystem.fromProj(layer.crs().toProj()))  # unequal objects, one CRS
    assert layer_file(layer, "after") == str(custom)
    assert "+proj=lcc" in crs_label(layer.dataProvider().crs())  # it said 'unknown'
    layers[1].setCrs(layers[1].dataProvider().crs())  # set back: it runs
    processing.run("rslab:detect_changes", {"BEFORE": layers[0], "AFTER": layers[1], "METHOD": 1,
                                            "OUTPUT_CHANGE": str(tmp_path / "c.tif")})
    assert (tmp_path / "c.tif").exists()


def test_a_file_named_with_a_bar_is_read_and_a_geopackage_table_refused(tmp_path, samples, provider):
    """The layer's source was cut at '|' (where QGIS appends options): 'scene|2019.tif' became 'scene', 'not a
    raster file on disk'. A table inside a GeoPackage is no file GDAL opens alone: refused with the message."""
    before, after, _ = _pair(samples, tmp_path)
    named = [shutil.copy(path, tmp_path / f"pair|{role}.tif") for path, role in ((before, "before"), (after, "after"))]
    layers = [QgsRasterLayer(str(path), role) for path, role in zip(named, ("before", "after"))]
    assert all(layer.isValid() for layer in layers)
    result = processing.run("rslab:detect_changes", {"BEFORE": layers[0], "AFTER": layers[1], "METHOD": 1,
                                                     "OUTPUT_CHANGE": str(tmp_path / "c.tif")})
    assert os.path.isfile(result["OUTPUT_CHANGE"])
    from osgeo import gdal

    gdal.Translate(str(tmp_path / "pair.gpkg"), str(samples / "rasterio_RGB.byte.tif"), format="GPKG",
                   creationOptions=["RASTER_TABLE=before"])
    table = QgsRasterLayer(f"GPKG:{tmp_path}/pair.gpkg:before", "table")
    assert table.isValid()
    with pytest.raises(QgsProcessingException, match="BEFORE layer 'table' is not a raster file on disk"):
        processing.run("rslab:detect_changes", {"BEFORE": table, "AFTER": layers[1], "METHOD": 1,
                                                "OUTPUT_CHANGE": str(tmp_path / "g.tif")})


def test_train_change_detector_processing_run(tmp_path, shared_data, provider):
    output = tmp_path / "model.pt"
    result = processing.run("rslab:train_change_detector", {
        "TRAIN_FOLDER": str(shared_data / LEVIR), "ITERATIONS": 2, "BATCH_SIZE": 2, "CROP": 64,
        "WIDTH": 0, "SEED": 1, "OUTPUT_MODEL": str(output), "OUTPUT_REPORT": str(tmp_path / "history.json"),
    })
    assert result["OUTPUT_MODEL"] == str(output) and output.exists()
    history = json.loads((tmp_path / "history.json").read_text())["history"]
    assert history and {"loss", "val_f1", "iteration"} <= set(history[-1])
    from rslab.core.checkpoint import load_checkpoint

    card = load_checkpoint(str(output), task="change_detection").card
    assert card.arguments == {"bands": 3, "base": 32, "channels": 32}
    assert len(card.training["validation_pairs"]) == 2 and card.bands == ["red", "green", "blue"]
    with pytest.raises(QgsProcessingException, match="training folder"):
        processing.run("rslab:train_change_detector", {"ITERATIONS": 1, "OUTPUT_MODEL": str(tmp_path / "x.pt")})


def test_train_change_detector_on_one_partially_labelled_pair(tmp_path, change_copy, provider):
    root = change_copy("landsat_nanjing")
    processing.run("rslab:train_change_detector", {
        "BEFORE": str(root / "Nanjing_t1_TM6b.tif"), "AFTER": str(root / "Nanjing_t2_TM6b.tif"),
        "LABEL": str(root / "Nanjing_reference_0unl_1unch_2ch.tif"), "LABEL_CODING": 1, "ITERATIONS": 1,
        "BATCH_SIZE": 2, "CROP": 64, "OUTPUT_MODEL": str(tmp_path / "m.pt"), "OUTPUT_REPORT": str(tmp_path / "h.json"),
    })
    report = json.loads((tmp_path / "h.json").read_text())
    assert report["label_coding"] == "partial" and len(report["history"]) == 1
    assert report["notes"] == [note for note in report["notes"] if note.startswith("only one training pair")] != []
    from rslab.core.checkpoint import read_card

    assert read_card(str(tmp_path / "m.pt")).metrics["validation"]["pixels"] == 14756


def test_train_change_detector_on_chosen_bands(tmp_path, shared_data, change_copy, provider):
    """BANDS with a training folder (no BEFORE layer to list them) and with a raster triple."""
    from rslab.core.checkpoint import read_card

    tiny = {"ITERATIONS": 1, "BATCH_SIZE": 2, "CROP": 64, "OUTPUT_REPORT": str(tmp_path / "h.json")}
    processing.run("rslab:train_change_detector", dict(
        tiny, TRAIN_FOLDER=str(shared_data / LEVIR), BANDS=[3, 2], OUTPUT_MODEL=str(tmp_path / "f.pt")))
    card = read_card(str(tmp_path / "f.pt"))
    assert card.arguments["bands"] == 2 and card.training["params"]["bands"] == [3, 2]
    assert json.loads((tmp_path / "h.json").read_text())["bands"] == [3, 2]

    root = change_copy("oscd_s2")
    triple = {"BEFORE": str(root / "rennes_t1_S2_13b_10m.tif"), "AFTER": str(root / "rennes_t2_S2_13b_10m.tif"),
              "LABEL": str(root / "rennes_cm.tif")}
    processing.run("rslab:train_change_detector", dict(tiny, **triple, BANDS=[2, 3, 4, 8],
                                                      OUTPUT_MODEL=str(tmp_path / "s2.pt")))
    assert read_card(str(tmp_path / "s2.pt")).bands == ["B02", "B03", "B04", "B08"]
    with pytest.raises(QgsProcessingException, match="no band 14"):
        processing.run("rslab:train_change_detector", dict(tiny, **triple, BANDS=[14], OUTPUT_MODEL=str(tmp_path / "x.pt")))
    assert not (tmp_path / "x.pt").exists()


def test_detect_changes_from_the_command_line(tmp_path, samples, qgis_process, change_copy):
    """`qgis_process.bin run rslab:detect_changes -- BEFORE=... AFTER=...` with the plugin in a fresh profile."""
    run = qgis_process
    before, after, label = _pair(samples, tmp_path)
    done = run("--json", "run", "rslab:detect_changes", "--", f"BEFORE={before}", f"AFTER={after}", "METHOD=0",
               f"REFERENCE={label}", f"OUTPUT_CHANGE={tmp_path / 'c.tif'}", f"OUTPUT_UNCERTAINTY={tmp_path / 'u.tif'}",
               f"OUTPUT_REPORT={tmp_path / 'r.json'}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert json.loads(done.stdout)["results"]["OUTPUT_CHANGE"] == str(tmp_path / "c.tif")
    with rasterio.open(tmp_path / "c.tif") as ds:
        assert ds.count == 1 and ds.nodata == 255
    report = json.loads((tmp_path / "r.json").read_text())
    # the default weights on a pair they never saw in training (F1 0.75 when trained; CVA scores 0.31 here)
    assert report["model"]["path"].endswith("arcdnet_levir_dsifn.pt")
    assert report["metrics"]["f1"] > 0.6
    # a multiple-band parameter on the command line: the parameter repeated
    oscd = change_copy("oscd_s2")
    done = run("--json", "run", "rslab:detect_changes", "--", f"BEFORE={oscd / 'rennes_t1_S2_13b_10m.tif'}",
               f"AFTER={oscd / 'rennes_t2_S2_13b_10m.tif'}", "METHOD=1", "BANDS=2", "BANDS=3", "BANDS=4", "BANDS=8",
               f"REFERENCE={oscd / 'rennes_cm.tif'}", f"OUTPUT_CHANGE={tmp_path / 'o.tif'}",
               f"OUTPUT_REPORT={tmp_path / 'o.json'}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert json.loads((tmp_path / "o.json").read_text())["bands"] == [2, 3, 4, 8]
    # an empty BANDS (a script's empty variable) is all bands; it reached the algorithm as a null QVariant, band 0
    done = run("--json", "run", "rslab:detect_changes", "--", f"BEFORE={before}", f"AFTER={after}", "METHOD=1",
               "BANDS=", f"OUTPUT_CHANGE={tmp_path / 'e.tif'}", f"OUTPUT_REPORT={tmp_path / 'e.json'}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert json.loads((tmp_path / "e.json").read_text())["bands"] is None


def test_train_change_detector_on_label_polygons(tmp_path, change_copy, provider):
    """Nanjing's reference drawn as polygons (a GeoPackage, and the same as a memory layer): burnt onto the
    before grid, read as partial labels whatever LABEL_CODING says, validated on its 14,756 labelled pixels."""
    from qgis.core import QgsFeatureRequest, QgsVectorLayer
    from test_change_labels import polygonise

    from rslab.core.checkpoint import read_card

    root = change_copy("landsat_nanjing")
    polygons = polygonise(str(root / "Nanjing_reference_0unl_1unch_2ch.tif"), str(tmp_path / "labels.gpkg"))
    dates = {"BEFORE": str(root / "Nanjing_t1_TM6b.tif"), "AFTER": str(root / "Nanjing_t2_TM6b.tif")}
    tiny = {"ITERATIONS": 1, "BATCH_SIZE": 2, "CROP": 64, "LABEL_CODING": 0}
    memory = QgsVectorLayer(polygons, "drawn", "ogr").materialize(QgsFeatureRequest())
    assert memory.providerType() == "memory"
    for name, source in (("gpkg", polygons), ("memory", memory)):
        processing.run("rslab:train_change_detector", dict(
            tiny, **dates, LABEL_POLYGONS=source, LABEL_FIELD="label", OUTPUT_MODEL=str(tmp_path / f"{name}.pt"),
            OUTPUT_REPORT=str(tmp_path / f"{name}.json")))
        assert json.loads((tmp_path / f"{name}.json").read_text())["label_coding"] == "partial"
        assert read_card(str(tmp_path / f"{name}.pt")).metrics["validation"]["pixels"] == 14756

    with pytest.raises(QgsProcessingException, match="has no field 'change'"):
        processing.run("rslab:train_change_detector", dict(tiny, **dates, LABEL_POLYGONS=polygons, LABEL_FIELD="change",
                                                          OUTPUT_MODEL=str(tmp_path / "x.pt")))
    with pytest.raises(QgsProcessingException, match="LABEL or LABEL_POLYGONS, not both"):
        processing.run("rslab:train_change_detector", dict(
            tiny, **dates, LABEL=str(root / "Nanjing_reference_0unl_1unch_2ch.tif"), LABEL_POLYGONS=polygons,
            OUTPUT_MODEL=str(tmp_path / "x.pt")))
    # a report in a folder that does not exist yet, named with ~: the run failed at its very end, after training,
    # with a traceback (a plain open() of '~/reports/t.json'), and left the checkpoint behind
    home = tmp_path / "home"
    home.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(home))
        result = processing.run("rslab:train_change_detector", dict(
            tiny, **dates, LABEL_POLYGONS=polygons, OUTPUT_MODEL=str(tmp_path / "t.pt"),
            OUTPUT_REPORT="~/reports/t.json"))
    assert result["OUTPUT_REPORT"] == str(home / "reports" / "t.json")
    assert json.loads((home / "reports" / "t.json").read_text())["label_coding"] == "partial"
    # the report used to be written over the checkpoint just trained
    with pytest.raises(QgsProcessingException, match="the checkpoint and the report are one file"):
        processing.run("rslab:train_change_detector", dict(tiny, **dates, LABEL_POLYGONS=polygons,
                                                          OUTPUT_MODEL=str(tmp_path / "x.pt"),
                                                          OUTPUT_REPORT=str(tmp_path / "x.pt")))
    assert not (tmp_path / "x.pt").exists()


def test_loaded_outputs_named_with_a_tilde_are_styled_and_probability_spans_0_to_1(tmp_path, samples, provider,
                                                                                   monkeypatch):
    """runAndLoadResults, as the Processing dialog does. An output typed as '~/change.tif' was written to the home
    folder but returned and loaded as '~/change.tif' (not correctly generated, never styled); the probability
    layer was loaded unstyled, stretched to its own range (0.81 drawn as white as a certain change)."""
    from qgis.core import QgsPalettedRasterRenderer, QgsProject, QgsSingleBandPseudoColorRenderer

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    before, after, _ = _pair(samples, tmp_path)
    project = QgsProject.instance()
    project.clear()
    try:
        result = processing.runAndLoadResults("rslab:detect_changes", {
            "BEFORE": before, "AFTER": after, "METHOD": 1, "OUTPUT_CHANGE": "~/change.tif", "OUTPUT_PROBABILITY": str(tmp_path / "prob.tif"),
            "OUTPUT_UNCERTAINTY": str(tmp_path / "unc.tif")})
        assert result["OUTPUT_CHANGE"] == str(home / "change.tif")
        loaded = {layer.source(): layer for layer in project.mapLayers().values()}
        change, probability = loaded[str(home / "change.tif")], loaded[str(tmp_path / "prob.tif")]
        assert change.isValid() and isinstance(change.renderer(), QgsPalettedRasterRenderer)
        renderer = probability.renderer()
        assert isinstance(renderer, QgsSingleBandPseudoColorRenderer)
        assert (renderer.classificationMin(), renderer.classificationMax()) == (0.0, 1.0)
    finally:
        project.clear()


def test_without_torch_ar_cdnet_says_what_to_install_and_cva_runs(tmp_path, samples, provider, monkeypatch):
    """A zip install before 'Install missing packages': qgis_process printed a ModuleNotFoundError traceback."""
    import sys

    before, after, _ = _pair(samples, tmp_path)
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails as on a QGIS without it
    with pytest.raises(QgsProcessingException, match="^the Python package torch is not installed, and this job "
                                                     "needs it: install it with RS Lab > Diagnostics"):
        processing.run("rslab:detect_changes", {"BEFORE": before, "AFTER": after, "METHOD": 0,
                                                "OUTPUT_CHANGE": str(tmp_path / "net.tif")})
    assert os.listdir(tmp_path) == ["inputs"]
    result = processing.run("rslab:detect_changes", {"BEFORE": before, "AFTER": after, "METHOD": 1,
                                                     "OUTPUT_CHANGE": str(tmp_path / "cva.tif")})
    assert os.path.exists(result["OUTPUT_CHANGE"])
