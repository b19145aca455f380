// Helpers for the tests: closeness with per-dtype tolerances, f64 random inputs, and error
// messages that must name what went wrong.
#pragma once

#include <gtest/gtest.h>

#include <cmath>

#include <string>

#include "headroom.h"

namespace headroom::testing {

// Tolerances scaled to a dtype's precision (STYLE.md: llm.c's per-dtype tolerances).
double default_atol(DType dtype);
double default_rtol(DType dtype);

// Fails the test with the largest difference and where it is, when a and b differ in shape or
// any element differs by more than atol + rtol * |b|.
::testing::AssertionResult all_close(const Tensor& a, const Tensor& b, double atol = -1, double rtol = -1);

// A random f64 tensor (normal) that requires grad: the usual gradcheck input.
Tensor rand_f64(const Shape& shape, bool requires_grad = true);

// Deterministic i64 token ids in [0, vocab) (the GPT tests' inputs and targets).
Tensor tokens(const Shape& shape, int64_t vocab, uint64_t seed);

// gradcheck as an assertion.
::testing::AssertionResult grad_ok(const std::function<Tensor(const std::vector<Tensor>&)>& fn,
                                   const std::vector<Tensor>& inputs, const GradcheckOptions& options = {});

}  // namespace headroom::testing

// EXPECT_THROW_WITH(statement, ExceptionType, "substring"): the statement throws that type
// and the message contains the substring.
#define EXPECT_THROW_WITH(statement, ExceptionType, substring)                         \
  do {                                                                                 \
    bool hr_thrown_ = false;                                                           \
    try {                                                                              \
      statement;                                                                       \
    } catch (const ExceptionType& hr_error_) {                                         \
      hr_thrown_ = true;                                                               \
      EXPECT_NE(std::string(hr_error_.what()).find(substring), std::string::npos)      \
          << "message \"" << hr_error_.what() << "\" lacks \"" << (substring) << "\""; \
    }                                                                                  \
    EXPECT_TRUE(hr_thrown_) << #statement " did not throw " #ExceptionType;            \
  } while (0)
