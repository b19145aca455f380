#!/usr/bin/env bash
# The main job: set up and build, then train the Fashion-MNIST MLP and print its test accuracy.
# Extra arguments go to the example (e.g. --epochs 2).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec ./build/mlp_fashion_mnist "$@"
