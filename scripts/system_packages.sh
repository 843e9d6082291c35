#!/usr/bin/env bash
# Installs the Debian packages RS Lab needs (QGIS with its Python bindings,
# PyQt5, rasterio, scipy, pyqtgraph, pytest-qt, Xvfb) when any is missing.
# As root it runs apt-get; otherwise it prints the exact command and fails.
set -euo pipefail
PACKAGES="qgis python3-qgis python3-pyqt5 python3-rasterio python3-scipy python3-pyqtgraph python3-pytestqt python3-venv python3-h5py python3-pil xvfb"
missing=""
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -z "$missing" ]; then
  exit 0
fi
cmd="apt-get install -y$missing"
if [ "$(id -u)" -ne 0 ]; then
  echo "RS Lab needs these Debian packages:$missing" >&2
  echo "Install them as root, then run make again:" >&2
  echo "  sudo apt-get update && sudo $cmd" >&2
  exit 1
fi
echo "Installing Debian packages:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
$cmd
