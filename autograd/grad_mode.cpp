#include "autograd/grad_mode.h"

namespace headroom {

namespace {
thread_local bool t_grad_enabled = true;
thread_local bool t_inference = false;
}  // namespace

bool GradMode::is_enabled() { return t_grad_enabled; }
void GradMode::set_enabled(bool enabled) { t_grad_enabled = enabled; }
bool GradMode::is_inference() { return t_inference; }
void GradMode::set_inference(bool inference) { t_inference = inference; }

}  // namespace headroom
