#!/usr/bin/env python3
"""Checks that the library's folders include only the layers below them (DESIGN.md "Layers").

Usage: scripts/check-layers.py [ROOT]     check the tree at ROOT (default: this repository)
       scripts/check-layers.py --self-test  check the checker on small fake trees

Every .h/.cpp/.cu/.cuh under a library folder is read for its `#include "..."` lines; an include
that breaks a rule below is printed as `file:line: #include "x": rule` and the exit status is 1.
Python's standard library only, so it runs as a ctest (`layers`) before anything is built.

The rules:
  - layers, lowest first: engine < kernels < dist < autograd < nn < optim < report. A file
    includes its own layer and those below it, never one above;
  - the programs (examples/, bench/, tests/, labs/) and headroom.h, the umbrella header, may
    include anything; library code includes neither;
  - the backends and the transports are independent of each other (the CUDA backend and both
    transports are shared objects of their own, Note [loadable backends] in engine/backend.cpp
    and Note [loadable transports] in dist/process_group.h): kernels/cpu and kernels/cuda do not
    include each other, nor dist/mpi and dist/nccl; the shared parts (files directly in kernels/
    and dist/) include no backend or transport; and kernels/cuda, whose headers need the CUDA
    toolkit's, is included only by itself and by dist/nccl (which links libheadroom_cuda.so).
An exception (EXCEPTIONS below) allows one file one include and says why; one that no longer
matches an include is reported too, so the list cannot outlive its reasons.
"""

import os
import re
import subprocess
import sys
import tempfile

LAYERS = ["engine", "kernels", "dist", "autograd", "nn", "optim", "report"]
PROGRAMS = ["examples", "bench", "tests", "labs"]
UMBRELLA = "headroom.h"
SOURCE_SUFFIXES = (".h", ".cpp", ".cu", ".cuh")
# The backends and the transports: none includes a sibling, and the shared files of their parent
# folder include none of them (what both backends need lives in kernels/, e.g. strided_layout.h).
SEPARATE = {"kernels": ["kernels/cpu", "kernels/cuda"], "dist": ["dist/mpi", "dist/nccl"]}
# Who may include kernels/cuda: its headers include cuda_runtime.h, which a CPU build lacks.
CUDA_INCLUDERS = ["kernels/cuda", "dist/nccl"]

# (including file, included file): why the rule does not apply. Paths from the repository root.
EXCEPTIONS = {
    ("engine/op_table.cpp", "kernels/contract_checks.h"):
        # Note [op table]: each op's contract is checked once, in its entry point in the op
        # table, and the kernels read the sizes that the same checks compute, so both sides
        # share one header. It is plain C++ over engine/ only (the rule below keeps it so).
        "the op table runs the kernels' shared contract checks once, in the op's entry point",
    ("dist/local_group.cpp", "autograd/grad_mode.h"):
        # run_on_groups runs the caller's function on one thread per rank and carries the
        # caller's thread-local state to them (meta scope, op recorder, grad mode); the grad
        # mode is a thread-local flag that autograd owns. grad_mode.h includes nothing.
        "run_on_groups carries the caller's grad mode (a thread-local flag) to its rank threads",
}
# Files that an exception lets a lower layer include, and the folders they may include in turn,
# so that an exception does not become a path to everything above it.
EXCEPTION_TARGETS_INCLUDE_ONLY = {
    "kernels/contract_checks.h": ["engine"],
    "autograd/grad_mode.h": [],
}

INCLUDE_RE = re.compile(r'^\s*#\s*include\s*"([^"]+)"')


def folder_of(path):
    """The library folder or program folder of a repository path, or None (headroom.h, docs)."""
    top = path.split("/", 1)[0]
    return top if "/" in path and (top in LAYERS or top in PROGRAMS) else None


def within(path, folder):
    return path == folder or path.startswith(folder + "/")


def resolve(root, including, name):
    """The included file as a repository path: beside the including file if it is there (the
    compiler's first look for a quoted include), else from the root (the include directory)."""
    beside = os.path.normpath(os.path.join(os.path.dirname(including), name))
    if os.path.isfile(os.path.join(root, beside)):
        return beside.replace(os.sep, "/")
    return os.path.normpath(name).replace(os.sep, "/")


