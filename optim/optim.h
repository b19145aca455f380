// headroom::optim in one include: optimizers, gradient clipping and learning-rate schedules.
#pragma once

#include "optim/adam.h"
#include "optim/batch_split.h"
#include "optim/checkpoint.h"
#include "optim/clip.h"
#include "optim/grad_scaler.h"
#include "optim/lr_scheduler.h"
#include "optim/offload.h"
#include "optim/optimizer.h"
#include "optim/plan.h"
#include "optim/sgd.h"
#include "optim/zero.h"
