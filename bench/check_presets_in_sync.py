#!/usr/bin/env python3
"""Checks that bench/pytorch_reference.py mirrors every preset of headroom-bench (the ctest
bench_presets_in_sync).

Why it exists: --compare lines the two result files up by preset name, so a preset that exists on
one side only, or whose description says something else (another batch, precision or technique),
silently drops out of the comparison or compares different things. The preset table is written
twice (bench/bench_models.cpp and pytorch_reference.py); this test keeps the copies equal.

    check_presets_in_sync.py HEADROOM_BENCH PYTORCH_REFERENCE_PY

It compares, and prints every difference it finds (exit 1), or one line saying they agree (exit 0):
  * the preset lines of both --list outputs (two spaces, the name padded to 40, the description):
    the same presets, the same descriptions, the same order;
  * the group names (headroom-bench's "groups:" section and the script's GROUPS);
  * what each group selects in the script (select_presets) against the rule headroom-bench
    states for it: cpu = the names with "-cpu-", gpu = the others, gpt2-small = the names starting
    "gpt2-small-", all = every preset.
The script runs with `import torch` blocked, so the test also proves that --list works without
PyTorch (as it must on machines without it).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from typing import Dict, List, Tuple

NAME_WIDTH = 40  # kNameWidth in headroom_bench.cpp's print_list, {name:<40} in the script

# Runs the script's main() with `import torch` failing, whether or not torch is installed.
_NO_TORCH = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = [sys.argv[1]] + sys.argv[2:]; "
             "runpy.run_path(sys.argv[0], run_name='__main__')")


def run(cmd: List[str], what: str) -> str:
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SystemExit(f"check_presets_in_sync: cannot run {what}: {e}")
    if proc.returncode != 0:
        raise SystemExit(f"check_presets_in_sync: {what} exited with {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def run_bench_list(bench: str) -> str:
    return run([bench, "--list"], f"{bench} --list")


def run_script_list(script: str) -> str:
    return run([sys.executable, "-c", _NO_TORCH, script, "--list"],
               f"{script} --list with `import torch` blocked (--list must work without PyTorch)")


def bench_list(output: str) -> Tuple[List[str], List[str]]:
    """headroom-bench --list: the preset lines (without their two-space indent) and the group names."""
    presets: List[str] = []
    groups: List[str] = []
    section = ""
    for line in output.splitlines():
        if line.startswith("presets"):
            section = "presets"
        elif line.startswith("groups"):
            section = "groups"
        elif not line.startswith("  "):
            section = ""  # the closing notes
        elif section == "presets":
            presets.append(line[2:])
        elif section == "groups":
            groups.append(line.split()[0])
    if not presets:
        raise SystemExit(f"check_presets_in_sync: no presets in headroom-bench --list output:\n{output}")
    return presets, groups


def script_list(output: str) -> Tuple[List[str], List[str]]:
    """pytorch_reference.py --list: "  name  description" lines, then "groups: a, b, c"."""
    presets: List[str] = []
    groups: List[str] = []
    for line in output.splitlines():
        if line.startswith("groups:"):
            groups = [g.strip() for g in line[len("groups:"):].split(",") if g.strip()]
        elif line.startswith("  "):
            presets.append(line[2:])
    if not presets:
        raise SystemExit(f"check_presets_in_sync: no presets in pytorch_reference.py --list output:\n{output}")
    return presets, groups


def load_script(path: str):
    """The script as a module, with torch blocked (its presets and select_presets need no torch)."""
    saved = sys.modules.get("torch", "absent")
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        spec = importlib.util.spec_from_file_location("pytorch_reference", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["pytorch_reference"] = module  # dataclasses look their module up here
        spec.loader.exec_module(module)
        return module
    finally:
        if saved == "absent":
            del sys.modules["torch"]
        else:
            sys.modules["torch"] = saved


def line_of(name: str, description: str) -> str:
    return f"{name:<{NAME_WIDTH}}{description}"


def check(bench: str, script: str) -> List[str]:
    problems: List[str] = []
    hb_lines, hb_groups = bench_list(run_bench_list(bench))
    py_lines, py_groups = script_list(run_script_list(script))
    ref = load_script(script)
    py_presets = ref.all_presets()
    names = [p.name for p in py_presets]

    # The script's --list prints its table faithfully (so its lines below stand for its presets).
    expected = [line_of(p.name, p.description) for p in py_presets]
    if py_lines != expected:
        problems.append("pytorch_reference.py --list does not print all_presets() as "
                        "'  {name:<40}{description}' lines")
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"pytorch_reference.py defines preset {name} more than once")

    # Every headroom-bench preset has its twin, with the same description; nothing extra.
    by_line: Dict[str, str] = {line_of(p.name, p.description): p.name for p in py_presets}
    matched: List[str] = []
    for hb in hb_lines:
        if hb in by_line:
            matched.append(by_line[hb])
            continue
        # A preset of the same name with another description? (A name of NAME_WIDTH characters or more is
        # glued to its description, so a name is found by the prefix, not by splitting.)
        same_name = [p for p in py_presets if hb.startswith(p.name)
                     and (len(p.name) >= NAME_WIDTH or hb[len(p.name):len(p.name) + 1] == " ")]
        if same_name:
            p = max(same_name, key=lambda q: len(q.name))
            matched.append(p.name)
            problems.append(f"preset {p.name}: descriptions differ\n"
                            f"    headroom-bench:       {hb[max(len(p.name), NAME_WIDTH):]}\n"
                            f"    pytorch_reference.py: {p.description}")
        else:
            problems.append(f"headroom-bench preset missing from pytorch_reference.py: '{hb}'")
    for name in names:
        if name not in matched:
            problems.append(f"pytorch_reference.py preset {name} is not a headroom-bench preset")
    if not problems and matched != names:
        problems.append("the presets are listed in another order:\n    headroom-bench:       "
                        + ", ".join(matched) + "\n    pytorch_reference.py: " + ", ".join(names))

    # The groups: the same names, and the same selections.
    if hb_groups != py_groups or list(ref.GROUPS) != hb_groups:
        problems.append(f"groups differ: headroom-bench has {hb_groups}, pytorch_reference.py --list prints "
                        f"{py_groups} and GROUPS is {list(ref.GROUPS)}")
    rules = {
        "cpu": lambda n: "-cpu-" in n,
        "gpu": lambda n: "-cpu-" not in n,
        "gpt2-small": lambda n: n.startswith("gpt2-small-"),
        "all": lambda n: True,
    }
    for group in hb_groups:
        if group not in rules:
            problems.append(f"headroom-bench group '{group}' is new to this check: add its rule to "
                            f"bench/check_presets_in_sync.py")
            continue
        want = [n for n in matched if rules[group](n)]
        try:
            got = [p.name for p in ref.select_presets([group])]
        except ValueError as e:
            problems.append(f"pytorch_reference.py cannot select group '{group}': {e}")
            continue
        if set(got) != set(want):
            only_py = [n for n in got if n not in want]
            only_hb = [n for n in want if n not in got]
            problems.append(f"group '{group}' selects other presets: only in pytorch_reference.py's: "
                            f"{', '.join(only_py) or '-'}; only in headroom-bench's: {', '.join(only_hb) or '-'}")
        elif got != want and matched == names:
            problems.append(f"group '{group}' selects its presets in another order: {', '.join(got)}")
    return problems


def main(argv: List[str]) -> int:
    if len(argv) != 3:
        print(__doc__.split("\n\n")[2].strip(), file=sys.stderr)
        return 2
    bench, script = argv[1], argv[2]
    for path in (bench, script):
        if not os.path.exists(path):
            print(f"check_presets_in_sync: {path} does not exist", file=sys.stderr)
            return 2
    problems = check(bench, script)
    if problems:
        print(f"headroom-bench ({bench}) and pytorch_reference.py ({script}) disagree on their presets "
              f"(bench/bench_models.cpp is the table to mirror):")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    n = len(bench_list(run_bench_list(bench))[0])
    print(f"headroom-bench and pytorch_reference.py agree: {n} presets (names, descriptions, order) and their groups")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
