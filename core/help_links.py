"""Where a Help button leads: an algorithm's, a dock's or a dialog's section of the README on the plugin's
homepage.

With no help URL, QGIS's algorithm dialogs open a page of QGIS's own manual built from the provider and
group ids (processing_algs/<provider>/<group>.html), which does not exist for a plugin's algorithms. The
README is the plugin's manual: each algorithm has a section whose heading names its id (`rslab:<name>`),
with every parameter. The section's anchor is read from the README itself, so a renamed heading cannot
leave a Help button pointing at nothing.
"""
from __future__ import annotations

import functools
import re
from typing import Dict, Tuple

from .resources import README, metadata_value

_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
_NOT_IN_ANCHOR = re.compile(r"[^\w\- ]")  # what GitHub drops from a heading's text to make its anchor


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation (backticks, colons, dashes other
    than '-') dropped, each space a '-' ("`rslab:import_cube` — Import" -> "rslabimport_cube--import")."""
    return _NOT_IN_ANCHOR.sub("", heading.strip().lower()).replace(" ", "-")


@functools.lru_cache(maxsize=1)
def readme_headings() -> Tuple[str, ...]:
    """The README's headings' texts, in order. Fenced code is skipped: a '#' comment in a shell block is not
    a heading. No README (a copy of the plugin without it): none."""
    if not README.is_file():
        return ()
    headings = []
    fenced = False
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else _HEADING.match(line)
        if match is not None:
            headings.append(match.group(1))
    return tuple(headings)


def readme_sections() -> Dict[str, str]:
    """Each algorithm id a README heading names (the first heading that does) -> that heading's anchor."""
    sections: Dict[str, str] = {}
    for heading in readme_headings():
        for algorithm_id in re.findall(r"`(rslab:\w+)`", heading):
            sections.setdefault(algorithm_id, github_anchor(heading))
    return sections


def help_url(algorithm_id: str) -> str:
    """The algorithm's README section on the homepage; the homepage alone when no heading names it, and ''
    when metadata.txt has no homepage (QGIS then falls back to its own manual)."""
    homepage = metadata_value("homepage") or ""
    anchor = readme_sections().get(algorithm_id) if homepage else None
    return f"{homepage}#{anchor}" if anchor else homepage


def guide_url(section: str = "") -> str:
    """Where a dock's or dialog's Help button leads: the first README heading that starts with `section`, on
    the homepage (the homepage alone for "" or when no heading does). With no homepage in metadata.txt, the
    README the plugin carries (a file: URL), or "" without one."""
    homepage = metadata_value("homepage") or ""
    if not homepage:
        return README.as_uri() if README.is_file() else ""
    heading = next((h for h in readme_headings() if section and h.startswith(section)), None)
    return f"{homepage}#{github_anchor(heading)}" if heading else homepage
