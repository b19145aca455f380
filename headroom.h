// headroom: the whole public API in one include.
#pragma once

#include "autograd/autocast.h"
#include "autograd/autograd_meta.h"
#include "autograd/engine.h"
#include "autograd/functions.h"
#include "autograd/functions/attention.h"
#include "autograd/gradcheck.h"
#include "autograd/grad_mode.h"
#include "engine/device.h"
#include "engine/dtype.h"
#include "engine/error.h"
#include "engine/event.h"
#include "engine/memory.h"
#include "engine/rng.h"
#include "engine/tensor.h"
