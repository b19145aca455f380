// The data layer in one include: Dataset, IDX files, Fashion-MNIST and the batch loader.
#pragma once

#include "nn/data/dataset.h"
#include "nn/data/fashion_mnist.h"
#include "nn/data/idx.h"
#include "nn/data/loader.h"
