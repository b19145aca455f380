#!/usr/bin/env python3
"""PyTorch reference for headroom-bench: the same presets through PyTorch, eager and torch.compile.

Why it exists: headroom's numbers mean something only beside those of the framework people use.
This script builds the models of bench/bench_models.h (same sizes, same initialisation scheme,
same optimizers, same fixed synthetic batch) in PyTorch, times them the same way (CUDA events at
every step boundary after warm-up steps, peak statistics reset before the timed steps), and
writes results.json in headroom-bench's schema (bench/bench_report.h), so that

    python3 bench/pytorch_reference.py --out torch-results            # on the GPU machine
    python3 bench/pytorch_reference.py --compare headroom-results/results.json torch-results/results.json

prints the two side by side with their ratios.

Differences that are on purpose, and recorded in the JSON:
  * precision: by default the f16/bf16 presets run under torch.autocast (mixed precision, as the
    published anchors in DESIGN.md were measured; f16 with a GradScaler): "precision_mode":
    "amp", as headroom's autocast presets; --precision-mode pure casts the whole model
    instead (model.to(dtype)).
  * f32 uses TF32 matmuls (torch's allow_tf32), as the anchors do; --no-tf32 turns it off.
  * "fused" attention is F.scaled_dot_product_attention (flash for f16/bf16); "naive" is the
    textbook softmax(q k^T) v with the [T, T] scores materialised.
  * PyTorch's loss materialises the [B*T, vocab] logits (headroom's GPT uses a chunked loss).
  * PyTorch has no memory categories: "peak_by_category" is empty.
  * -ddp / -ddp-bK / -zero1 / -zero2 presets (data parallelism, nn/parallel/ddp.h) run under the
    same launcher as headroom-bench (mpirun -np N; torchrun works too) with DDP
    (gradient_as_bucket_view, bucket_cap_mb), ZeroRedundancyOptimizer, and FSDP SHARD_GRAD_OP for
    stage 2 (which torch 1.13 runs on GPUs only); gloo on the CPU, NCCL on GPUs. Rank 0 writes.
  * -mbK presets (K micro-batches, gradient accumulation) follow optim/batch_split.h: each
    micro-batch's mean loss weighted by n_i / N, one zero_grad before and one optimizer step
    after. Autocast is entered per micro-batch forward (PyTorch's idiom; backward outside it),
    so weights are cast once per micro-batch, where headroom casts each once per step; and the
    step's loss is summed on the device, where headroom reads each micro-batch's loss on the host.
  * -ckpt-selective presets keep the outputs of mm/addmm, convolution and fused attention and
    recompute the rest (torch 2.4+'s selective activation checkpointing; older torch refuses);
  * -ckpt-block / -ckpt-sqrt presets (recompute checkpointing, nn/checkpoint.h) use
    torch.utils.checkpoint.checkpoint, non-reentrant (use_reentrant=False): GPT per block,
    ResNet-18 per stage (its two BasicBlocks), sqrt as headroom's checkpoint_sequential (round(sqrt(n))
    segments, the first ones one longer when n does not divide, the last not checkpointed;
    torch's checkpoint_sequential makes the last one the longer instead, so it is not used).
    PyTorch's re-run updates BatchNorm's running statistics a second time (headroom's does not);
    the training step's numbers are the same either way, as train mode normalises by the batch.

Needs torch (and a GPU for the reference presets); --compare needs only the standard library.
"""

from __future__ import annotations

import argparse
import dataclasses
import contextlib
import datetime
import gc
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

SCHEMA = 1


# ---- presets (mirror bench/bench_models.cpp) ----
#
# The table below follows build_presets() in bench_models.cpp line for line: the same names, the
# same descriptions (`--list` prints both exactly as headroom-bench does; the ctest
# bench_presets_in_sync compares the two lists), the same order and the same groups.


@dataclass
class Preset:
    name: str
    description: str
    kind: str  # "gpt", "mlp", "resnet18", "timed_stages", "cnn" (the Fashion-MNIST CNN and MobileNet)
    model: str
    batch: int
    precision: str = "f32"  # "f32", or the autocast dtype "f16", "bf16"
    micro_batches: int = 1  # gradient accumulation over this many micro-batches
    checkpoint: str = "none"  # recompute checkpointing: "none", "block" (GPT per block, ResNet per stage), "sqrt", "selective"
    attention: str = ""  # GPT: "naive" or "fused"
    cpu_sized: bool = False
    # Data parallelism (Preset::ddp): the batch is the global one; each of the launcher's N ranks
    # (mpirun -np N / torchrun) runs batch / N of it.
    ddp: bool = False
    zero_stage: int = 0
    bucket_cap_mib: int = 25
    # Several devices in one process (bench_models.h): headroom's pipeline, tensor-parallel and
    # DataParallel presets on cpu:0..N-1. Listed so that the two tables stay one; not run here
    # (not_mirrored says why).
    not_mirrored: str = ""
    inplace_relu: bool = False  # ResNet-18: F.relu(..., inplace=True)
    # Offload (bench_models.h): saved activations through torch.autograd.graph.save_on_cpu
    # (pinned on a GPU; on the CPU it moves nothing); the optimizer's state is not mirrored.
    offload_activations: bool = False
    offload_optimizer: bool = False
    pipeline_stages: int = 1
    schedule: str = "1f1b"
    tensor_parallel: int = 1
    replicas: int = 1
    # GPT
    vocab_size: int = 0
    block_size: int = 0
    n_layer: int = 0
    n_head: int = 0
    n_embd: int = 0
    seq_len: int = 0
    token_range: int = 0
    # MLP
    widths: List[int] = field(default_factory=list)
    # ResNet-18
    base_width: int = 64
    image_size: int = 32
    classes: int = 10
    prune_channels: float = 0.0  # CNN: this fraction of each conv's output channels removed

    def items_per_step(self) -> int:
        return self.batch * self.seq_len if self.kind == "gpt" else self.batch

    def item_unit(self) -> str:
        return "tokens" if self.kind == "gpt" else "rows" if self.kind == "timed_stages" else "images"

    def technique(self) -> str:
        """Preset::technique(): "naive attention" / "fused attention" / "none", then ", K micro-batches",
        then ", checkpoint per block" / ", checkpoint per stage" / ", checkpoint sqrt(n) segments"."""
        t = f"{self.attention} attention" if self.kind == "gpt" else "none"
        if self.pipeline_stages > 1:
            t = ("" if t == "none" else t + ", ") + f"{self.pipeline_stages}-stage pipeline ({self.schedule})"
        if self.tensor_parallel > 1:
            t = ("" if t == "none" else t + ", ") + f"tensor parallel over {self.tensor_parallel} devices"
        if self.replicas > 1:
            t = ("" if t == "none" else t + ", ") + f"DataParallel over {self.replicas} devices"
        if self.micro_batches > 1:
            t = ("" if t == "none" else t + ", ") + f"{self.micro_batches} micro-batches"
        if self.checkpoint != "none":
            unit = "block" if self.kind == "gpt" else "stage"
            ck = ("checkpoint sqrt(n) segments" if self.checkpoint == "sqrt"
                  else f"selective checkpoint per {unit}" if self.checkpoint == "selective"
                  else f"checkpoint per {unit}")
            t = ("" if t == "none" else t + ", ") + ck
        if self.inplace_relu:
            t = ("" if t == "none" else t + ", ") + "ReLU in place"
        if self.offload_activations:
            t = ("" if t == "none" else t + ", ") + "activations offloaded"
        if self.offload_optimizer:
            t = ("" if t == "none" else t + ", ") + "AdamW state offloaded"
        if self.prune_channels > 0:
            t = ("" if t == "none" else t + ", ") + f"{round(self.prune_channels * 100)}% of channels pruned"
        if self.ddp:
            d = (f"ZeRO-{self.zero_stage} over the ranks" if self.zero_stage > 0
                 else f"DDP over the ranks, {self.bucket_cap_mib} MiB buckets")
            t = ("" if t == "none" else t + ", ") + d
        return t


