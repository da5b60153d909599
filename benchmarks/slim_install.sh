#!/usr/bin/env bash
# Size of a core-only install (`pip install bastion`, no extras) in a throwaway venv, side by side
# with the install of another commit (default: the one before the slim-install change).
# Usage: benchmarks/slim_install.sh [OLD_COMMIT]   (run from the repository root; needs PyPI)
set -euo pipefail
old=${1:-e7a94b2}
work=$(mktemp -d)
measure() {  # $1 name, $2 source dir
  python -m venv "$work/$1"
  "$work/$1/bin/pip" install -q "$2" 2>/dev/null
  sp=$("$work/$1/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  total=$(du -sk "$sp" | cut -f1)
  seed=$(cd "$sp" && du -sck pip pip-* setuptools setuptools-* pkg_resources _distutils_hack 2>/dev/null | tail -1 | cut -f1)
  pyc=$(find "$sp" -name __pycache__ -not -path "*/pip/*" -not -path "*/setuptools/*" -not -path "*/pkg_resources/*" \
        -exec du -sk {} + | awk '{s+=$1} END {print s+0}')
  n=$("$work/$1/bin/pip" list 2>/dev/null | tail -n +3 | grep -vcE '^(pip|setuptools) ')
  printf '%-8s site-packages %4d MB; without the venv seed (pip, setuptools) %4d MB; of which __pycache__ %3d MB; %2d distributions\n' \
    "$1" $((total / 1024)) $(((total - seed) / 1024)) $((pyc / 1024)) "$n"
}
git archive "$old" | (mkdir -p "$work/old-src" && tar -x -C "$work/old-src")
measure old "$work/old-src"
measure new "$PWD"
python --version
rm -rf "$work"
