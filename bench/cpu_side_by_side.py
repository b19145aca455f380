#!/usr/bin/env python3
"""headroom against PyTorch on this CPU: every cpu preset, both engines, interleaved, at 1 and 2 threads.

    python3 bench/cpu_side_by_side.py --rounds 5                 # the table in bench/RESULTS.md
    python3 bench/cpu_side_by_side.py --short                    # CI: both sides run, nothing timed

For each round, each preset and each thread count it runs headroom-bench and then
pytorch_reference.py (the order flips every round, so neither side always runs on a warmer
machine; a preset's thread counts run back to back, so its 2-against-1 ratio pairs runs made
a few seconds apart), each in a fresh process with the same thread settings: HEADROOM_NUM_THREADS,
OMP_NUM_THREADS and OPENBLAS_NUM_THREADS all set to the count, and torch.set_num_threads to it.
A fresh process per run also makes the resident-memory high-water mark (VmHWM, which both sides
report as peak_rss_bytes) that preset's alone.

What it prints (and writes to --out as side_by_side.md and side_by_side.json):
  * per preset and thread count: each engine's step time (median over rounds of each run's mean
    step), the speed ratio PyTorch time / headroom time (above 1: headroom is faster) as the
    median and the minimum over rounds -- each round's ratio pairs two runs made one after the
    other -- and both processes' peak resident memory;
  * per preset: each engine's speed-up from 1 to 2 threads (median over rounds).
Where Debian's torch 1.13 lacks what a preset uses, pytorch_reference.py runs the closest form it
has and says so (its "closest_form"); presets it does not mirror (several devices in one process)
show headroom's side only, with the reason. Data-parallel presets run under mpirun with 2 ranks of
one thread each (on a 2-core machine that is both cores), reported in the 1-thread table.

Exit status: 0 when every run that should succeed did (--short: when both sides ran every preset
of the short set), 1 otherwise, 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from typing import Any, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))

# --short: one preset of each model family, the step kinds CI must see run on both sides.
SHORT_PRESETS = ["mlp-cpu-f32", "cnn-cpu-f32", "resnet18-cpu-f32", "gpt-tiny-cpu-f32-naive", "gpt-tiny-cpu-bf16-fused"]


def cpuinfo_field(name: str) -> Optional[str]:
    """The first "name : value" line of /proc/cpuinfo (None where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == name:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    return cpuinfo_field("model name") or platform.processor() or "unknown"


def cpu_flags() -> List[str]:
    return (cpuinfo_field("flags") or "").split()


def list_presets(headroom_bench: str) -> List[str]:
    out = subprocess.run([headroom_bench, "--list"], check=True, capture_output=True, text=True).stdout
    names = []
    for line in out.splitlines():
        if not line.startswith("  "):
            continue
        name = line.split()[0]
        if "cpu" in name.split("-") and name != "cpu":
            names.append(name)
    return names


def thread_env(threads: int) -> Dict[str, str]:
    env = dict(os.environ)
    for k in ("HEADROOM_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[k] = str(threads)
    return env


def is_data_parallel(name: str) -> bool:
    return any(part in ("ddp", "zero1", "zero2") for part in name.split("-"))


def run_side(side: str, args, preset: str, threads: int, workdir: str) -> Dict[str, Any]:
    """One preset on one engine in a fresh process; returns its results.json row (or an error row)."""
    out = os.path.join(workdir, f"{side}-{preset}-{threads}")
    shutil.rmtree(out, ignore_errors=True)
    common = ["--preset", preset, "--steps", str(args.steps), "--warmup", str(args.warmup), "--out", out]
    if side == "headroom":
        cmd = [args.headroom_bench] + common
    else:
        cmd = [args.python, args.reference, "--device", "cpu", "--modes", "eager", "--threads", str(threads)] + common
    ranks = 1
    if is_data_parallel(preset):
        ranks = 2
        cmd = [args.mpirun, "--allow-run-as-root", "--oversubscribe", "-np", str(ranks)] + cmd
    try:
        proc = subprocess.run(cmd, env=thread_env(threads), capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return dict(status="error", error=f"timed out after {args.timeout} s", ranks=ranks)
    path = os.path.join(out, "results.json")
    if not os.path.exists(path):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        return dict(status="error", error=f"exit {proc.returncode}, no results.json: {tail[0][:200]}", ranks=ranks)
    with open(path) as f:
        rows = [r for r in json.load(f)["results"] if r["preset"] == preset]
    if not rows:
        return dict(status="error", error="no row for the preset in results.json", ranks=ranks)
    row = rows[0]
    row["ranks"] = ranks
    return row


def fmt_ms(v: Optional[float]) -> str:
    return "-" if v is None else (f"{v:.1f}" if v >= 10 else f"{v:.2f}")


def fmt_mib(v: Optional[float]) -> str:
    return "-" if v is None else f"{v / 2**20:.0f}"


def fmt_ratio(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f}x"


def median(values: List[float]) -> Optional[float]:
    return statistics.median(values) if values else None


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--headroom-bench", default=os.path.join(os.path.dirname(HERE), "build", "bench", "headroom-bench"),
                    help="the headroom-bench binary (default: build/bench/headroom-bench)")
    ap.add_argument("--reference", default=os.path.join(HERE, "pytorch_reference.py"))
    ap.add_argument("--python", default="/usr/bin/python3", help="the python with Debian's torch (default /usr/bin/python3)")
    ap.add_argument("--mpirun", default="mpirun")
    ap.add_argument("--preset", action="append", default=[],
                    help="presets to run (repeat or separate by commas; default: every cpu preset)")
    ap.add_argument("--threads", default="1,2", help="thread counts (default 1,2)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds over every (preset, threads) pair (default 3)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per run (default 10)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before them (default 2)")
    ap.add_argument("--timeout", type=int, default=600, help="seconds one run may take (default 600)")
    ap.add_argument("--out", default="side-by-side-results", help="folder for side_by_side.md and .json")
    ap.add_argument("--short", action="store_true",
                    help="CI: a few presets, 1 thread, 1 round, 1 step; checks only that both sides run")
    args = ap.parse_args(argv)

    if not os.access(args.headroom_bench, os.X_OK):
        print(f"cpu_side_by_side: no headroom-bench at {args.headroom_bench} (build it, or pass --headroom-bench)",
              file=sys.stderr)
        return 2
    try:
        threads = [int(t) for t in args.threads.split(",") if t]
    except ValueError:
        print(f"cpu_side_by_side: --threads {args.threads!r} is not a comma-separated list of counts", file=sys.stderr)
        return 2
    if any(t < 1 for t in threads) or not threads or args.rounds < 1 or args.steps < 1 or args.warmup < 0:
        print("cpu_side_by_side: --threads, --rounds and --steps must be at least 1, --warmup at least 0",
              file=sys.stderr)
        return 2
    every = list_presets(args.headroom_bench)
    wanted = [p for spec in args.preset for p in spec.split(",") if p]
    if args.short:
        wanted = wanted or SHORT_PRESETS
        threads, args.rounds, args.steps, args.warmup = [1], 1, 1, 0
    presets = wanted or every
    unknown = [p for p in presets if p not in every]
    if unknown:
        print(f"cpu_side_by_side: not a cpu preset of headroom-bench: {', '.join(unknown)}", file=sys.stderr)
        return 2

    # runs[(preset, threads, side)] = one row per round
    runs: Dict[Tuple[str, int, str], List[Dict[str, Any]]] = {}
    workdir = tempfile.mkdtemp(prefix="side-by-side-")
    total = args.rounds * len(threads) * len(presets)
    done = 0
    try:
        for rnd in range(args.rounds):
            # Within a round a preset's thread counts run back to back (their order, like the
            # engines', flips every round): the speed of a shared VM drifts by tens of percent
            # from one quarter hour to the next, and the 2-against-1 ratio is only meaningful
            # when both of its runs saw the same machine.
            order = ("headroom", "pytorch") if rnd % 2 == 0 else ("pytorch", "headroom")
            thread_order = threads if rnd % 2 == 0 else list(reversed(threads))
            for p in presets:
                for t in thread_order:
                    done += 1
                    if is_data_parallel(p) and t != 1:
                        continue  # 2 ranks of 1 thread already fill the 2 cores
                    for side in order:
                        row = run_side(side, args, p, t, workdir)
                        runs.setdefault((p, t, side), []).append(row)
                    h, q = runs[(p, t, "headroom")][-1], runs[(p, t, "pytorch")][-1]
                    print(f"[{done}/{total}] round {rnd + 1} {t}t {p}: headroom {h.get('status')} "
                          f"{fmt_ms(h.get('step_time_ms'))} ms, pytorch {q.get('status')} "
                          f"{fmt_ms(q.get('step_time_ms'))} ms", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    # ---- summary ----
    table: List[Dict[str, Any]] = []
    failures: List[str] = []
    for t in threads:
        for p in presets:
            hs, qs = runs.get((p, t, "headroom"), []), runs.get((p, t, "pytorch"), [])
            if not hs:
                continue
            ok_h = [r for r in hs if r.get("status") == "ok"]
            ok_q = [r for r in qs if r.get("status") == "ok"]
            ratios = [q["step_time_ms"] / h["step_time_ms"] for h, q in zip(hs, qs)
                      if h.get("status") == "ok" and q.get("status") == "ok" and h["step_time_ms"] > 0]
            note = ""
            q0 = qs[0] if qs else {}
            if q0.get("status") == "skipped":
                note = q0.get("error", "")
            elif q0.get("status") not in (None, "ok"):
                note = f"pytorch: {q0.get('error', '')}"
            elif q0.get("closest_form"):
                note = f"pytorch runs the closest form: {q0['closest_form']}"
            if hs[0].get("ranks", 1) > 1:
                note = (f"{hs[0]['ranks']} ranks of 1 thread (mpirun); " + note).rstrip("; ")
            if len(ok_h) < len(hs):
                bad = next(r for r in hs if r.get("status") != "ok")
                failures.append(f"{p} at {t} thread(s): headroom {bad.get('status')}: {bad.get('error')}")
            if q0.get("status") not in ("ok", "skipped") and args.short:
                failures.append(f"{p} at {t} thread(s): pytorch {q0.get('status')}: {q0.get('error')}")
            table.append(dict(
                preset=p, threads=t, ranks=hs[0].get("ranks", 1),
                headroom_ms=median([r["step_time_ms"] for r in ok_h]),
                pytorch_ms=median([r["step_time_ms"] for r in ok_q]),
                ratio_median=median(ratios), ratio_min=min(ratios) if ratios else None,
                headroom_peak_rss=median([r["peak_rss_bytes"] for r in ok_h if r.get("peak_rss_bytes") is not None]),
                pytorch_peak_rss=median([r["peak_rss_bytes"] for r in ok_q if r.get("peak_rss_bytes") is not None]),
                headroom_peak_allocated=median([r["peak_allocated_bytes"] for r in ok_h]),
                rounds=len(ratios), note=note))

    scaling: List[Dict[str, Any]] = []
    if 1 in threads and 2 in threads:
        for p in presets:
            row: Dict[str, Any] = dict(preset=p)
            for side in ("headroom", "pytorch"):
                one, two = runs.get((p, 1, side), []), runs.get((p, 2, side), [])
                speedups = [a["step_time_ms"] / b["step_time_ms"] for a, b in zip(one, two)
                            if a.get("status") == "ok" and b.get("status") == "ok" and b["step_time_ms"] > 0]
                row[side] = median(speedups)
                row[side + "_min"] = min(speedups) if speedups else None
            if row["headroom"] is not None:
                scaling.append(row)

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    flags = cpu_flags()
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    torch_version = "-"
    tv = subprocess.run([args.python, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True)
    if tv.returncode == 0:
        torch_version = tv.stdout.strip()
    lines = [
        f"CPU: {cpu_model()}, {os.cpu_count()} logical cores ({', '.join(isa) or 'no AVX2'}); torch {torch_version}; "
        f"{now}; {args.rounds} round(s) of {args.steps} timed steps after {args.warmup} warm-up.",
        "",
        "speed = PyTorch step time / headroom step time (above 1: headroom faster); median and minimum "
        "over rounds. Peak RSS: each process's resident-memory high-water mark over the preset (MiB).",
        "",
        "| preset | threads | headroom ms | PyTorch ms | speed (median) | speed (min) | headroom peak RSS | "
        "PyTorch peak RSS | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in table:
        lines.append(f"| {r['preset']} | {r['threads']} | {fmt_ms(r['headroom_ms'])} | {fmt_ms(r['pytorch_ms'])} | "
                     f"{fmt_ratio(r['ratio_median'])} | {fmt_ratio(r['ratio_min'])} | {fmt_mib(r['headroom_peak_rss'])} | "
                     f"{fmt_mib(r['pytorch_peak_rss'])} | {r['note']} |")
    if scaling:
        lines += ["", "2 threads against 1 (step time at 1 / step time at 2; median, minimum over rounds):", "",
                  "| preset | headroom | headroom (min) | PyTorch | PyTorch (min) |", "|---|---:|---:|---:|---:|"]
        for r in scaling:
            lines.append(f"| {r['preset']} | {fmt_ratio(r['headroom'])} | {fmt_ratio(r['headroom_min'])} | "
                         f"{fmt_ratio(r['pytorch'])} | {fmt_ratio(r['pytorch_min'])} |")
    text = "\n".join(lines)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "side_by_side.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.out, "side_by_side.json"), "w") as f:
        json.dump(dict(cpu=cpu_model(), isa=isa, torch=torch_version, date=now, rounds=args.rounds, steps=args.steps,
                       warmup=args.warmup, table=table, scaling=scaling,
                       runs=[dict(preset=k[0], threads=k[1], side=k[2], rows=v) for k, v in runs.items()]), f, indent=1)
    if failures:
        print("\ncpu_side_by_side: failed runs:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
