#!/usr/bin/env bash
# Install everything loralens needs on a fresh Debian 12 / Python 3.11 machine (run as root,
# or with sudo available): espeak-ng for the demo corpus and chromium for the report's browser
# test (Debian packages), and a virtual environment in .venv with the exact versions pinned in
# pyproject.toml (plus the test tools, among them playwright, which drives that chromium).
# Safe to run again: it skips what is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# Debian packages, each only if its command is missing: espeak-ng renders the demo corpus;
# chromium is the browser tests/test_report_browser.py opens the report in (Playwright's own
# browser download is not used).
missing=()
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
    echo "[setup] installing ${missing[*]} (Debian packages)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        -o DPkg::Lock::Timeout=300 "${missing[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || {
    echo "[setup] loralens needs Python 3.11; set PYTHON=/path/to/python3.11" >&2; exit 1; }

stamp=".venv/.loralens-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "[setup] creating .venv and installing pinned packages (a few minutes the first time)"
    [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
    # One pip call, so that torch stays at its pin while the rest resolve around it.
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]" 2>&1 \
        | grep -v "^WARNING: Location" || true
    .venv/bin/python -c "import torch, torchaudio, zarr, snakemake, playwright, workflow_scripts"
    touch "$stamp"
fi
echo "[setup] ready: $(.venv/bin/python -c 'import torch; print("torch", torch.__version__)')"
