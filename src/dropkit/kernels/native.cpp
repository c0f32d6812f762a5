// dropkit's native autograd node for CPU dropout (see native.py for how it is built and used).
//
// y = m ⊙ x · scale with m drawn from the Philox4x32-10 stream (seed, offset); backward
// regenerates m from the same four numbers: dL/dx = m · scale ⊙ dL/dy. The node saves those
// numbers only (no tensor), like the Python autograd.Function it stands in for. The element loop
// is not here: it is dropkit's numba kernel, compiled as a C-callable function whose address
// native.py hands over with set_kernels, so the bits are those of every other dropkit path.
//
// Why a C++ node: the autograd engine runs a C++ node without taking the GIL or building Python
// tuples, and apply() skips the Python-side bookkeeping of torch.autograd.Function. For the
// 10^4-element activations of a small MLP that per-call cost is most of dropout's cost.

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <cstdint>

namespace {

using KernelF32 = void (*)(const float*, float*, int64_t, int64_t, uint64_t, uint64_t, int32_t,
                           float);
using KernelF64 = void (*)(const double*, double*, int64_t, int64_t, uint64_t, uint64_t, int32_t,
                           double);

// float16 and bfloat16: their bits as uint16, the scale in float32.
using KernelU16 = void (*)(const uint16_t*, uint16_t*, int64_t, int64_t, uint64_t, uint64_t,
                           int32_t, float);

KernelF32 kernel_f32 = nullptr;
KernelF64 kernel_f64 = nullptr;
KernelU16 kernel_f16 = nullptr;
KernelU16 kernel_bf16 = nullptr;

// The stream's element-wise rule applied to a contiguous copy of `x` (a no-op copy when `x` is
// contiguous already): element k (row-major) keeps iff lane offset + k >= thresh.
at::Tensor apply_stream(const at::Tensor& x, int64_t seed, int64_t offset, int64_t thresh,
                        double scale) {
  TORCH_CHECK(x.device().is_cpu(), "dropkit_native.dropout: x must be a CPU tensor, got ",
              x.device());
  TORCH_CHECK(kernel_f32 != nullptr && kernel_f64 != nullptr && kernel_f16 != nullptr &&
                  kernel_bf16 != nullptr,
              "dropkit_native.dropout: kernels not set (call set_kernels first)");
  TORCH_CHECK(offset >= 0, "dropkit_native.dropout: offset must be >= 0, got ", offset);
  TORCH_CHECK(thresh >= 0 && thresh <= 65536,
              "dropkit_native.dropout: thresh must be in [0, 65536], got ", thresh);
  const at::Tensor src = x.contiguous();
  at::Tensor out = at::empty_like(src, at::MemoryFormat::Contiguous);
  const int64_t n = src.numel();
  if (n == 0) {
    return out;
  }
  // The seed travels as a signed 64-bit integer (the schema's int); its bits are the key.
  const uint64_t key = static_cast<uint64_t>(seed);
  const uint64_t k0 = key & 0xFFFFFFFFull;
  const uint64_t k1 = key >> 32;
  const auto t = static_cast<int32_t>(thresh);
  if (src.scalar_type() == at::kFloat) {
    // torch's opmath for a float tensor times a Python scalar: the scalar rounded to float.
    kernel_f32(src.const_data_ptr<float>(), out.mutable_data_ptr<float>(), n, offset, k0, k1, t,
               static_cast<float>(scale));
  } else if (src.scalar_type() == at::kDouble) {
    kernel_f64(src.const_data_ptr<double>(), out.mutable_data_ptr<double>(), n, offset, k0, k1, t,
               scale);
  } else if (src.scalar_type() == at::kHalf || src.scalar_type() == at::kBFloat16) {
    const KernelU16 kernel = src.scalar_type() == at::kHalf ? kernel_f16 : kernel_bf16;
    kernel(reinterpret_cast<const uint16_t*>(src.const_data_ptr()),
           reinterpret_cast<uint16_t*>(out.mutable_data_ptr()), n, offset, k0, k1, t,
           static_cast<float>(scale));
  } else {
    TORCH_CHECK(false, "dropkit_native.dropout: dtype must be float32, float64, float16 or bfloat16, got ",
                src.scalar_type());
  }
  return out;
}

struct DropoutNode : public torch::autograd::Function<DropoutNode> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            int64_t seed, int64_t offset, int64_t thresh, double scale) {
    ctx->saved_data["seed"] = seed;
    ctx->saved_data["offset"] = offset;
    ctx->saved_data["thresh"] = thresh;
    ctx->saved_data["scale"] = scale;
    return apply_stream(x, seed, offset, thresh, scale);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const at::Tensor& grad = grads[0];
    if (!grad.defined()) {
      return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    }
    // The same node again: with create_graph this records a differentiable node (the op is
    // linear in x, so its backward is itself), otherwise it just runs the kernel.
    at::Tensor grad_x = DropoutNode::apply(grad, ctx->saved_data["seed"].toInt(),
                                           ctx->saved_data["offset"].toInt(),
                                           ctx->saved_data["thresh"].toInt(),
                                           ctx->saved_data["scale"].toDouble());
    return {grad_x, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor dropout(const at::Tensor& x, int64_t seed, int64_t offset, int64_t thresh,
                   double scale) {
  return DropoutNode::apply(x, seed, offset, thresh, scale);
}

// Draws the 64-bit key from torch's default CPU generator exactly as dropkit's Python path does
// (`torch.empty(1, dtype=int64).random_(-2**63, None)`: one random64() taken as the key's bits),
// then applies the node: one dispatcher call per dropout layer instead of two.
at::Tensor dropout_seeded(const at::Tensor& x, int64_t thresh, double scale) {
  uint64_t key = 0;
  {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    key = gen.get<at::CPUGeneratorImpl>()->random64();
  }
  return DropoutNode::apply(x, static_cast<int64_t>(key), 0, thresh, scale);
}

void set_kernels(int64_t f32, int64_t f64, int64_t f16, int64_t bf16) {
  TORCH_CHECK(f32 != 0 && f64 != 0 && f16 != 0 && bf16 != 0,
              "dropkit_native.set_kernels: null kernel address");
  kernel_f32 = reinterpret_cast<KernelF32>(static_cast<intptr_t>(f32));
  kernel_f64 = reinterpret_cast<KernelF64>(static_cast<intptr_t>(f64));
  kernel_f16 = reinterpret_cast<KernelU16>(static_cast<intptr_t>(f16));
  kernel_bf16 = reinterpret_cast<KernelU16>(static_cast<intptr_t>(bf16));
}

}  // namespace

TORCH_LIBRARY(dropkit_native, m) {
  m.def("dropout(Tensor x, int seed, int offset, int thresh, float scale) -> Tensor");
  m.def("dropout_seeded(Tensor x, int thresh, float scale) -> Tensor");
  m.def("set_kernels(int f32, int f64, int f16, int bf16) -> ()");
  m.impl("dropout", c10::DispatchKey::CompositeImplicitAutograd, &dropout);
  m.impl("dropout_seeded", c10::DispatchKey::CompositeImplicitAutograd, &dropout_seeded);
  m.impl("set_kernels", c10::DispatchKey::CompositeImplicitAutograd, &set_kernels);
}
