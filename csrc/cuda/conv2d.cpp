// CUDA hosts of conv2d_fwd, conv2d_fused_fwd and the three backward ops. They validate, pick the
// kernel path (tensor cores need NHWC input and KRSC weight; the direct paths read any strides),
// make the layout that path needs, allocate the output in the format torch would give, and launch
// on the current stream. No host synchronization: everything here is capturable in a CUDA graph.
#include <vector>

#include "host.h"

namespace fastconv {
namespace cuda {
namespace {

constexpr auto kCL = at::MemoryFormat::ChannelsLast;

struct ConvArgs {
  int64_t N, C, H, W, K, Cg, R, S, P, Q, groups;
  int64_t sh, sw, pt, pb, pl, pr, dh, dw;
};

// The sizes of a call, validated by the CPU host's own checks (conv_geom in torch_utils.h).
ConvArgs conv_args(at::IntArrayRef in, at::IntArrayRef wt, at::IntArrayRef stride, at::IntArrayRef padding,
                   at::IntArrayRef dilation, int64_t groups) {
  const ConvGeom g = conv_geom(in, wt, stride, padding, dilation, groups);
  ConvArgs a;
  a.N = in[0]; a.C = in[1]; a.H = in[2]; a.W = in[3];
  a.K = wt[0]; a.Cg = wt[1]; a.R = wt[2]; a.S = wt[3];
  a.groups = groups;
  a.sh = stride[0]; a.sw = stride[1];
  a.pt = padding[0]; a.pb = padding[1]; a.pl = padding[2]; a.pr = padding[3];
  a.dh = dilation[0]; a.dw = dilation[1];
  a.P = g.P; a.Q = g.Q;
  return a;
}

Conv2dParams params(const ConvArgs& a, const at::Tensor& x, const at::Tensor& w, const at::Tensor& y) {
  Conv2dParams p;
  p.x = tensor4(x); p.w = tensor4(w); p.y = tensor4(y);
  p.groups = a.groups;
  p.stride_h = a.sh; p.stride_w = a.sw;
  p.pad_h0 = a.pt; p.pad_w0 = a.pl;
  p.dil_h = a.dh; p.dil_w = a.dw;
  return p;
}

bool tf32_allowed() { return at::globalContext().allowTF32CuDNN(); }

// Channel multiple the tensor-core path needs for this dtype (0: no tensor-core path).
int64_t tc_multiple(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf:
    case at::kBFloat16: return 8;
    case at::kFloat: return tf32_allowed() || conv2d_wgmma_ok() ? 4 : 0;  // TF32, or float32 as split TF32
    default: return 0;
  }
}

const void* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

at::Tensor vec1(const std::optional<at::Tensor>& t, const char* name, const at::Tensor& ref, int64_t K) {
  if (!t || !t->defined()) return at::Tensor();
  check_input(*t, name, ref, "input");
  TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == K, "fastconv: '", name, "' must have shape (", K, "), got ",
                    t->sizes());
  return t->contiguous();
}

at::Tensor conv2d_fused_fwd_cuda(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                 at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                 const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift,
                                 const std::optional<at::Tensor>& residual, int64_t combine, bool relu, int64_t mode,
                                 double eps) {
  check_4d(input, "input");
  check_4d(weight, "weight");
  check_float(input, "input");
  TORCH_CHECK(input.is_cuda(), "fastconv: 'input' must be a CUDA tensor, got ", input.device());
  check_input(weight, "weight", input, "input");
  const ConvArgs a = conv_args(input.sizes(), weight.sizes(), stride, padding, dilation, groups);
  const at::Tensor b = vec1(bias, "bias", input, a.K), sc = vec1(scale, "scale", input, a.K),
                   sf = vec1(shift, "shift", input, a.K);
  TORCH_CHECK_VALUE(combine >= 0 && combine <= 2, "fastconv: 'combine' must be 0 (none), 1 (add) or 2 (sort), got ", combine);
  TORCH_CHECK_VALUE(mode == 0 || mode == 1, "fastconv: 'mode' must be 0 (sqrt) or 1 (product), got ", mode);
  TORCH_CHECK_VALUE(!combine || (residual && residual->defined()), "fastconv: combine=", combine, " needs a 'residual'");
  c10::cuda::CUDAGuard guard(input.device());

  const auto fmt = (is_channels_last(input) || is_channels_last(weight)) ? kCL : at::MemoryFormat::Contiguous;
  at::Tensor y = empty4({a.N, a.K, a.P, a.Q}, input.options(), fmt);
  at::Tensor res;
  if (combine) {
    check_input(*residual, "residual", input, "input");
    TORCH_CHECK_VALUE(residual->sizes() == y.sizes(), "fastconv: 'residual' must have the output's shape ", y.sizes(),
                      ", got ", residual->sizes());
    res = dense(*residual, fmt);  // the epilogue reads it with the output's strides
  }
  if (y.numel() == 0) return y;

  EpilogueArgs ep;
  ep.bias = ptr_or_null(b); ep.scale = ptr_or_null(sc); ep.shift = ptr_or_null(sf);
  ep.residual = combine ? res.data_ptr() : nullptr;
  ep.combine = static_cast<int>(combine); ep.mode = static_cast<int>(mode); ep.eps = eps; ep.relu = relu;

  const DType dt = dtype_of(input);
  const int64_t mult = tc_multiple(input);
  at::Tensor x, w;
  if (mult && a.groups == 1 && a.C > 1 && a.C % mult) {
    // Few input channels (RGB first layers): zero-pad C to the vector width and run on tensor cores;
    // the padded taps multiply zeros, and the extra input pass is small next to the conv.
    const int64_t Cp = (a.C + mult - 1) / mult * mult;
    // at::zeros ignores the options' memory format: allocate channels_last, then clear.
    x = at::empty({a.N, Cp, a.H, a.W}, input.options(), kCL).zero_();
    x.narrow(1, 0, a.C).copy_(input);
    w = at::empty({a.K, Cp, a.R, a.S}, weight.options(), kCL).zero_();
    w.narrow(1, 0, a.C).copy_(weight);
  } else {
    Conv2dParams probe = params(a, input, weight, y);
    if (conv2d_fwd_path(probe, dt, tf32_allowed()) == ConvPath::kTensorCore) {
      x = dense(input, kCL);
      w = dense(weight, kCL);
    } else {
      x = as_layout(input, fmt);  // direct kernels read any strides; match the output for coalescing
      w = weight;
    }
  }
  const Conv2dParams p = params(a, x, w, y);
  // The tensor-core kernel reads x and w as dense NHWC / KRSC, whatever their strides say.
  TORCH_INTERNAL_ASSERT(conv2d_fwd_path(p, dt, tf32_allowed()) != ConvPath::kTensorCore ||
                            (nhwc_dense(p.x) && nhwc_dense(p.w)),
                        "fastconv: tensor-core conv2d operands are not dense channels_last");
  conv2d_fwd(p, dt, x.data_ptr(), w.data_ptr(), y.data_ptr(), ep, tf32_allowed(), sm_count(), stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

at::Tensor conv2d_fwd_cuda(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  return conv2d_fused_fwd_cuda(input, weight, bias, stride, padding, dilation, groups, std::nullopt, std::nullopt,
                               std::nullopt, 0, false, 0, 0.0);
}

void check_grad_out(const at::Tensor& g, const ConvArgs& a) {
  TORCH_CHECK_VALUE(g.size(0) == a.N && g.size(1) == a.K && g.size(2) == a.P && g.size(3) == a.Q, "fastconv: 'grad_out' ",
                    g.sizes(), " does not match the convolution output (", a.N, ", ", a.K, ", ", a.P, ", ", a.Q, ")");
}

at::Tensor conv2d_bwd_input_cuda(const at::Tensor& grad_out, const at::Tensor& weight, at::IntArrayRef input_size,
                                 at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  check_4d(grad_out, "grad_out");
  check_4d(weight, "weight");
  check_float(grad_out, "grad_out");
  TORCH_CHECK(grad_out.is_cuda(), "fastconv: 'grad_out' must be a CUDA tensor, got ", grad_out.device());
  check_input(weight, "weight", grad_out, "grad_out");
  TORCH_CHECK_VALUE(input_size.size() == 4, "fastconv: 'input_size' must have 4 values, got ", input_size);
  const ConvArgs a = conv_args(input_size, weight.sizes(), stride, padding, dilation, groups);
  check_grad_out(grad_out, a);
  c10::cuda::CUDAGuard guard(grad_out.device());
  const auto fmt = memory_format_of(grad_out);
  at::Tensor dx = empty4(input_size, grad_out.options(), fmt);
  if (dx.numel() == 0) return dx;
  const DType dt = dtype_of(grad_out);
  const int64_t Kg = a.K / a.groups, mult = tc_multiple(grad_out);
  const bool phases_ok = (a.sh == 1 && a.sw == 1) || (a.dh == 1 && a.dw == 1);
  if (phases_ok && mult && Kg % mult == 0 && Kg > 1 && a.Cg >= 16 && a.groups <= 65535) {
    // grad_input as forward convolutions of grad_out on tensor cores, one per stride phase (a, b):
    // the input pixels h = h0 + i*sh with (h + pad) % sh == a receive only the taps r = a + j*sh,
    // from grad_out rows c0 + i - j. That is a stride-1 convolution of grad_out with those taps turned
    // 180 degrees (K <-> C swapped per group) and leading padding dil*(Ra-1) - c0 (negative when the
    // padding exceeds the taps' reach), written through a strided view of grad_input. Stride 1 is
    // the single phase with every tap (any dilation); strides > 1 need dilation 1. Phases with no
    // tap (stride > kernel) receive zeros.
    const at::Tensor g = dense(grad_out, kCL);
    const at::Tensor wg = weight.reshape({a.groups, Kg, a.Cg, a.R, a.S}).transpose(1, 2);
    struct Phase { int64_t first, count, taps, c0; };
    auto phase = [](int64_t ph, int64_t stride, int64_t pad, int64_t size, int64_t taps) {
      Phase f;
      f.first = ((ph - pad) % stride + stride) % stride;
      f.count = f.first < size ? (size - f.first + stride - 1) / stride : 0;
      f.taps = ph < taps ? (taps - ph + stride - 1) / stride : 0;
      f.c0 = (f.first + pad - ph) / stride;
      return f;
    };
    std::vector<Phase> rows, cols;
    for (int64_t ph = 0; ph < a.sh; ++ph) rows.push_back(phase(ph, a.sh, a.pt, a.H, a.R));
    for (int64_t pw = 0; pw < a.sw; ++pw) cols.push_back(phase(pw, a.sw, a.pl, a.W, a.S));
    bool zeros = false;
    for (const Phase& fh : rows)
      for (const Phase& fw : cols) zeros = zeros || (fh.count && fw.count && !(fh.taps && fw.taps));
    if (zeros) dx.zero_();
    for (int64_t ph = 0; ph < a.sh; ++ph)
      for (int64_t pw = 0; pw < a.sw; ++pw) {
        const Phase &fh = rows[ph], &fw = cols[pw];
        if (!fh.count || !fw.count || !fh.taps || !fw.taps) continue;
        const at::Tensor wt = wg.slice(3, ph, a.R, a.sh).slice(4, pw, a.S, a.sw).flip({3, 4})
                                  .reshape({a.C, Kg, fh.taps, fw.taps}).contiguous(kCL);
        const at::Tensor out = dx.slice(2, fh.first, a.H, a.sh).slice(3, fw.first, a.W, a.sw);
        Conv2dParams p;
        p.x = tensor4(g); p.w = tensor4(wt); p.y = tensor4(out);
        p.groups = a.groups;
        p.pad_h0 = a.dh * (fh.taps - 1) - fh.c0; p.pad_w0 = a.dw * (fw.taps - 1) - fw.c0;
        p.dil_h = a.dh; p.dil_w = a.dw;
        conv2d_fwd_tc(p, dt, g.data_ptr(), wt.data_ptr(), out.data_ptr(), EpilogueArgs(), tf32_allowed(), sm_count(),
                      stream());
      }
  } else {
    const at::Tensor g = as_layout(grad_out, fmt);
    conv2d_bwd_input_simt(params(a, dx, weight, g), dt, g.data_ptr(), weight.data_ptr(), dx.data_ptr(), sm_count(),
                          stream());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return dx;
}

at::Tensor conv2d_bwd_weight_cuda(const at::Tensor& grad_out, const at::Tensor& input, at::IntArrayRef weight_size,
                                  at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  check_4d(grad_out, "grad_out");
  check_4d(input, "input");
  check_float(grad_out, "grad_out");
  TORCH_CHECK(grad_out.is_cuda(), "fastconv: 'grad_out' must be a CUDA tensor, got ", grad_out.device());
  check_input(input, "input", grad_out, "grad_out");
  TORCH_CHECK_VALUE(weight_size.size() == 4, "fastconv: 'weight_size' must have 4 values, got ", weight_size);
  const ConvArgs a = conv_args(input.sizes(), weight_size, stride, padding, dilation, groups);
  check_grad_out(grad_out, a);
  c10::cuda::CUDAGuard guard(grad_out.device());
  const auto fmt = memory_format_of(grad_out);
  at::Tensor dw = empty4(weight_size, grad_out.options(), fmt);
  const DType dt = dtype_of(grad_out);
  const bool tf32 = tf32_allowed();
  // Tensor cores read both operands as NHWC rows; the CUDA-core path reads any strides.
  const bool tc = conv2d_bwd_weight_tc_eligible(params(a, input, dw, grad_out), dt, tf32);
  const at::Tensor g = tc ? dense(grad_out, kCL) : as_layout(grad_out, fmt);
  const at::Tensor x = tc ? dense(input, kCL) : as_layout(input, fmt);
  const Conv2dParams p = params(a, x, dw, g);
  const int sms = sm_count();
  at::Tensor ws = at::empty({conv2d_bwd_weight_workspace(p, dt, tf32, sms)}, g.options().dtype(at::kByte));
  conv2d_bwd_weight(p, dt, g.data_ptr(), x.data_ptr(), dw.data_ptr(), ws.data_ptr(), tf32, sms, stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return dw;
}

at::Tensor conv2d_bwd_bias_cuda(const at::Tensor& grad_out) {
  check_4d(grad_out, "grad_out");
  check_float(grad_out, "grad_out");
  TORCH_CHECK(grad_out.is_cuda(), "fastconv: 'grad_out' must be a CUDA tensor, got ", grad_out.device());
  c10::cuda::CUDAGuard guard(grad_out.device());
  const at::Tensor g = as_layout(grad_out, memory_format_of(grad_out));
  at::Tensor db = at::empty({g.size(1)}, g.options());
  if (db.numel() == 0) return db;
  const Tensor4 t = tensor4(g);
  const DType dt = dtype_of(g);
  const int sms = sm_count();
  at::Tensor ws = at::empty({conv2d_bwd_bias_workspace(t, dt, sms)}, g.options().dtype(at::kByte));
  conv2d_bwd_bias(t, dt, g.data_ptr(), db.data_ptr(), ws.data_ptr(), sms, stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return db;
}

}  // namespace
}  // namespace cuda
}  // namespace fastconv

TORCH_LIBRARY_IMPL(fastconv, CUDA, m) {
  m.impl("conv2d_fwd", &fastconv::cuda::conv2d_fwd_cuda);
  m.impl("conv2d_fused_fwd", &fastconv::cuda::conv2d_fused_fwd_cuda);
  m.impl("conv2d_bwd_input", &fastconv::cuda::conv2d_bwd_input_cuda);
  m.impl("conv2d_bwd_weight", &fastconv::cuda::conv2d_bwd_weight_cuda);
  m.impl("conv2d_bwd_bias", &fastconv::cuda::conv2d_bwd_bias_cuda);
}
