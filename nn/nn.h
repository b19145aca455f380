// headroom::nn in one include: Module, the layers, losses, initialisers and state-dict files.
// (The data sets and batch loader are in nn/data/data.h.)
#pragma once

#include "nn/checkpoint.h"
#include "nn/chunked_cross_entropy.h"
#include "nn/distill.h"
#include "nn/init.h"
#include "nn/layers/attention.h"
#include "nn/layers/activation.h"
#include "nn/layers/conv.h"
#include "nn/layers/embedding.h"
#include "nn/layers/gpt.h"
#include "nn/layers/group_norm.h"
#include "nn/layers/linear.h"
#include "nn/layers/norm.h"
#include "nn/layers/pooling.h"
#include "nn/layers/separable.h"
#include "nn/layers/sequential.h"
#include "nn/losses.h"
#include "nn/module.h"
#include "nn/parallel/ddp.h"
#include "nn/prune.h"
#include "nn/serialize.h"