def _precision_words(precision: str) -> str:
    if precision == "f32":
        return "f32"
    return f"{precision} autocast" + (" + loss scaling" if precision == "f16" else "")


def _split_words(k: int) -> str:
    return f", {k} micro-batches" if k > 1 else ""


def _split_suffix(k: int) -> str:
    return f"-mb{k}" if k > 1 else ""


def _ckpt_words(mode: str, unit: str) -> str:
    """`unit`: what mode block checkpoints, "block" (GPT) or "stage" (ResNet-18)."""
    return {"none": "", "block": f", checkpoint per {unit}", "sqrt": ", checkpoint sqrt(n) segments",
            "selective": f", selective checkpoint per {unit}"}[mode]


def _ckpt_suffix(mode: str) -> str:
    return "" if mode == "none" else f"-ckpt-{mode}"


def _gpt2_small(precision: str, attention: str, micro_batches: int = 1, checkpoint: str = "none") -> Preset:
    return Preset(
        name=f"gpt2-small-{precision}-{attention}{_split_suffix(micro_batches)}{_ckpt_suffix(checkpoint)}",
        description=(f"GPT-2 small (124M, 12x768, vocab 50304), B=8 T=1024, {_precision_words(precision)}, "
                     f"{attention} attention{_split_words(micro_batches)}{_ckpt_words(checkpoint, 'block')}, AdamW"),
        kind="gpt", model="gpt2-small", batch=8, precision=precision, micro_batches=micro_batches, checkpoint=checkpoint,
        attention=attention, vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768, seq_len=1024,
        token_range=50257)


def _gpt_tiny(precision: str, attention: str, micro_batches: int = 1, checkpoint: str = "none") -> Preset:
    # Two blocks: sqrt would be one segment, never checkpointed (the last one is kept): block only.
    return Preset(
        name=f"gpt-tiny-cpu-{precision}-{attention}{_split_suffix(micro_batches)}{_ckpt_suffix(checkpoint)}",
        description=(f"small GPT (2x128, 4 heads, vocab 512), B=4 T=128, {_precision_words(precision)}, "
                     f"{attention} attention{_split_words(micro_batches)}{_ckpt_words(checkpoint, 'block')}, AdamW"),
        kind="gpt", model="gpt-tiny", batch=4, precision=precision, micro_batches=micro_batches, attention=attention,
        checkpoint=checkpoint,
        cpu_sized=True, vocab_size=512, block_size=128, n_layer=2, n_head=4, n_embd=128, seq_len=128, token_range=512)


def _mlp(small: bool, precision: str = "f32", micro_batches: int = 1) -> Preset:
    return Preset(
        name=("mlp-cpu-" if small else "mlp-") + precision + _split_suffix(micro_batches),
        description=(("MLP 784-512-512-512-10, batch 256, " if small else "MLP 784-4096-4096-4096-10, batch 4096, ")
                     + _precision_words(precision) + _split_words(micro_batches) + ", SGD momentum"),
        kind="mlp", model="mlp-small" if small else "mlp", batch=256 if small else 4096, precision=precision,
        micro_batches=micro_batches, cpu_sized=small,
        widths=[784, 512, 512, 512, 10] if small else [784, 4096, 4096, 4096, 10])


def _resnet18(small: bool, precision: str = "f32", micro_batches: int = 1, checkpoint: str = "none") -> Preset:
    return Preset(
        name=("resnet18-cpu-" if small else "resnet18-") + precision + _split_suffix(micro_batches)
        + _ckpt_suffix(checkpoint),
        description=(("ResNet-18 at quarter width (16..128 channels), 3x32x32, batch 16, " if small
                      else "ResNet-18 (CIFAR stem, 64..512 channels), 3x32x32, batch 256, ")
                     + _precision_words(precision) + _split_words(micro_batches) + _ckpt_words(checkpoint, "stage")
                     + ", SGD momentum"),
        kind="resnet18", model="resnet18-small" if small else "resnet18", batch=16 if small else 256,
        precision=precision, micro_batches=micro_batches, checkpoint=checkpoint, cpu_sized=small,
        base_width=16 if small else 64)


def _inplace(p: Preset) -> Preset:
    """bench_models.cpp's inplace(): "-inplace", ReLU in place."""
    p.inplace_relu = True
    p.name += "-inplace"
    p.description += ", ReLU in place"
    return p


def _offloaded(p: Preset, activations: bool, optimizer: bool) -> Preset:
    """bench_models.cpp's offloaded(): "-offload" / "-offload-opt" / "-offload-all"."""
    p.offload_activations = activations
    p.offload_optimizer = optimizer
    p.name += "-offload-all" if activations and optimizer else "-offload" if activations else "-offload-opt"
    if activations:
        p.description += ", activations offloaded to the host"
    if optimizer:
        p.description += ", AdamW state on the host"
        p.not_mirrored = ("PyTorch has no optimizer-state offload of its own (DeepSpeed's ZeRO-Offload is "
                          "outside it)")
    return p


def _fashion_cnn(mobilenet: bool, prune_channels: float = 0.0) -> Preset:
    """bench_models.cpp's fashion_cnn(): the CNN, the CNN with channels pruned, the MobileNet-style net."""
    pct = round(prune_channels * 100)
    if mobilenet:
        desc = "MobileNet-style (conv 16, 4 depthwise-separable blocks to 64, global pool), "
    elif prune_channels > 0:
        desc = f"Fashion-MNIST CNN with {pct}% of channels pruned by L1 (8, 16, linear 784-128), "
    else:
        desc = "Fashion-MNIST CNN (conv 16, 32, BatchNorm, linear 1568-128-10), "
    return Preset(
        name=("mobilenet-cpu-f32" if mobilenet else "cnn-cpu-f32") + (f"-prune{pct}" if prune_channels > 0 else ""),
        description=desc + "1x28x28, batch 128, f32, SGD momentum",
        kind="cnn", model="mobilenet-small" if mobilenet else "cnn-small-pruned" if prune_channels > 0 else "cnn-small",
        batch=128, cpu_sized=True, base_width=16, image_size=28, classes=10, prune_channels=prune_channels)


