#!/usr/bin/env bash
# Installs the optional `tensorflow` backend (@tensorflow/tfjs-node) for tests, without its
# installer (which downloads libtensorflow from outside the npm registry): the package is
# installed with --ignore-scripts and its addon built against the tensorflow-cpu wheel that pip
# can fetch (../shared/tfjs-node/build-from-wheel). Never a dependency of any package.
# Exits 0 with a message when that is impossible here; the tensorflow backend's tests then skip.
set -uo pipefail
cd "$(dirname "$0")/.."
export PIP_RETRIES=${PIP_RETRIES:-1}  # an unreachable default index should not cost minutes of retries
builder=${TFJS_NODE_BUILDER:-../shared/tfjs-node/build-from-wheel}
if [ ! -x "$builder" ]; then
  echo "setup-tfjs-node: $builder not found; the tensorflow backend will be skipped in tests"; exit 0
fi
if ! python3 -m pip download --no-deps --quiet -d "$(mktemp -d)" "tensorflow-cpu==${TF_WHEEL_VERSION:-2.21.0}" >/dev/null 2>&1 \
   && [ ! -f "$HOME/.cache/tfjs-node-tf${TF_WHEEL_VERSION:-2.21.0}/lib/libtensorflow_cc.so.2" ]; then
  echo "setup-tfjs-node: pip cannot fetch the tensorflow-cpu wheel here; the tensorflow backend will be skipped in tests"; exit 0
fi
npm install --no-save --ignore-scripts --no-audit --no-fund @tensorflow/tfjs-node@4.22.0 >/dev/null || {
  echo "setup-tfjs-node: npm could not install @tensorflow/tfjs-node; the tensorflow backend will be skipped"; exit 0; }
if bash "$builder"; then
  echo "setup-tfjs-node: tensorflow backend ready"
else
  echo "setup-tfjs-node: building the addon failed; the tensorflow backend will be skipped in tests"
  npm uninstall --no-save @tensorflow/tfjs-node >/dev/null 2>&1 || true
fi
