#!/usr/bin/env bash
# Runs on every worker of a TPU VM (launch/tpu.sh calls it through `ssh --worker=all`): installs gandl into
# .venv beside this folder. TPU VM images ship Python 3.10 and setup.py needs 3.11, so uv provides the
# interpreter. jax[tpu] is pinned to the jax version setup.py pins (jax 0.10.2 at the time of writing), so
# jaxlib and libtpu are the builds made for it; reading the version back keeps setup.py the one place to edit.
set -euo pipefail

readonly LIBTPU_INDEX="https://storage.googleapis.com/jax-releases/libtpu_releases.html"

main() {
  cd "$(dirname "$0")/.."
  python3 -m pip install --quiet --user --upgrade uv
  local uv="${HOME}/.local/bin/uv"
  "${uv}" venv --quiet --python 3.11 .venv
  "${uv}" pip install --quiet --python .venv/bin/python -e .
  local jax_version
  jax_version="$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("jax"))')"
  "${uv}" pip install --quiet --python .venv/bin/python --find-links "${LIBTPU_INDEX}" "jax[tpu]==${jax_version}"
  echo "$(hostname): gandl installed with jax[tpu]==${jax_version}"
}

main "$@"
