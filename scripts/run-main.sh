#!/usr/bin/env bash
# The main job: set up and build, then the tour (README, "The tour"): the Fashion-MNIST CNN at
# batch 1024 under a 192 MiB memory limit runs out of memory, then batch splitting and mixed
# precision each make it fit; a table of peak memory by category, speed and accuracy comes last.
# Extra arguments are ignored; TOUR_LIMIT, TOUR_EPOCHS and TOUR_F16 tune the tour.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec bash scripts/tour.sh
