"""Each Processing dialog's Help button opens the algorithm's README section on the plugin's homepage."""
from __future__ import annotations

import configparser
import re
from pathlib import Path
from typing import List

import pytest
from qgis.core import QgsApplication
from qgis.PyQt.QtCore import QObject, QUrl, pyqtSlot
from qgis.PyQt.QtGui import QDesktopServices
from qgis.PyQt.QtWidgets import QDialogButtonBox

from rslab.core import help_links

REPO = Path(__file__).resolve().parent.parent


def _homepage() -> str:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(REPO / "metadata.txt", encoding="utf-8")
    return parser["general"]["homepage"]


@pytest.mark.parametrize("heading, anchor", [
    # as GitHub renders these headings of this README
    ("Install into QGIS", "install-into-qgis"),
    ("`rslab:detect_anomalies`", "rslabdetect_anomalies"),
    ("`rslab:import_cube` — Import MATLAB hyperspectral cube", "rslabimport_cube--import-matlab-hyperspectral-cube"),
    ("`rslab:threshold_anomalies` — Anomaly mask at a false-alarm rate (from scores)",
     "rslabthreshold_anomalies--anomaly-mask-at-a-false-alarm-rate-from-scores"),
    ("Hyperspectral anomaly detection (BSDM + RX, RX, local RX)",
     "hyperspectral-anomaly-detection-bsdm--rx-rx-local-rx"),
    ("Windowed engine (`.venv/bin/python bench/tiling.py`; `make bench` runs it)",
     "windowed-engine-venvbinpython-benchtilingpy-make-bench-runs-it"),
])
def test_github_anchor_follows_githubs_rule(heading, anchor):
    assert help_links.github_anchor(heading) == anchor


