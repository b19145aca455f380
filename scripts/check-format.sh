#!/usr/bin/env bash
# Checks that every C++ and CUDA source of the project follows .clang-format (the ctest `format`).
#   scripts/check-format.sh           list the files that differ, exit 1 if any does
#   scripts/check-format.sh --fix     rewrite them in place
# Needs clang-format 14 (Debian 12's; scripts/setup.sh installs it): another version may lay out
# a few constructs differently, so the check names the version it ran.
set -euo pipefail
cd "$(dirname "$0")/.."
CLANG_FORMAT=${CLANG_FORMAT:-clang-format}
if ! command -v "$CLANG_FORMAT" >/dev/null; then
  echo "check-format: $CLANG_FORMAT not found (apt-get install clang-format)" >&2
  exit 2
fi
mapfile -t files < <(find headroom.h engine kernels dist autograd nn optim report examples bench tests labs \
                          -type f \( -name '*.h' -o -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' \) 2>/dev/null | sort)
if [ "${1:-}" = "--fix" ]; then
  "$CLANG_FORMAT" -i --style=file "${files[@]}"
  exit 0
fi
bad=()
for f in "${files[@]}"; do
  "$CLANG_FORMAT" --style=file --dry-run --Werror "$f" >/dev/null 2>&1 || bad+=("$f")
done
if [ ${#bad[@]} -gt 0 ]; then
  echo "check-format: ${#bad[@]} of ${#files[@]} files differ from .clang-format ($("$CLANG_FORMAT" --version)):" >&2
  printf '  %s\n' "${bad[@]}" >&2
  echo "run scripts/check-format.sh --fix" >&2
  exit 1
fi
echo "check-format: ${#files[@]} files follow .clang-format"
