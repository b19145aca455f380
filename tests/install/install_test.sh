#!/usr/bin/env bash
# The install as a user sees it (ctest: install_consumer, label cpu): installs the build tree
# into a fresh prefix, then builds tests/install/consumer/ against it twice -- as a CMake
# project (find_package(headroom CONFIG), headroom::headroom) and with g++ and pkg-config's
# flags -- each at -Wall -Wextra -Werror, and runs it. Under mpirun (when this build has the MPI
# transport) the program's dist::init() must load libheadroom_mpi.so from the prefix.
# Usage: install_test.sh BUILD_DIR WORK_DIR CMAKE GENERATOR CXX_COMPILER [MPIEXEC]
# CONSUMER_CXXFLAGS, CONSUMER_LDFLAGS: the build tree's CMAKE_CXX_FLAGS and _EXE_LINKER_FLAGS.
set -euo pipefail
build=$1 work=$2 cmake=$3 generator=$4 cxx=$5 mpiexec=${6:-}
cxxflags=${CONSUMER_CXXFLAGS:-} ldflags=${CONSUMER_LDFLAGS:-}
here="$(cd "$(dirname "$0")" && pwd)"
fail() { echo "install_test: $*" >&2; exit 1; }
# One thread each: ctest runs tests side by side (tests/CMakeLists.txt).
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

rm -rf "$work"
mkdir -p "$work"
prefix="$work/prefix"
"$cmake" --install "$build" --prefix "$prefix" >"$work/install.log" 2>&1 || { cat "$work/install.log"; fail "cmake --install failed"; }

# The layout (Note [installed backends] in CMakeLists.txt): headers under include/headroom/,
# the library and every backend this build made in one folder.
libdir=$(dirname "$(find "$prefix" -name libheadroom.so -print -quit)")
[ -f "$libdir/libheadroom.so" ] || fail "no libheadroom.so under $prefix"
for h in headroom.h engine/tensor.h nn/nn.h optim/optim.h dist/process_group.h; do
  [ -f "$prefix/include/headroom/$h" ] || fail "header $h not installed in $prefix/include/headroom"
done
for backend in "$build"/libheadroom_*.so; do
  [ -e "$backend" ] || continue
  [ -f "$libdir/$(basename "$backend")" ] || fail "$(basename "$backend") was built but not installed beside libheadroom.so"
done
[ -f "$libdir/cmake/headroom/headroomConfig.cmake" ] || fail "no CMake package in $libdir/cmake/headroom"
[ -f "$libdir/pkgconfig/headroom.pc" ] || fail "no headroom.pc in $libdir/pkgconfig"

check_run() {  # program, how it was built
  local out
  out=$("$1") || fail "$2: the consumer failed: $out"
  echo "$out"
  grep -qx "out shape 2 2" <<<"$out" || fail "$2: wrong output shape"
  grep -qx "weight.grad 5 7 9 5 7 9" <<<"$out" || fail "$2: wrong weight gradient"
  grep -qx "bias.grad 2 2" <<<"$out" || fail "$2: wrong bias gradient"
  grep -qx "headroom consumer: ok" <<<"$out" || fail "$2: no 'ok' line"
  # The program must run against the installed library, not the build tree's.
  local loaded
  loaded=$(ldd "$1" | awk '$1 == "libheadroom.so" {print $3}')
  [ -n "$loaded" ] && [ "$(realpath "$loaded")" = "$(realpath "$libdir/libheadroom.so")" ] ||
    fail "$2: loads libheadroom.so from '$loaded', not from $libdir"
}

# 1. CMake: find_package through CMAKE_PREFIX_PATH only.
"$cmake" -S "$here/consumer" -B "$work/cmake-build" -G "$generator" -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_PREFIX_PATH="$prefix" \
      -DCMAKE_CXX_FLAGS="$cxxflags" -DCMAKE_EXE_LINKER_FLAGS="$ldflags" >"$work/configure.log" 2>&1 ||
  { cat "$work/configure.log"; fail "the consumer's CMake configure failed"; }
"$cmake" --build "$work/cmake-build" >"$work/build.log" 2>&1 || { cat "$work/build.log"; fail "the consumer's CMake build failed"; }
check_run "$work/cmake-build/consumer" "find_package"

# 2. pkg-config, then the compiler alone.
export PKG_CONFIG_PATH="$libdir/pkgconfig"
flags=$(pkg-config --cflags --libs headroom) || fail "pkg-config --cflags --libs headroom failed"
echo "pkg-config: $flags"
# shellcheck disable=SC2086  # the flags are words
"$cxx" $cxxflags -Wall -Wextra -Werror -O1 "$here/consumer/consumer.cpp" -o "$work/consumer-pc" $flags $ldflags \
       -Wl,-rpath,"$(pkg-config --variable=libdir headroom)" || fail "g++ with pkg-config's flags failed"
check_run "$work/consumer-pc" "pkg-config"

# 3. A loadable backend from the prefix: dist::init() under mpirun loads libheadroom_mpi.so from
# beside the installed libheadroom.so (the build tree's copy is not on any path it searches).
if [ -n "$mpiexec" ] && [ -f "$libdir/libheadroom_mpi.so" ]; then
  out=$("$mpiexec" --allow-run-as-root --oversubscribe --bind-to none -np 1 "$work/cmake-build/consumer" --dist 2>&1) ||
    fail "mpirun -np 1 consumer --dist failed: $out"
  echo "$out"
  grep -qx "dist world: mpi, size 1" <<<"$out" || fail "the installed MPI transport was not loaded: $out"
fi
echo "install_test: passed"
