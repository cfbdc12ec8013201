#!/usr/bin/env bash
# The training and packing benchmarks on the GPU machine, with Keras on JAX: that machine has
# JAX with CUDA but no TensorFlow and no network, so what else tricklab's trainer imports
# travels with the working tree as wheels, beside the genuine Fashion-MNIST files.
#
#   bench/device.sh bundle   here: fill .device/ (git-ignored) with the wheels and the data
#   bench/device.sh run      there (carry .device): install the wheels, run the benchmarks,
#                            write their output to $OUT (or .device/out)
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=.device
PYTHON_THERE=${PYTHON_THERE:-3.12}  # the device machine's python3
# Not on the device machine, pinned as in pyproject.toml (with their own dependencies).
# The training benchmark's jobs go through the worker's loop: the job store is SQLAlchemy on
# SQLite with its schema's Alembic revisions, and its memory estimate reads tricklab's
# settings (pydantic-settings).
WHEELS=(keras==3.15.1 namex==0.1.0 optree==0.20.0 pydantic==2.14.4 pydantic-core==2.50.5
  annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 pyspng==0.1.4
  sqlalchemy==2.1.9 alembic==1.20.1 mako==1.4.3 markupsafe==3.0.4 pydantic-settings==2.16.3
  python-dotenv==1.2.4)

bundle() {
  local data=${TRICKLAB_DATA_DIR:-../shared/data/fashion-mnist} platform platforms=()
  for platform in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014; do
    platforms+=(--platform "${platform}_x86_64")
  done
  mkdir -p "$BUNDLE/wheels" "$BUNDLE/data/fashion-mnist"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$BUNDLE/wheels" \
    --python-version "$PYTHON_THERE" --implementation cp "${platforms[@]}" "${WHEELS[@]}"
  cp "$data"/*.gz "$BUNDLE/data/fashion-mnist/"
  du -sh "$BUNDLE"
}

run() {
  local out=${OUT:-$BUNDLE/out} status=0
  mkdir -p "$out"
  python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$BUNDLE"/wheels/*.whl
  export PYTHONPATH=/tmp/site KERAS_BACKEND=jax PYTHONUNBUFFERED=1
  export TRICKLAB_DATA_DIR="$PWD/$BUNDLE/data"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
  python3 -c 'import jax, keras; print("jax", jax.__version__, jax.devices(), "keras", keras.__version__)'
  # As modules (python3 -m bench.X), from the repository root: the cd above.
  # Each benchmark runs even if one before it failed; the exit status says whether any did.
  python3 -m bench.train --rounds 2 --epochs 5 2>&1 | tee "$out/train.log" || status=1
  python3 -m bench.pack 2>&1 | tee "$out/pack.log" || status=1
  python3 -m bench.pack --jobs 32 --epochs 2 2>&1 | tee "$out/pack32.log" || status=1
  return $status
}

case ${1:-} in
  bundle | run) "$1" ;;
  *) echo "usage: bench/device.sh bundle|run" >&2; exit 2 ;;
esac
