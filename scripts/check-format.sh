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
# One clang-format process for every file (one per file was 337 processes and 37 s of the test
# command): it names each differing file in its "file:line:col: error:" lines.
status=0
out=$("$CLANG_FORMAT" --style=file --dry-run --Werror "${files[@]}" 2>&1 >/dev/null) || status=$?
mapfile -t bad < <(printf '%s\n' "$out" | grep -E '^[^ :]+:[0-9]+:[0-9]+: error:' | cut -d: -f1 | sort -u)
if [ "$status" -ne 0 ] && [ ${#bad[@]} -eq 0 ]; then
  echo "check-format: $CLANG_FORMAT failed without naming a file:" >&2
  printf '%s\n' "$out" | tail -5 >&2
  exit 2
fi
if [ ${#bad[@]} -gt 0 ]; then
  echo "check-format: ${#bad[@]} of ${#files[@]} files differ from .clang-format ($("$CLANG_FORMAT" --version)):" >&2
  printf '  %s\n' "${bad[@]}" >&2
  echo "run scripts/check-format.sh --fix" >&2
  exit 1
fi
echo "check-format: ${#files[@]} files follow .clang-format"