def test_headings_in_fenced_code_are_not_sections(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text("# Tool\n\n```bash\n# `rslab:detect_changes` in a shell comment\n```\n\n"
                      "## Detect: `rslab:detect_changes`\n### `rslab:detect_changes` again\n", encoding="utf-8")
    monkeypatch.setattr(help_links, "README", readme)
    help_links.readme_headings.cache_clear()
    try:
        assert help_links.readme_sections() == {"rslab:detect_changes": "detect-rslabdetect_changes"}
        monkeypatch.setattr(help_links, "README", tmp_path / "absent.md")
        help_links.readme_headings.cache_clear()
        assert help_links.help_url("rslab:detect_changes") == _homepage()  # no section to go to: the homepage
    finally:
        help_links.readme_headings.cache_clear()


class _UrlCatcher(QObject):
    def __init__(self) -> None:
        super().__init__()
        self.urls: List[str] = []

    @pyqtSlot(QUrl)
    def open(self, url: QUrl) -> None:  # noqa: A003 (the name QDesktopServices calls)
        self.urls.append(url.toString())


def test_each_help_button_opens_the_algorithms_readme_section(qtbot, provider):
    """Without a help URL the button opened a page of QGIS's own manual built from the provider's ids
    (processing_algs/<provider>/<group>.html), which does not exist for a plugin."""
    from processing.gui.AlgorithmDialog import AlgorithmDialog

    homepage = _homepage()
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    headings = [line.lstrip("#").strip() for line in readme.splitlines() if re.match(r"#{2,4} ", line)]
    catcher = _UrlCatcher()
    QDesktopServices.setUrlHandler("https", catcher, "open")
    try:
        algorithms = QgsApplication.processingRegistry().providerById("rslab").algorithms()
        assert len(algorithms) == 7
        for algorithm in algorithms:
            # checked before the click: QGIS's fallback (QgsHelp's search of its manual) aborts this process
            assert algorithm.helpUrl().startswith(f"{homepage}#"), algorithm.id()
            dialog = AlgorithmDialog(algorithm.create(), parent=None)
            qtbot.addWidget(dialog)
            dialog.show()
            qtbot.mouseClick(dialog.buttonBox().button(QDialogButtonBox.Help), 1)  # Qt.LeftButton
            url = catcher.urls[-1]
            page, _, anchor = url.partition("#")
            assert page == homepage, algorithm.id()
            named = [h for h in headings if f"`{algorithm.id()}`" in h]
            assert named and anchor == help_links.github_anchor(named[0]), (algorithm.id(), url)
            dialog.close()
    finally:
        QDesktopServices.unsetUrlHandler("https")
    assert len(set(catcher.urls)) == 7
    assert f"{homepage}#rslabdetect_anomalies" in catcher.urls


def test_without_a_homepage_qgis_keeps_its_own_fallback(monkeypatch, tmp_path):
    metadata = tmp_path / "metadata.txt"
    metadata.write_text("[general]\nname=RS Lab\nversion=9.9\n", encoding="utf-8")
    from rslab.core import resources

    monkeypatch.setattr(resources, "METADATA", metadata)
    assert help_links.help_url("rslab:detect_anomalies") == ""
    assert resources.metadata_value("version") == "9.9"


def _windows():
    """Each dock and dialog with a Help button, and the start of the README heading it should open."""
    from rslab.ui.anomaly_dock import AnomalyDock
    from rslab.ui.change_dock import ChangeDetectionDock
    from rslab.ui.compression_dock import CompressionDock
    from rslab.ui.diagnostics_dialog import DiagnosticsDialog
    from rslab.ui.export_dialog import ExportDialog
    from rslab.ui.train_change_dialog import TrainChangeDialog

    return [
        (lambda iface: ChangeDetectionDock(iface), "Change detection (AR-CDNet, CVA)"),
        (lambda iface: AnomalyDock(iface), "Hyperspectral anomaly detection (BSDM + RX, RX, local RX)"),
        (lambda iface: CompressionDock(iface), "Model compression (PIC-PQ, GHOST) with BOPs readouts"),
        (lambda iface: TrainChangeDialog(), "`rslab:train_change_detector` and the Train dialog"),
        (lambda iface: ExportDialog(), "Model compression (PIC-PQ, GHOST) with BOPs readouts"),
        (lambda iface: DiagnosticsDialog(), "Python packages inside QGIS"),
    ]


def test_each_dock_and_dialog_help_button_opens_its_readme_section(qtbot, iface):
    """A click on each Help button opens, on the homepage, the anchor GitHub gives the whole heading of the
    README section about that window (the heading is written out here: a renamed one fails this test)."""
    homepage = _homepage()
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    catcher = _UrlCatcher()
    QDesktopServices.setUrlHandler("https", catcher, "open")
    try:
        for make, heading in _windows():
            assert re.search(rf"^#{{2,3}} {re.escape(heading)}$", readme, re.M), heading
            window = make(iface)
            qtbot.addWidget(window)
            window.show()
            button = window.help_button
            assert button.isVisible() and button.text() == "Help" and not button.autoDefault()
            qtbot.mouseClick(button, 1)  # Qt.LeftButton
            assert catcher.urls[-1] == f"{homepage}#{help_links.github_anchor(heading)}", type(window).__name__
            window.close()
    finally:
        QDesktopServices.unsetUrlHandler("https")
    assert len(catcher.urls) == 6


def test_the_rs_lab_help_entry_opens_the_manual_from_both_menus(qtbot, iface):
    import rslab

    catcher = _UrlCatcher()
    QDesktopServices.setUrlHandler("https", catcher, "open")
    plugin = rslab.classFactory(iface)
    plugin.initGui()
    try:
        [in_help_menu] = iface.pluginHelpMenu().actions()
        [in_rslab_menu] = [a for a in plugin.actions if a.text() == "RS Lab Help"]
        assert in_help_menu is in_rslab_menu and not in_help_menu.icon().isNull()
        in_help_menu.trigger()
        assert catcher.urls == [_homepage()]
    finally:
        plugin.unload()
        QDesktopServices.unsetUrlHandler("https")


def test_guide_url_falls_back_to_the_homepage_then_to_the_readme_it_carries(monkeypatch, tmp_path):
    homepage = _homepage()
    assert help_links.guide_url("Diagnostics") == f"{homepage}#diagnostics"
    assert help_links.guide_url("No such section") == homepage  # a section renamed since: the manual's top
    assert help_links.guide_url() == homepage
    from rslab.core import resources

    metadata = tmp_path / "metadata.txt"
    metadata.write_text("[general]\nname=RS Lab\nversion=9.9\n", encoding="utf-8")
    monkeypatch.setattr(resources, "METADATA", metadata)
    assert help_links.guide_url("Diagnostics") == (REPO / "README.md").as_uri()  # offline copy, no homepage
    monkeypatch.setattr(help_links, "README", tmp_path / "absent.md")
    assert help_links.guide_url("Diagnostics") == ""