def _data_parallel(p: Preset, zero_stage: int, bucket_cap_mib: int = 25) -> Preset:
    """bench_models.cpp's data_parallel(): "-ddp" / "-ddp-b<MiB>" / "-zero1" / "-zero2"."""
    p.ddp, p.zero_stage, p.bucket_cap_mib = True, zero_stage, bucket_cap_mib
    if zero_stage > 0:
        p.name += f"-zero{zero_stage}"
        p.description += f", ZeRO-{zero_stage} over the ranks"
    else:
        p.name += "-ddp" if bucket_cap_mib == 25 else f"-ddp-b{bucket_cap_mib}"
        p.description += f", DDP over the ranks ({bucket_cap_mib} MiB buckets)"
    return p


_NOT_MIRRORED = ("several devices of one process (headroom's cpu:N devices): PyTorch has no separate cpu "
                 "devices with their own allocators to place stages, shards or replicas on")


def _gpt_deep(stages: int = 1, schedule: str = "1f1b", micro_batches: int = 1, tensor_parallel: int = 1) -> Preset:
    """bench_models.cpp's gpt_deep(): the 4-block GPT whole, in pipeline stages or tensor parallel."""
    name = "gpt-4l-cpu-f32-fused"
    desc = "small GPT (4x128, 4 heads, vocab 512), B=8 T=128, f32, fused attention"
    if stages > 1:
        name += f"-pp{stages}-{schedule}-mb{micro_batches}"
        desc += f", {stages}-stage pipeline ({schedule}) on {stages} devices, {micro_batches} micro-batches"
    if tensor_parallel > 1:
        name += f"-tp{tensor_parallel}"
        desc += f", tensor parallel over {tensor_parallel} devices"
    return Preset(name=name, description=desc + ", AdamW", kind="gpt", model="gpt-4l", batch=8, attention="fused",
                  micro_batches=micro_batches, pipeline_stages=stages, schedule=schedule,
                  tensor_parallel=tensor_parallel, cpu_sized=True, vocab_size=512, block_size=128, n_layer=4, n_head=4, n_embd=128, seq_len=128,
                  token_range=512, not_mirrored=_NOT_MIRRORED if stages > 1 or tensor_parallel > 1 else "")


def _mlp_data_parallel(replicas: int) -> Preset:
    p = _mlp(True)
    p.name += f"-dp{replicas}"
    p.replicas = replicas
    p.description = f"MLP 784-512-512-512-10, batch 256, f32, DataParallel over {replicas} devices, SGD momentum"
    p.not_mirrored = ("nn.DataParallel replicates over GPUs only (on the CPU it runs the module as it is): "
                      + _NOT_MIRRORED)
    return p


def _timed_stages(stages: int, schedule: str, micro_batches: int) -> Preset:
    return Preset(
        name=f"stages-cpu-pp{stages}-{schedule}-mb{micro_batches}",
        description=(f"{stages} stages of fixed cost (Linear 32x32 + a wait of 0.5 ms per row forward, 1 backward), "
                     f"batch 32, f32, {schedule}, {micro_batches} micro-batches, SGD"),
        kind="timed_stages", model="timed-stages", batch=32, micro_batches=micro_batches, cpu_sized=True,
        pipeline_stages=stages, schedule=schedule,
        widths=[32, 32], not_mirrored=_NOT_MIRRORED)


def all_presets() -> List[Preset]:
    """Every preset, GPU-sized ones first, in headroom-bench's --list order."""
    v = [_gpt2_small(p, a) for p in ("f32", "f16", "bf16") for a in ("naive", "fused")]
    v.append(_gpt2_small("f16", "naive", 4))  # DESIGN.md: "4 micro-batches of 2"
    # Checkpointing against gpt2-small-bf16-fused, resnet18-f32 and their small versions.
    v.append(_gpt2_small("bf16", "fused", 1, "block"))
    v.append(_gpt2_small("bf16", "fused", 1, "sqrt"))
    v.append(_gpt2_small("bf16", "fused", 1, "selective"))
    v.append(_offloaded(_gpt2_small("bf16", "fused"), True, False))
    v.append(_offloaded(_gpt2_small("bf16", "fused"), False, True))
    v.append(_mlp(False))
    v.append(_mlp(False, "bf16"))
    v.append(_resnet18(False))
    v.append(_resnet18(False, "bf16"))
    v.append(_resnet18(False, "f32", 4))
    v.append(_resnet18(False, "f32", 1, "block"))
    v.append(_resnet18(False, "f32", 1, "sqrt"))
    v.append(_resnet18(False, "f32", 1, "selective"))
    v.append(_inplace(_resnet18(False)))  # against resnet18-f32
    # Data parallelism: GPT-2 small under DDP and both ZeRO stages; the bucket-size sweep on the MLP.
    v.extend(_data_parallel(_gpt2_small("bf16", "fused"), z) for z in (0, 1, 2))
    for cap in (1, 5, 25, 100):
        m = _data_parallel(_mlp(False), 0, cap)
        if cap == 25:  # the sweep names every size
            m.name += "-b25"
        v.append(m)
    v.append(_gpt_tiny("f32", "naive"))
    v.append(_gpt_tiny("f32", "fused"))
    v.append(_gpt_tiny("f16", "fused"))
    v.append(_gpt_tiny("bf16", "fused"))
    v.append(_gpt_tiny("f32", "naive", 4))
    v.append(_gpt_tiny("f32", "fused", 1, "block"))  # no -ckpt-sqrt: see _gpt_tiny
    v.append(_gpt_tiny("f32", "fused", 1, "selective"))
    v.append(_offloaded(_gpt_tiny("f32", "naive"), True, False))
    v.append(_offloaded(_gpt_tiny("f32", "naive"), False, True))
    v.extend(_data_parallel(_gpt_tiny("f32", "fused"), z) for z in (0, 1, 2))
    v.append(_mlp(True))
    v.append(_mlp(True, "f16"))
    v.append(_mlp(True, "bf16"))
    v.append(_mlp(True, "f32", 4))
    v.append(_resnet18(True))
    v.append(_resnet18(True, "bf16"))
    v.append(_resnet18(True, "f32", 4))
    v.append(_resnet18(True, "f32", 1, "block"))
    v.append(_resnet18(True, "f32", 1, "sqrt"))
    v.append(_resnet18(True, "f32", 1, "selective"))
    v.append(_inplace(_resnet18(True)))  # against resnet18-cpu-f32
    # Smaller models (docs/smaller-models.md): the pruned CNN and the separable net against the CNN.
    v.append(_fashion_cnn(False))
    v.append(_fashion_cnn(False, 0.5))
    v.append(_fashion_cnn(True))
    # Several devices in one process (listed, not run here: Preset.not_mirrored).
    v.append(_gpt_deep())
    v.append(_gpt_deep(2, "1f1b", 4))
    v.append(_gpt_deep(4, "gpipe", 8))
    v.append(_gpt_deep(4, "1f1b", 8))
    v.append(_gpt_deep(1, "1f1b", 1, 2))
    v.append(_gpt_deep(1, "1f1b", 1, 4))
    v.append(_mlp_data_parallel(2))
    v.append(_mlp_data_parallel(4))
    v.extend(_timed_stages(4, "gpipe", m) for m in (1, 4, 16))
    v.extend(_timed_stages(4, "1f1b", m) for m in (4, 16))
    return v