def rule_broken(src, dst):
    """Why `src` may not include `dst` (repository paths), or None if it may."""
    src_folder = folder_of(src)
    if src_folder is None or src_folder in PROGRAMS:
        return None  # headroom.h and the programs use the library as a whole
    dst_folder = folder_of(dst)
    if dst == UMBRELLA:
        return f"library code ({src_folder}/) does not include the umbrella header {UMBRELLA}"
    if dst_folder in PROGRAMS:
        return f"library code ({src_folder}/) does not include the programs ({dst_folder}/)"
    if dst_folder is None:
        return None  # a system header in quotes, or a file outside the layers
    if LAYERS.index(dst_folder) > LAYERS.index(src_folder):
        return (f"{src_folder}/ is below {dst_folder}/ (layers, lowest first: "
                f"{' < '.join(LAYERS)})")
    for parent, parts in SEPARATE.items():
        dst_part = next((p for p in parts if within(dst, p)), None)
        if dst_part is None:
            continue
        src_part = next((p for p in parts if within(src, p)), None)
        if src_part is not None and src_part != dst_part:
            return f"{src_part}/ and {dst_part}/ are independent backends (or transports) and do not include each other"
        if src_part is None and within(src, parent):
            return f"the shared part of {parent}/ includes no backend or transport ({dst_part}/)"
    if within(dst, "kernels/cuda") and not any(within(src, f) for f in CUDA_INCLUDERS):
        return (f"only {' and '.join(f + '/' for f in CUDA_INCLUDERS)} include kernels/cuda/ "
                "(its headers need the CUDA toolkit's)")
    return None


def library_files(root):
    for layer in LAYERS:
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, layer)):
            dirnames.sort()
            for name in sorted(filenames):
                if name.endswith(SOURCE_SUFFIXES):
                    yield os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")


