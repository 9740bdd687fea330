// The random shift of cached fp16 feature maps and their conversion to float32, in one pass (used by
// hilrl/policies/encoders.py, ObservationEncoder.shift_feature_maps, through hilrl/policies/sac/fast.py).
//
// out[b, c, y, x] = float(maps[b, c, clamp(y + shifts[b, 0] - pad), clamp(x + shifts[b, 1] - pad)]): DrQ's random
// shift (replicate padding by `pad`, then a crop at the shift; Kostrikov et al. 2020), as encoders.random_shift
// computes it with a gather. Torch runs that as a gather over every element (reading an index per element), then
// a conversion pass; here each source row is converted once (8 values per F16C instruction) and its cells are
// placed by the column shift.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace {

inline void half_row_to_float(const at::Half* src, float* dst, int64_t n) {
  int64_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
#endif
  for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

// maps (B, C, H, W) float16 contiguous, shifts (B, 2) int64 in [0, 2 * pad], out (B, C, H, W) float32 contiguous.
void shift_to_float(torch::Tensor maps, torch::Tensor shifts, int64_t pad, torch::Tensor out) {
  TORCH_CHECK(maps.dim() == 4 && maps.scalar_type() == torch::kHalf && maps.is_contiguous() && maps.is_cpu(),
              "shift_to_float: maps must be a contiguous (B, C, H, W) float16 CPU tensor");
  TORCH_CHECK(out.sizes() == maps.sizes() && out.scalar_type() == torch::kFloat && out.is_contiguous(),
              "shift_to_float: out must be a contiguous float32 tensor of the maps' shape");
  TORCH_CHECK(shifts.dim() == 2 && shifts.size(0) == maps.size(0) && shifts.size(1) == 2 &&
              shifts.scalar_type() == torch::kLong, "shift_to_float: shifts must be (B, 2) int64");
  const int64_t B = maps.size(0), C = maps.size(1), H = maps.size(2), W = maps.size(3);
  auto sh = shifts.contiguous();
  const int64_t* sp = sh.data_ptr<int64_t>();
  const at::Half* mp = maps.data_ptr<at::Half>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> row(W);
    std::vector<int64_t> cols(W), rows(H);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t oy = sp[2 * b] - pad, ox = sp[2 * b + 1] - pad;
      for (int64_t y = 0; y < H; ++y) rows[y] = std::min(std::max(y + oy, (int64_t)0), H - 1);
      for (int64_t x = 0; x < W; ++x) cols[x] = std::min(std::max(x + ox, (int64_t)0), W - 1);
      for (int64_t c = 0; c < C; ++c) {
        const at::Half* plane = mp + (b * C + c) * H * W;
        float* dst = op + (b * C + c) * H * W;
        for (int64_t y = 0; y < H; ++y) {
          float* d = dst + y * W;
          if (ox == 0) {
            half_row_to_float(plane + rows[y] * W, d, W);
          } else {
            half_row_to_float(plane + rows[y] * W, row.data(), W);
            for (int64_t x = 0; x < W; ++x) d[x] = row[cols[x]];
          }
        }
      }
    }
  });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("shift_to_float", &shift_to_float, "random shift of (B, C, H, W) fp16 maps into float32 (out)");
}
