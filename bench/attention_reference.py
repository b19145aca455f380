"""PyTorch's causal attention, forward and backward, beside headroom's attention-bench.

The same shape, FLOP count and columns as bench/attention_bench.cpp, so that the GPU check
prints the two tables one after the other:

  * textbook: matmul, causal mask, softmax, matmul (the T x T scores are held, as headroom's
    textbook form);
  * sdpa: torch.nn.functional.scaled_dot_product_attention (PyTorch 2), whose kernel PyTorch
    picks (flash attention for f16/bf16 on sm_80+); the row says which backends were allowed.

FLOPs: forward 4 B H T^2 D, backward 2.5x that, both halved under the causal mask. Times are
the mean of --iters runs after --warmup, between CUDA events (host time on the CPU); the peak
is torch.cuda.max_memory_allocated over one forward and backward, less what was allocated
before it (not measured on the CPU).

  python3 bench/attention_reference.py                          # cuda, bf16, B=8 H=12 T=1024 D=64
  python3 bench/attention_reference.py --device cpu --dtype f32 --batch 1 --heads 2 --seq 256
"""
import argparse
import math
import sys
import time

DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "f64": "float64"}


def fmt_bytes(n):
    if n is None:
        return "-"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def textbook(torch, q, k, v, causal):
    scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    if causal:
        t = q.shape[-2]
        mask = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    return torch.matmul(torch.softmax(scores.float(), dim=-1).to(q.dtype), v)


def measure(torch, form, fn, args, dtype, device):
    row = dict(form=form, status="ok", fwd_ms=0.0, step_ms=0.0, tflops=0.0, peak=None)
    cuda = device.type == "cuda"
    try:
        torch.manual_seed(1)
        shape = (args.batch, args.heads, args.seq, args.head_dim)
        q, k, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
        dout = torch.randn(shape, device=device, dtype=dtype)

        def step(backward):
            out = fn(q, k, v)
            if backward:
                out.backward(dout)
                q.grad = k.grad = v.grad = None

        for _ in range(args.warmup):
            step(True)
        if cuda:
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            step(True)
            torch.cuda.synchronize(device)
            row["peak"] = torch.cuda.max_memory_allocated(device) - base
        for backward in (False, True):
            if cuda:
                start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(args.iters):
                    step(backward)
                stop.record()
                stop.synchronize()
                ms = start.elapsed_time(stop) / args.iters
            else:
                t0 = time.perf_counter()
                for _ in range(args.iters):
                    step(backward)
                ms = (time.perf_counter() - t0) * 1e3 / args.iters
            row["step_ms" if backward else "fwd_ms"] = ms
        flops = 4.0 * args.batch * args.heads * args.head_dim * args.seq * args.seq * (1.0 if args.full else 0.5)
        row["tflops"] = 3.5 * flops / (row["step_ms"] * 1e-3) / 1e12
    except Exception as e:  # a row that failed, not a crash: the other form still runs
        if cuda and isinstance(e, torch.cuda.OutOfMemoryError):
            row["status"] = "out of memory"
        else:
            row["status"] = f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if cuda:
        torch.cuda.empty_cache()
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--full", action="store_true", help="no causal mask")
    ap.add_argument("--skip-naive", action="store_true", help="leave out the textbook form")
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        print("attention_reference.py: needs torch", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    dtype = getattr(torch, DTYPES[args.dtype])
    causal = not args.full
    rows = []
    if not args.skip_naive:
        rows.append(measure(torch, "textbook", lambda q, k, v: textbook(torch, q, k, v, causal), args, dtype, device))
    sdpa = getattr(torch.nn.functional, "scaled_dot_product_attention", None)
    if sdpa is None:
        rows.append(dict(form="sdpa", status=f"not in torch {torch.__version__}", fwd_ms=0.0, step_ms=0.0,
                         tflops=0.0, peak=None))
    else:
        rows.append(measure(torch, "sdpa (PyTorch's choice)", lambda q, k, v: sdpa(q, k, v, is_causal=causal), args,
                            dtype, device))
    print(f"torch {torch.__version__}: attention B={args.batch} H={args.heads} T={args.seq} D={args.head_dim} "
          f"{args.dtype} {'full' if args.full else 'causal'} on {device}, mean of {args.iters} runs\n")
    print("| form | status | forward | forward + backward | TFLOP/s | peak added |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['form']} | {r['status']} | {r['fwd_ms']:.3f} ms | {r['step_ms']:.3f} ms | {r['tflops']:.3f} | "
              f"{fmt_bytes(r['peak'])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