def check(root):
    """The violations in the tree at `root`, as printable lines."""
    problems, used = [], set()
    for path in library_files(root):
        with open(os.path.join(root, path), encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
        for number, line in enumerate(lines, 1):
            m = INCLUDE_RE.match(line)
            if not m:
                continue
            dst = resolve(root, path, m.group(1))
            why = rule_broken(path, dst)
            if why is None and path.split("/", 1)[0] in LAYERS:
                allowed = EXCEPTION_TARGETS_INCLUDE_ONLY.get(path)
                if allowed is not None and folder_of(dst) in LAYERS and folder_of(dst) not in allowed:
                    why = (f"{path} is included from a lower layer by an exception, so it includes "
                           f"only {', '.join(a + '/' for a in allowed) or 'nothing of the library'}")
            if why is None:
                continue
            if (path, dst) in EXCEPTIONS:
                used.add((path, dst))
                continue
            problems.append(f'{path}:{number}: #include "{m.group(1)}": {why}')
    for (src, dst), why in sorted(EXCEPTIONS.items()):
        if (src, dst) not in used and os.path.isdir(os.path.join(root, src.split("/", 1)[0])):
            problems.append(f"{src}: the exception for {dst} ({why}) matches no include any more: "
                            "remove it from scripts/check-layers.py")
    return problems


def main(root):
    if not all(os.path.isdir(os.path.join(root, layer)) for layer in ("engine", "nn")):
        print(f"check-layers: {root} is not a headroom tree (no engine/ or nn/)", file=sys.stderr)
        return 2
    problems = check(root)
    for p in problems:
        print(p)
    if problems:
        print(f"check-layers: {len(problems)} include(s) break the layers (DESIGN.md \"Layers\")")
        return 1
    print(f"check-layers: {sum(1 for _ in library_files(root))} library files include only what their layer may")
    return 0


def self_test():
    """Runs this script on fake trees: a clean one must pass, each broken rule must fail and name
    its file and line. A checker that cannot fail checks nothing."""
    clean = {
        "engine/tensor.h": "#pragma once\n#include <vector>\n",
        "engine/tensor.cpp": '#include "engine/tensor.h"\n#include "shape.h"\n',
        "engine/shape.h": "#pragma once\n",
        "kernels/shared.h": '#include "engine/tensor.h"\n',
        "kernels/cpu/add.cpp": '#include "kernels/shared.h"\n#include "engine/tensor.h"\n',
        "kernels/cuda/add.cu": '#include "kernels/shared.h"\n#include "kernels/cuda/common.cuh"\n',
        "kernels/cuda/common.cuh": "#pragma once\n",
        "dist/group.h": '#include "engine/tensor.h"\n',
        "dist/nccl/nccl.cpp": '#include "dist/group.h"\n#include "kernels/cuda/common.cuh"\n',
        "autograd/node.h": '#include "dist/group.h"\n',
        "nn/module.h": '#include "autograd/node.h"\n// #include "optim/adam.h" is not an include\n',
        "optim/adam.h": '#include "nn/module.h"\n',
        "report/report.h": '#include "optim/adam.h"\n#include "engine/tensor.h"\n',
        "headroom.h": '#include "report/report.h"\n',
        "examples/mlp.cpp": '#include "headroom.h"\n#include "kernels/cuda/common.cuh"\n',
        "tests/engine/t.cpp": '#include "test_util.h"\n#include "optim/adam.h"\n',
    }
    broken = {
        "engine below nn": ("engine/tensor.cpp", '#include "nn/module.h"\n', "engine/ is below nn/"),
        "kernels below report": ("kernels/cpu/add.cpp", '#include "report/report.h"\n', "kernels/ is below report/"),
        "cpu includes cuda": ("kernels/cpu/add.cpp", '#include "kernels/cuda/common.cuh"\n', "do not include each other"),
        "cuda includes cpu": ("kernels/cuda/add.cu", '#include "kernels/cpu/strided.h"\n', "do not include each other"),
        "shared kernels include cpu": ("kernels/shared.h", '#include "kernels/cpu/strided.h"\n', "no backend or transport"),
        "mpi includes nccl": ("dist/mpi/mpi.cpp", '#include "dist/nccl/nccl.h"\n', "do not include each other"),
        "nn includes cuda": ("nn/module.h", '#include "kernels/cuda/common.cuh"\n', "only kernels/cuda/ and dist/nccl/"),
        "library includes a program": ("optim/adam.h", '#include "examples/common.h"\n', "does not include the programs"),
        "library includes headroom.h": ("report/report.h", '#include "headroom.h"\n', "umbrella header"),
        "relative include upwards": ("engine/tensor.cpp", '#include "../nn/module.h"\n', "engine/ is below nn/"),
    }

    def write(root, files):
        for path, text in files.items():
            os.makedirs(os.path.dirname(os.path.join(root, path)) or root, exist_ok=True)
            with open(os.path.join(root, path), "w", encoding="utf-8") as f:
                f.write(text)

    def run(files):
        with tempfile.TemporaryDirectory(prefix="check-layers-") as root:
            write(root, files)
            # Without the real tree's exceptions: they name files the fake tree lacks.
            r = subprocess.run([sys.executable, os.path.abspath(__file__), "--no-exceptions", root],
                               capture_output=True, text=True)
            return r.returncode, r.stdout + r.stderr

    def check_with(files, exceptions, include_only):
        """check() on a fake tree with the given exceptions in place of the real ones."""
        saved = dict(EXCEPTIONS), dict(EXCEPTION_TARGETS_INCLUDE_ONLY)
        EXCEPTIONS.clear(); EXCEPTIONS.update(exceptions)
        EXCEPTION_TARGETS_INCLUDE_ONLY.clear(); EXCEPTION_TARGETS_INCLUDE_ONLY.update(include_only)
        try:
            with tempfile.TemporaryDirectory(prefix="check-layers-") as root:
                write(root, files)
                return check(root)
        finally:
            EXCEPTIONS.clear(); EXCEPTIONS.update(saved[0])
            EXCEPTION_TARGETS_INCLUDE_ONLY.clear(); EXCEPTION_TARGETS_INCLUDE_ONLY.update(saved[1])

    failures = []
    code, out = run(clean)
    if code != 0:
        failures.append(f"the clean tree failed (exit {code}):\n{out}")
    for name, (path, line, expect) in broken.items():
        files = dict(clean)
        files[path] = files.get(path, "") + "// a line before\n" + line
        code, out = run(files)
        where = f"{path}:{files[path].count(chr(10))}:"
        if code != 1 or where not in out or expect not in out:
            failures.append(f"{name}: wanted exit 1 and '{where} ... {expect}', got exit {code}:\n{out}")
    # Exceptions: one allows its include; what it lets down may include only what it lists; one
    # that matches nothing is reported.
    upward = dict(clean)
    upward["engine/tensor.cpp"] += '#include "nn/module.h"\n'
    allowed = {("engine/tensor.cpp", "nn/module.h"): "a test"}
    got = check_with(upward, allowed, {"nn/module.h": ["engine", "autograd"]})
    if got:
        failures.append(f"an exception did not allow its include: {got}")
    got = check_with(upward, allowed, {"nn/module.h": ["engine"]})
    if not any(g.startswith("nn/module.h:1:") and "includes only engine/" in g for g in got):
        failures.append(f"an excepted file's own includes were not limited: {got}")
    got = check_with(clean, allowed, {})
    if not any("matches no include any more" in g for g in got):
        failures.append(f"a stale exception was not reported: {got}")
    for f in failures:
        print(f"check-layers --self-test: {f}")
    if failures:
        return 1
    print(f"check-layers --self-test: the clean tree passes, all {len(broken)} broken trees fail, "
          "and the exceptions allow, limit and go stale as they should")
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    if args == ["--self-test"]:
        sys.exit(self_test())
    if args[:1] == ["--no-exceptions"]:
        EXCEPTIONS.clear()
        EXCEPTION_TARGETS_INCLUDE_ONLY.clear()
        args = args[1:]
    if len(args) > 1 or (args and args[0].startswith("-")):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        sys.exit(2)
    sys.exit(main(args[0] if args else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")))