GROUPS = ("cpu", "gpu", "gpt2-small", "all")


def select_presets(names: List[str]) -> List[Preset]:
    out: List[Preset] = []
    for name in names:
        matched = [p for p in all_presets()
                   if p.name == name or name == "all" or (name == "cpu" and p.cpu_sized)
                   or (name == "gpu" and not p.cpu_sized) or (name == "gpt2-small" and p.model == "gpt2-small")]
        if not matched:
            known = ", ".join([p.name for p in all_presets()] + list(GROUPS))
            raise ValueError(f"unknown preset '{name}'; the presets are: {known}")
        for p in matched:
            if all(q.name != p.name for q in out):
                out.append(p)
    return out


# ---- models (PyTorch; built only when torch is present) ----


def build_models(torch):  # noqa: C901 -- one closure over torch keeps the import lazy
    nn = torch.nn
    F = torch.nn.functional
    import inspect
    import torch.utils.checkpoint as tuc
    # Non-reentrant where this torch has it (1.11+): it needs no input that requires grad and it
    # is what PyTorch recommends; older versions have only the reentrant one.
    reentrant_kw = ({"use_reentrant": False} if "use_reentrant" in inspect.signature(tuc.checkpoint).parameters
                    else {})

    def checkpoint(fn, x):
        return tuc.checkpoint(fn, x, **reentrant_kw)

    # Selective (headroom's Note [selective checkpointing]): keep the outputs of the weight
    # matmuls, convolutions and fused attention, recompute the rest -- PyTorch's selective
    # activation checkpointing (torch 2.4+) with a policy over those aten ops.
    def selective_checkpoint(fn, x):
        if not hasattr(tuc, "create_selective_checkpoint_contexts"):
            raise RuntimeError(f"selective checkpointing needs torch 2.4 or later (this is torch {torch.__version__})")
        import functools
        aten = torch.ops.aten
        keep = {aten.mm.default, aten.addmm.default, aten.convolution.default}
        for name in ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
                     "_scaled_dot_product_cudnn_attention"):
            if hasattr(aten, name):
                keep.add(getattr(aten, name).default)

        def policy(ctx, op, *args, **kwargs):
            return tuc.CheckpointPolicy.MUST_SAVE if op in keep else tuc.CheckpointPolicy.PREFER_RECOMPUTE

        ctx = functools.partial(tuc.create_selective_checkpoint_contexts, policy)
        return tuc.checkpoint(fn, x, use_reentrant=False, context_fn=ctx)

    def run_checkpointed(modules, x, mode: str):
        """nn::run_checkpointed: block checkpoints each module; sqrt is headroom's
        checkpoint_sequential (k = round(sqrt(n)) segments, the first n % k one module longer, every
        segment but the last checkpointed); none runs them plainly."""
        modules = list(modules)
        if mode in ("block", "selective"):
            ck = checkpoint if mode == "block" else selective_checkpoint
            for m in modules:
                x = ck(m, x)
            return x
        if mode == "sqrt":
            n = len(modules)
            k = max(1, round(math.sqrt(n)))
            begin = 0
            for s in range(k):
                end = begin + n // k + (1 if s < n % k else 0)
                segment = nn.Sequential(*modules[begin:end])
                x = checkpoint(segment, x) if s + 1 < k else segment(x)
                begin = end
            return x
        for m in modules:
            x = m(x)
        return x

    class CausalSelfAttention(nn.Module):
        def __init__(self, p: Preset):
            super().__init__()
            self.n_head, self.n_embd, self.impl = p.n_head, p.n_embd, p.attention
            self.c_attn = nn.Linear(p.n_embd, 3 * p.n_embd)
            self.c_proj = nn.Linear(p.n_embd, p.n_embd)
            self.register_buffer("mask", torch.tril(torch.ones(p.block_size, p.block_size, dtype=torch.bool)),
                                 persistent=False)

        def forward(self, x):
            b, t, c = x.shape
            q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
            q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
            if self.impl == "fused":
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
                att = att.masked_fill(~self.mask[:t, :t], float("-inf"))
                y = F.softmax(att, dim=-1) @ v
            return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))

    class Block(nn.Module):
        def __init__(self, p: Preset):
            super().__init__()
            self.ln_1 = nn.LayerNorm(p.n_embd)
            self.attn = CausalSelfAttention(p)
            self.ln_2 = nn.LayerNorm(p.n_embd)
            self.c_fc = nn.Linear(p.n_embd, 4 * p.n_embd)
            self.c_proj = nn.Linear(4 * p.n_embd, p.n_embd)

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.c_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self, p: Preset):
            super().__init__()
            self.wte = nn.Embedding(p.vocab_size, p.n_embd)
            self.wpe = nn.Embedding(p.block_size, p.n_embd)
            self.h = nn.ModuleList([Block(p) for _ in range(p.n_layer)])
            self.ln_f = nn.LayerNorm(p.n_embd)
            self.checkpoint = p.checkpoint
            proj_std = 0.02 / math.sqrt(2 * p.n_layer)
            for name, m in self.named_modules():
                if isinstance(m, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(m.weight, 0.0, proj_std if name.endswith("c_proj") else 0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)

        def forward(self, idx, targets):
            t = idx.size(1)
            pos = torch.arange(t, device=idx.device)
            x = self.wte(idx) + self.wpe(pos)
            x = run_checkpointed(self.h, x, self.checkpoint)
            logits = F.linear(self.ln_f(x), self.wte.weight)  # tied lm head
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    class BasicBlock(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, inplace: bool = False):
            super().__init__()
            self.inplace = inplace  # -inplace presets: F.relu(..., inplace=True), as headroom's relu_
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, 0, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = F.relu(self.bn1(self.conv1(x)), inplace=self.inplace)
            y = self.bn2(self.conv2(y))
            return F.relu(y + (self.down(x) if self.down is not None else x), inplace=self.inplace)

    class ResNet18(nn.Module):
        def __init__(self, p: Preset):
            super().__init__()
            w = p.base_width
            self.stem = nn.Sequential(nn.Conv2d(3, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w),
                                      nn.ReLU(inplace=p.inplace_relu))
            blocks, cin = [], w
            for stage in range(4):
                cout = w << stage
                for i in range(2):
                    blocks.append(BasicBlock(cin, cout, 2 if stage > 0 and i == 0 else 1, p.inplace_relu))
                    cin = cout
            self.blocks = nn.Sequential(*blocks)
            # The stages (two blocks each) as checkpointing's blocks; a plain list, so the
            # parameters stay registered once, under `blocks`.
            self.stages = [nn.Sequential(*blocks[2 * i:2 * i + 2]) for i in range(4)]
            self.checkpoint = p.checkpoint
            self.fc = nn.Linear(cin, p.classes)
            self.pool = p.image_size // 8

        def forward(self, x):
            y = run_checkpointed(self.stages, self.stem(x), self.checkpoint)
            return self.fc(F.avg_pool2d(y, self.pool).flatten(1))

    def make_mlp(p: Preset):
        layers: List[Any] = []
        for i in range(len(p.widths) - 1):
            layers.append(nn.Linear(p.widths[i], p.widths[i + 1]))
            if i + 2 < len(p.widths):
                layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    def make_fashion_cnn(p: Preset):
        """bench_models.cpp's make_fashion_model(). The pruned CNN is built at its pruned widths
        (c - floor(f * c) channels a conv): which channels survive does not change memory or time."""
        c = p.base_width
        if p.model == "mobilenet-small":
            def separable(cin: int, cout: int, stride: int):
                return [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(),
                        nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
            layers = [nn.Conv2d(1, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
            for cin, cout, stride in ((c, 2 * c, 2), (2 * c, 2 * c, 1), (2 * c, 4 * c, 2), (4 * c, 4 * c, 1)):
                layers += separable(cin, cout, stride)
            layers += [nn.AvgPool2d(p.image_size // 4), nn.Flatten(), nn.Linear(4 * c, p.classes)]
            return nn.Sequential(*layers)
        c1 = c - int(p.prune_channels * c)
        c2 = 2 * c - int(p.prune_channels * 2 * c)
        side = p.image_size // 4
        return nn.Sequential(
            nn.Conv2d(1, c1, 3, 1, 1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, 1, 1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(c2 * side * side, 128), nn.ReLU(), nn.Linear(128, p.classes))

    return GPT, ResNet18, make_mlp, make_fashion_cnn


# ---- running ----


def _oom_requested(message: str) -> int:
    m = re.search(r"Tried to allocate ([0-9.]+) (B|KiB|MiB|GiB|TiB)", message)
    if not m:
        return 0
    scale = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}[m.group(2)]
    return int(float(m.group(1)) * scale)


def _world(torch, device):
    """The launcher's process group for data-parallel presets (mpirun: OMPI_COMM_WORLD_*; torchrun:
    RANK / WORLD_SIZE), made once: NCCL for cuda, gloo for the CPU. Alone: a world of one."""
    import torch.distributed as tdist
    if not tdist.is_initialized():
        rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("RANK", "0")))
        size = int(os.environ.get("OMPI_COMM_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29511")
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=size)
    return tdist


def _rank() -> int:
    return int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("RANK", "0")))


def _proc_status_bytes(field_name: str) -> Optional[int]:
    """A "Name:   123 kB" field of /proc/self/status in bytes (None where Linux does not tell)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cpu_autocast_takes_f16(torch) -> bool:
    """torch 1.13's CPU autocast refuses float16 (\"AutocastCPU only support Bfloat16\")."""
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            pass
        return True
    except RuntimeError:
        return False


def _reset_peak_rss() -> None:
    """Resets the process's resident-memory high-water mark (VmHWM) to its current size, as
    headroom-bench does per configuration, so each row's peak is its own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def run_preset(torch, models, p: Preset, mode: str, args) -> Dict[str, Any]:
    GPT, ResNet18, make_mlp, make_fashion_cnn = models
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[p.precision]
    amp = p.precision != "f32" and args.precision_mode == "amp"
    description = p.description
    if p.precision != "f32" and not amp:  # --precision-mode pure: say so where the preset says autocast
        description = description.replace(_precision_words(p.precision), f"{p.precision} (whole model cast)")
    row: Dict[str, Any] = dict(
        preset=p.name, framework="pytorch", mode=mode, model=p.model, description=description, batch=p.batch,
        seq_len=p.seq_len, items_per_step=p.items_per_step(), item_unit=p.item_unit(), precision=p.precision,
        precision_mode=("amp" if amp else "pure") if p.precision != "f32" else "pure", technique=p.technique(),
        status="ok", error="", oom_requested_bytes=0, parameters=0,
        # PyTorch keeps no allocator statistics for host memory: null (not measured) on the CPU.
        peak_allocated_bytes=0 if cuda else None, peak_reserved_bytes=0 if cuda else None, peak_by_category={}, step_time_ms=None, step_time_ms_min=None, step_time_ms_max=None,
        items_per_second=None, final_loss=None)
    # Closest forms where this torch lacks what the preset uses (Debian's torch 1.13 on the CPU):
    # recorded in "closest_form" and the tables, never silently.
    closest: List[str] = []
    if p.attention == "fused" and not hasattr(torch.nn.functional, "scaled_dot_product_attention"):
        p = dataclasses.replace(p, attention="naive")
        closest.append("naive attention (this torch has no scaled_dot_product_attention)")
    if not cuda and amp and p.precision == "f16" and not _cpu_autocast_takes_f16(torch):
        dtype = torch.bfloat16
        closest.append("bf16 autocast, no loss scaling (this torch's CPU autocast takes bf16 only)")
    row["closest_form"] = "; ".join(closest)
    state: Dict[str, Any] = {}
    # The previous configuration's tensors are gone once its call returned; return its cached
    # blocks too, so this one's reserved memory is its own, and start its peaks from here (an
    # OOM row then shows how far it got).
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    # The operating system's measure, the same as headroom-bench's start_rss_bytes/peak_rss_bytes
    # (bench_report.h): on the CPU the only peak PyTorch has.
    _reset_peak_rss()
    row["start_rss_bytes"] = _proc_status_bytes("VmRSS")
    row["peak_rss_bytes"] = None
    if p.not_mirrored:
        row.update(status="skipped", error=f"not mirrored: {p.not_mirrored}")
        return row
    try:
        torch.manual_seed(args.seed)
        if p.kind == "gpt":
            model = GPT(p)
        elif p.kind == "mlp":
            model = make_mlp(p)
        elif p.kind == "cnn":
            model = make_fashion_cnn(p)
        else:
            model = ResNet18(p)
        if p.precision != "f32" and not amp:
            model = model.to(dtype)
        model = model.to(device)
        row["parameters"] = sum(t.numel() for t in model.parameters())
        if p.kind == "gpt":
            opt_class, opt_args = torch.optim.AdamW, dict(lr=6e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
            g = torch.Generator().manual_seed(args.seed)
            x = torch.randint(0, p.token_range, (p.batch, p.seq_len), generator=g).to(device)
            y = torch.randint(0, p.token_range, (p.batch, p.seq_len), generator=g).to(device)
        else:
            opt_class, opt_args = torch.optim.SGD, dict(lr=0.01, momentum=0.9)
            shape = ((p.batch, p.widths[0]) if p.kind == "mlp" else (p.batch, 1, p.image_size, p.image_size)
                     if p.kind == "cnn" else (p.batch, 3, p.image_size, p.image_size))
            classes = p.widths[-1] if p.kind == "mlp" else p.classes
            g = torch.Generator().manual_seed(args.seed)
            x = torch.randn(shape, generator=g).to(dtype if not amp else torch.float32).to(device)
            y = torch.randint(0, classes, (p.batch,), generator=g).to(device)
        if p.ddp:
            # headroom's DistributedDataParallel, ZeroRedundancyOptimizer (stage 1) and stage 2 are
            # PyTorch's DDP (gradient_as_bucket_view, as headroom's buckets are the gradients),
            # ZeroRedundancyOptimizer, and FSDP with SHARD_GRAD_OP (parameters kept whole, gradients
            # and optimizer state sharded). Each rank takes its rows of the batch.
            tdist = _world(torch, device)
            size, rank = tdist.get_world_size(), tdist.get_rank()
            if p.batch % size:
                raise ValueError(f"the batch of {p.batch} does not divide among {size} ranks")
            share = p.batch // size
            x, y = x[rank * share:(rank + 1) * share].contiguous(), y[rank * share:(rank + 1) * share].contiguous()
            ids = [device.index or 0] if device.type == "cuda" else None
            if p.zero_stage == 2:
                try:
                    from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy
                except Exception as e:  # torch 1.13's FSDP fails to import on Python 3.11 (dataclass defaults)
                    raise RuntimeError(f"torch {torch.__version__}'s FSDP does not import on Python "
                                       f"{sys.version_info.major}.{sys.version_info.minor}: {e}") from e
                model = FullyShardedDataParallel(model, sharding_strategy=ShardingStrategy.SHARD_GRAD_OP,
                                                 device_id=device if device.type == "cuda" else None)
            else:
                # The causal masks are bool buffers, which gloo cannot broadcast ("Invalid scalar
                # type"); every rank builds the same ones, so DDP may leave them alone.
                bool_buffers = [n for n, b in model.named_buffers() if b.dtype == torch.bool]
                if bool_buffers:
                    torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                        model, bool_buffers)
                model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, bucket_cap_mb=p.bucket_cap_mib,
                                                                  gradient_as_bucket_view=True)
            row["data_parallel"] = dict(world_size=size, zero_stage=p.zero_stage, bucket_cap_mib=p.bucket_cap_mib)
        if p.ddp and p.zero_stage == 1:
            from torch.distributed.optim import ZeroRedundancyOptimizer
            opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=opt_class, **opt_args)
        else:
            opt = opt_class(model.parameters(), **opt_args)
        state.update(model=model, opt=opt, x=x, y=y)
        scaler = None
        if amp and dtype == torch.float16:  # f16 autocast needs loss scaling; bf16 has f32's range
            scaler = torch.amp.GradScaler(device.type) if hasattr(torch.amp, "GradScaler") else torch.cuda.amp.GradScaler()

        def forward_loss(m, xb, yb):
            if p.kind == "gpt":
                return m(xb, yb)
            return torch.nn.functional.cross_entropy(m(xb), yb)

        if mode == "compile" and not hasattr(torch, "compile"):
            raise RuntimeError(f"torch.compile needs PyTorch 2 (this is {torch.__version__})")
        if p.attention == "fused" and not hasattr(torch.nn.functional, "scaled_dot_product_attention"):
            raise RuntimeError(f"fused attention (scaled_dot_product_attention) needs PyTorch 2 (this is {torch.__version__})")
        fwd = torch.compile(forward_loss) if mode == "compile" else forward_loss

        # Micro-batches (optim/batch_split.h): ceil(N / K) samples each, the last smaller, split on
        # dim 0 (for GPT: whole sequences). Micro-batch i (n_i samples) computes its mean loss L_i
        # and backward runs on L_i * n_i / N (unweighted when unsplit, as headroom), so .grad
        # accumulates the whole batch's mean-loss gradient; with f16 the scaler scales each
        # weighted loss by the one scale of the step. Then one optimizer step (for f16 through the
        # scaler: unscale, skip on inf/nan, update the scale). The step's loss is the whole
        # batch's mean: sum(L_i * n_i) / N.
        n = x.size(0)
        mb_size = -(-n // p.micro_batches)
        chunks = list(zip(x.split(mb_size), y.split(mb_size)))

        def step():
            opt.zero_grad(set_to_none=True)  # once per step, before the first micro-batch
            loss_sum = None
            for xb, yb in chunks:
                offload = (torch.autograd.graph.save_on_cpu(pin_memory=cuda) if p.offload_activations
                           else contextlib.nullcontext())
                with torch.autocast(device.type, dtype=dtype) if amp else contextlib.nullcontext(), offload:
                    loss = fwd(model, xb, yb)  # the micro-batch's mean loss; backward outside autocast
                count = xb.size(0)
                weighted = loss if count == n else loss * (count / n)
                if scaler is not None:
                    scaler.scale(weighted).backward()
                else:
                    weighted.backward()
                part = loss.detach().float() if count == n else loss.detach().float() * count
                loss_sum = part if loss_sum is None else loss_sum + part
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            return loss_sum if len(chunks) == 1 else loss_sum / n

        warmup = args.warmup + (args.compile_warmup if mode == "compile" else 0)
        for _ in range(warmup):
            step().item()
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            marks = [torch.cuda.Event(enable_timing=True) for _ in range(args.steps + 1)]
            marks[0].record()
            for i in range(args.steps):
                loss = step()
                marks[i + 1].record()
            marks[-1].synchronize()
            times = [marks[i].elapsed_time(marks[i + 1]) for i in range(args.steps)]
            row["peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
            row["peak_reserved_bytes"] = int(torch.cuda.max_memory_reserved(device))
        else:
            marks = [time.perf_counter()]
            for _ in range(args.steps):
                loss = step()
                marks.append(time.perf_counter())
            times = [1000.0 * (marks[i + 1] - marks[i]) for i in range(args.steps)]
            # PyTorch keeps no allocator statistics for host memory: not measured.
            row["peak_allocated_bytes"] = row["peak_reserved_bytes"] = None
        total_ms = sum(times)
        row.update(step_time_ms=total_ms / args.steps, step_time_ms_min=min(times), step_time_ms_max=max(times),
                   items_per_second=p.items_per_step() * args.steps / (total_ms / 1000.0) if total_ms > 0 else None)
        final = float(loss.item())
        if p.ddp:  # each rank's loss is its share's: the batch's is their mean
            t = torch.tensor([final], dtype=torch.float64, device=device)
            _world(torch, device).all_reduce(t)
            final = float(t.item()) / _world(torch, device).get_world_size()
        row["final_loss"] = final if math.isfinite(final) else None
    except torch.cuda.OutOfMemoryError as e:  # a row, not the end of the run
        row.update(status="oom", error=str(e).splitlines()[0] if str(e) else "out of memory",
                   oom_requested_bytes=_oom_requested(str(e)))
        if cuda:
            row["peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
            row["peak_reserved_bytes"] = int(torch.cuda.max_memory_reserved(device))
    except Exception as e:  # noqa: BLE001 -- a failing configuration (e.g. compile) is reported, others go on
        row.update(status="error", error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    finally:
        row["peak_rss_bytes"] = _proc_status_bytes("VmHWM")
        state.clear()
        if mode == "compile" and hasattr(torch, "_dynamo"):
            torch._dynamo.reset()
    return row


# ---- output ----


def fmt_bytes(n: Optional[float]) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def fmt_rate(v: Optional[float]) -> str:
    if v is None:
        return "-"
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if v >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.3g}"


def _ckpt_base(name: str) -> str:
    """Preset::checkpoint_base(): the name without its -ckpt-block / -ckpt-sqrt suffix, or ""."""
    m = re.fullmatch(r"(.+)-ckpt-(block|sqrt)", name)
    return m.group(1) if m else ""


def checkpoint_overheads(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """bench_report.h's checkpoint_overheads: each -ckpt- row against its base row of the same mode,
    both measured in this run. PyTorch has no activation category, so activation_peak_ratio is
    null, and on the CPU (no allocator statistics) so is peak_allocated_ratio."""
    def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
        return a / b if a is not None and b else None

    out = []
    for r in rows:
        base = _ckpt_base(r["preset"])
        if not base or r["status"] != "ok":
            continue
        b = next((q for q in rows if q["preset"] == base and q["mode"] == r["mode"] and q["status"] == "ok"), None)
        if b is None:
            continue
        out.append(dict(preset=r["preset"], base=base, mode=r["mode"],
                        step_time_ratio=ratio(r["step_time_ms"], b["step_time_ms"]), activation_peak_ratio=None,
                        peak_allocated_ratio=ratio(b["peak_allocated_bytes"], r["peak_allocated_bytes"])))
    return out


def markdown_table(rows: List[Dict[str, Any]]) -> str:
    out = ["| preset | mode | precision | technique | status | peak allocated | peak reserved | step time | items/s | final loss |",
           "|---|---|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        status = r["status"] if r["status"] != "oom" else f"OOM (asked for {fmt_bytes(r['oom_requested_bytes'])})"
        prec = r["precision"] + ("" if r["precision"] == "f32" else f" ({r['precision_mode']})")
        step = "-" if r["step_time_ms"] is None else f"{r['step_time_ms']:.2f} ms"
        ips = "-" if r["items_per_second"] is None else f"{r['items_per_second']:.0f} {r['item_unit']}/s"
        loss = "-" if r["final_loss"] is None else f"{r['final_loss']:.4f}"
        out.append(f"| {r['preset']} | {r['mode']} | {prec} | {r['technique']} | {status} | "
                   f"{fmt_bytes(r['peak_allocated_bytes'])} | {fmt_bytes(r['peak_reserved_bytes'])} | {step} | {ips} | {loss} |")
    pairs = checkpoint_overheads(rows)
    if pairs:
        def x(v: Optional[float]) -> str:
            return "-" if v is None else f"{v:.2f}x"
        out += ["", "Recompute checkpointing against the same preset without it (both from this run):", "",
                "| preset | base | mode | step time ckpt/base | peak allocated base/ckpt |", "|---|---|---|---:|---:|"]
        out += [f"| {o['preset']} | {o['base']} | {o['mode']} | {x(o['step_time_ratio'])} | {x(o['peak_allocated_ratio'])} |"
                for o in pairs]
    for r in rows:
        if r["status"] != "ok":
            out.append(f"\n{r['preset']} ({r['mode']}): {r['error']}")
    return "\n".join(out) + "\n"


# ---- --compare ----


def load_results(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"pytorch_reference.py: cannot read {path}: {e}")
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise SystemExit(f"pytorch_reference.py: {path} is not a headroom-bench results file (no \"results\" list)")
    if data.get("schema") != SCHEMA:
        print(f"warning: {path} has schema {data.get('schema')!r}, this script reads {SCHEMA}", file=sys.stderr)
    return data


def _ratio(a: Optional[float], b: Optional[float]) -> str:
    if a is None or b is None or not b:
        return "-"
    return f"{a / b:.2f}x"


def _ok(r: Optional[Dict[str, Any]]) -> bool:
    return r is not None and r.get("status") == "ok"


def _cell(r: Optional[Dict[str, Any]]) -> str:
    if r is None:
        return "not run"
    if r.get("status") == "oom":
        return "OOM"
    if r.get("status") != "ok":
        return "error"
    return f"{fmt_rate(r.get('items_per_second'))}/s, {fmt_bytes(r.get('peak_allocated_bytes'))}"


def compare(path_a: str, path_b: str) -> str:
    """A (headroom) against B (PyTorch): B's rows matched by preset, one column group per B mode."""
    a, b = load_results(path_a), load_results(path_b)
    name_a, name_b = a.get("framework", "A"), b.get("framework", "B")
    modes_b: List[str] = []
    for r in b["results"]:
        if r.get("mode", "eager") not in modes_b:
            modes_b.append(r.get("mode", "eager"))
    by_b = {(r["preset"], r.get("mode", "eager")): r for r in b["results"]}
    lines = [f"{name_a}: {path_a} ({a.get('device_name', a.get('device', '?'))}, {a.get('date', '?')})",
             f"{name_b}: {path_b} ({b.get('device_name', b.get('device', '?'))}, {b.get('date', '?')})",
             f"ratios are {name_a} / {name_b}: items/s above 1 = {name_a} faster; peak memory below 1 = {name_a} smaller",
             ""]
    if a.get("device_name") != b.get("device_name"):
        lines.insert(2, "warning: the two files come from different devices; the ratios compare machines too")
    header = f"| preset | {name_a} items/s, peak |"
    rule = "|---|---|"
    for m in modes_b:
        header += f" {name_b} {m} items/s, peak | items/s ratio | peak alloc ratio | peak reserved ratio |"
        rule += "---|---:|---:|---:|"
    lines += [header, rule]
    notes = []
    matched = 0
    for ra in a["results"]:
        rbs = [by_b.get((ra["preset"], m)) for m in modes_b]
        if all(rb is None for rb in rbs):
            continue
        matched += 1
        line = f"| {ra['preset']} | {_cell(ra)} |"
        for rb in rbs:
            both = _ok(ra) and _ok(rb)
            line += (f" {_cell(rb)} | {_ratio(ra.get('items_per_second'), rb.get('items_per_second')) if both else '-'} |"
                     f" {_ratio(ra.get('peak_allocated_bytes'), rb.get('peak_allocated_bytes')) if both else '-'} |"
                     f" {_ratio(ra.get('peak_reserved_bytes'), rb.get('peak_reserved_bytes')) if both else '-'} |")
            if rb is not None and ra.get("precision_mode") != rb.get("precision_mode"):
                notes.append(f"{ra['preset']}: {name_a} precision is {ra.get('precision_mode')}, "
                             f"{name_b} {rb.get('mode')} is {rb.get('precision_mode')}")
        lines.append(line)
    if matched == 0:
        lines.append("(no preset appears in both files)")
    unmatched = [r["preset"] for r in b["results"] if all(r["preset"] != ra["preset"] for ra in a["results"])]
    if unmatched:
        notes.append(f"only in {path_b}: " + ", ".join(sorted(set(unmatched))))
    if notes:
        lines += ["", "notes:"] + [f"  {n}" for n in dict.fromkeys(notes)]
    return "\n".join(lines) + "\n"


# ---- main ----


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--list", action="store_true", help="print the presets and exit")
    ap.add_argument("--preset", action="append", default=[],
                    help="preset or group (cpu, gpu, gpt2-small, all); repeat or separate by commas (default: gpu)")
    ap.add_argument("--modes", default="eager,compile", help="eager, compile or both (default: eager,compile)")
    ap.add_argument("--compile-presets", default="",
                    help="run compile mode only for these presets or groups (comma-separated; default: all selected), "
                         "since each compilation takes a minute")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per configuration (default 10)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before them (default 2)")
    ap.add_argument("--compile-warmup", type=int, default=2,
                    help="extra untimed steps for torch.compile, whose first steps compile (default 2)")
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    ap.add_argument("--precision-mode", choices=("amp", "pure"), default="amp",
                    help="f16/bf16 as autocast (amp, default) or the whole model cast (pure)")
    ap.add_argument("--no-tf32", action="store_true", help="f32 matmuls in full f32 (default: TF32 allowed)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0,
                    help="CPU threads for torch (default: HEADROOM_NUM_THREADS, OMP_NUM_THREADS or every core)")
    ap.add_argument("--out", default="torch-results", help="folder for results.json and results.md")
    ap.add_argument("--compare", nargs=2, metavar=("HEADROOM_JSON", "TORCH_JSON"),
                    help="print two results.json files side by side with ratios, and exit")
    args = ap.parse_args(argv)

    if args.compare:
        print(compare(*args.compare), end="")
        return 0
    if args.list:
        for p in all_presets():
            print(f"  {p.name:<40}{p.description}")  # headroom-bench's kNameWidth
        print("groups: " + ", ".join(GROUPS))
        return 0
    names = [n for arg in (args.preset or ["gpu"]) for n in arg.split(",") if n]
    try:
        presets = select_presets(names)
    except ValueError as e:
        print(f"pytorch_reference.py: {e}", file=sys.stderr)
        return 2
    modes = [m for m in args.modes.split(",") if m]
    if not modes or any(m not in ("eager", "compile") for m in modes):
        print("pytorch_reference.py: --modes takes eager, compile or eager,compile", file=sys.stderr)
        return 2
    if args.steps < 1 or args.warmup < 0:
        print("pytorch_reference.py: --steps must be >= 1 and --warmup >= 0", file=sys.stderr)
        return 2
    compile_only = None
    if args.compile_presets:
        try:
            compile_only = {p.name for p in select_presets([n for n in args.compile_presets.split(",") if n])}
        except ValueError as e:
            print(f"pytorch_reference.py: --compile-presets: {e}", file=sys.stderr)
            return 2

    try:
        import torch
    except ImportError:
        print("pytorch_reference.py: PyTorch is not installed (pip install torch); --compare works without it",
              file=sys.stderr)
        return 1
    device = torch.device(args.device)
    if device.type == "cpu":
        # As many threads as headroom's kernels use (HEADROOM_NUM_THREADS, else OMP_NUM_THREADS,
        # else every core), so a CPU comparison is like for like; some builds default to 1.
        threads = args.threads or int(os.environ.get("HEADROOM_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
                                      or os.cpu_count() or 1)
        torch.set_num_threads(threads)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"pytorch_reference.py: {args.device} is not available (no GPU or no CUDA build of torch)",
              file=sys.stderr)
        return 1
    torch.backends.cuda.matmul.allow_tf32 = not args.no_tf32
    torch.backends.cudnn.allow_tf32 = not args.no_tf32
    models = build_models(torch)

    rows = []
    for i, p in enumerate(presets):
        for mode in modes:
            if mode == "compile" and compile_only is not None and p.name not in compile_only:
                continue
            print(f"[{i + 1}/{len(presets)}] {p.name} ({mode}): {p.description}", file=sys.stderr, flush=True)
            t0 = time.time()
            r = run_preset(torch, models, p, mode, args)
            if r["status"] == "ok":
                print(f"  peak allocated {fmt_bytes(r['peak_allocated_bytes'])}, reserved "
                      f"{fmt_bytes(r['peak_reserved_bytes'])}, {r['step_time_ms']:.2f} ms/step, "
                      f"{r['items_per_second']:.0f} {r['item_unit']}/s ({time.time() - t0:.1f} s)",
                      file=sys.stderr, flush=True)
            else:
                print(f"  {r['status']}: {r['error']}", file=sys.stderr, flush=True)
            rows.append(r)

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        total = torch.cuda.get_device_properties(device).total_memory
        device_name = f"{name}, {total >> 20} MiB"
    else:
        device_name = f"cpu, {torch.get_num_threads()} threads"
    doc = dict(schema=SCHEMA, framework="pytorch", torch_version=torch.__version__, device=str(device),
               device_name=device_name,
               date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
               steps=args.steps, warmup_steps=args.warmup, tf32=not args.no_tf32, results=rows,
               checkpoint_overhead=checkpoint_overheads(rows))
    if _rank() != 0:  # data-parallel presets under a launcher: rank 0 reports
        return 1 if any(r["status"] == "error" for r in rows) else 0
    table = markdown_table(rows)
    print(table, end="")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as f:
        f.write(table)
    print(f"wrote {os.path.join(args.out, 'results.json')} and results.md", file=sys.stderr)
    return 1 if any(r["status"] == "error" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
