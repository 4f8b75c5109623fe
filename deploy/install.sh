#!/bin/sh
# Install angiogate into its own virtual environment: the container image's
# install steps (deploy/Dockerfile runs exactly this), also usable on a host.
# tests/test_deploy.py runs it in a throwaway venv.
#
#   deploy/install.sh [SOURCE]       SOURCE: the project folder or a wheel (default: .)
#
# Environment:
#   ANGIOGATE_VENV         where the venv goes (default /opt/angiogate)
#   ANGIOGATE_VENV_ARGS    extra `python3 -m venv` arguments (the tests pass
#                          --system-site-packages to reuse installed wheels)
#   ANGIOGATE_TORCH_INDEX  a PyTorch wheel index to prefer, e.g.
#                          https://download.pytorch.org/whl/cpu for the CPU-only
#                          build (the image's default: a fraction of the CUDA
#                          build's size; see deploy/README.md)
#   PYTHON                 the interpreter (default python3; 3.11 or newer)
set -eu

source_dir=${1:-.}
venv=${ANGIOGATE_VENV:-/opt/angiogate}
python=${PYTHON:-python3}

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "install.sh: angiogate needs Python 3.11 or newer; $python is $("$python" -V 2>&1)" >&2
    exit 2
fi
# shellcheck disable=SC2086  # the venv arguments are words on purpose
"$python" -m venv ${ANGIOGATE_VENV_ARGS:-} "$venv"
set -- --no-cache-dir --disable-pip-version-check
if [ -n "${ANGIOGATE_TORCH_INDEX:-}" ]; then
    set -- "$@" --extra-index-url "$ANGIOGATE_TORCH_INDEX"
fi
"$venv/bin/python" -m pip install "$@" "$source_dir"
# Fail the install, not the first start, when the package cannot load its config.
"$venv/bin/angiogate" check-config > /dev/null
echo "angiogate installed in $venv ($("$venv/bin/python" -V))"
