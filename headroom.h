// headroom: the engine's public API in one include -- tensors, devices, dtypes, errors, streams,
// the caching allocator with its stats and reports, autograd and autocast. The layers above it
// have their own one-include headers: nn/nn.h (modules, losses, state dicts), nn/data/data.h
// (data sets) and optim/optim.h (optimizers, GradScaler, batch splitting).
//
//   #include "headroom.h"
//   using namespace headroom;
//   caching_allocator(Device::cpu()).set_memory_limit(parse_memory_size("256MiB", "limit"));
//   Tensor loss = cross_entropy(logits, labels);
//   std::cout << format_bytes(caching_allocator(Device::cpu()).stats().allocated_bytes.peak);
//
// tests/engine/headroom_h_test.cpp compiles the README's snippets through this include alone.
#pragma once

#include "autograd/autocast.h"
#include "autograd/autograd_meta.h"
#include "autograd/checkpoint.h"
#include "autograd/engine.h"
#include "autograd/functions.h"
#include "autograd/functions/attention.h"
#include "autograd/gradcheck.h"
#include "autograd/grad_mode.h"
#include "autograd/hooks.h"
#include "autograd/offload.h"
#include "engine/backend.h"            // set_flush_denormal
#include "engine/caching_allocator.h"  // caching_allocator(device).stats(), set_memory_limit, format_bytes
#include "engine/device.h"
#include "engine/dtype.h"
#include "engine/error.h"
#include "engine/event.h"
#include "engine/memory.h"
#include "report/memory_report.h"  // write_memory_report (--memory-report)
#include "engine/rng.h"
#include "engine/shape.h"
#include "engine/tensor.h"
