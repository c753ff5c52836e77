// Recurrent loops of the fused kernel (trainables/fused.py), compiled on first use with torch.utils.cpp_extension.
//
// Per time step: one small matmul through ATen (MKL), the gate nonlinearities through ATen's vectorised
// sigmoid_/tanh_ on the hot (B, G) slice, and everything else in one plain loop over the batch that the
// compiler vectorises. No autograd graph is built: the Python autograd Functions call *_forward in forward
// and *_backward in backward; weight and input gradients are large matmuls done in Python afterwards.
//
// Tensors are time-major and contiguous: (T, B, features). GRU gate blocks follow PyTorch's order (r, z, n), so
// the weights are nn.RNN / nn.GRU's own.
#include <torch/extension.h>

#include <vector>

namespace {

void check(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

}  // namespace

// tanh RNN. pre: (T, B, H) = x W_ih^T + b_ih + b_hh, overwritten with h_t. Returns h.
at::Tensor rnn_forward(at::Tensor pre, at::Tensor w_hh) {
  check(pre, "pre");
  const int64_t T = pre.size(0);
  auto w_t = w_hh.t();
  for (int64_t t = 0; t < T; ++t) {
    auto ht = pre[t];
    if (t) ht.addmm_(pre[t - 1], w_t);
    ht.tanh_();
  }
  return pre;
}

// Returns d(pre) (T, B, H) from grad_out (T, B, H) and h (T, B, H).
at::Tensor rnn_backward(at::Tensor grad_out, at::Tensor h, at::Tensor w_hh) {
  check(grad_out, "grad_out");
  check(h, "h");
  const int64_t T = h.size(0), N = h.size(1) * h.size(2);
  auto d = at::empty_like(h);
  auto carry = at::zeros({h.size(1), h.size(2)}, h.options());
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "rnn_backward", [&] {
    for (int64_t t = T - 1; t >= 0; --t) {
      const scalar_t* go = grad_out[t].data_ptr<scalar_t>();
      const scalar_t* ht = h[t].data_ptr<scalar_t>();
      const scalar_t* c = carry.data_ptr<scalar_t>();
      scalar_t* dt = d[t].data_ptr<scalar_t>();
      for (int64_t k = 0; k < N; ++k) dt[k] = (go[k] + c[k]) * (scalar_t(1) - ht[k] * ht[k]);
      if (t) at::mm_out(carry, d[t], w_hh);
    }
  });
  return d;
}

// GRU. gi: (T, B, 3H) = x W_ih^T + b_ih, overwritten with the activations r, z, n.
// Returns {h (T, B, H), ghn (T, B, H) = W_hn h_{t-1} + b_hn}.
std::vector<at::Tensor> gru_forward(at::Tensor gi, at::Tensor w_hh, at::Tensor b_hh) {
  check(gi, "gi");
  const int64_t T = gi.size(0), B = gi.size(1), H = w_hh.size(1);
  auto h = at::empty({T, B, H}, gi.options());
  auto ghn = at::empty({T, B, H}, gi.options());
  auto gh = at::empty({B, 3 * H}, gi.options());
  auto zero = at::zeros({B, H}, gi.options());
  auto w_t = w_hh.t();
  auto bias = b_hh.contiguous();
  AT_DISPATCH_FLOATING_TYPES(gi.scalar_type(), "gru_forward", [&] {
    const scalar_t* bh = bias.data_ptr<scalar_t>();
    scalar_t* hh = gh.data_ptr<scalar_t>();
    for (int64_t t = 0; t < T; ++t) {
      auto hp = t ? h[t - 1] : zero;
      auto git = gi[t];
      scalar_t* g = git.data_ptr<scalar_t>();
      if (t) {
        at::mm_out(gh, hp, w_t);
        for (int64_t b = 0; b < B; ++b) {
          scalar_t* hr = hh + b * 3 * H;
          for (int64_t j = 0; j < 3 * H; ++j) hr[j] += bh[j];
        }
      } else {  // h_{-1} = 0: the hidden projection is the bias
        for (int64_t b = 0; b < B; ++b)
          for (int64_t j = 0; j < 3 * H; ++j) hh[b * 3 * H + j] = bh[j];
      }
      for (int64_t b = 0; b < B; ++b) {
        scalar_t* gr = g + b * 3 * H;
        const scalar_t* hr = hh + b * 3 * H;
        for (int64_t j = 0; j < 2 * H; ++j) gr[j] += hr[j];
      }
      git.narrow(1, 0, 2 * H).sigmoid_();
      scalar_t* gn = ghn[t].data_ptr<scalar_t>();
      for (int64_t b = 0; b < B; ++b) {
        scalar_t* gr = g + b * 3 * H;
        const scalar_t* hr = hh + b * 3 * H + 2 * H;
        scalar_t* out = gn + b * H;
        for (int64_t j = 0; j < H; ++j) {
          out[j] = hr[j];
          gr[2 * H + j] += hr[j] * gr[j];
        }
      }
      git.narrow(1, 2 * H, H).tanh_();
      const scalar_t* hpp = hp.data_ptr<scalar_t>();
      scalar_t* ht = h[t].data_ptr<scalar_t>();
      for (int64_t b = 0; b < B; ++b) {
        const scalar_t* gr = g + b * 3 * H;
        for (int64_t j = 0; j < H; ++j) {
          const scalar_t n = gr[2 * H + j];
          ht[b * H + j] = (hpp[b * H + j] - n) * gr[H + j] + n;
        }
      }
    }
  });
  return {h, ghn};
}

// Returns {d_ih (T, B, 3H), dnr (T, B, H)}: the gradient of x W_ih^T + b_ih per step, and r * d(n_pre), the
// n block of the gradient of W_hh h + b_hh (its r and z blocks equal d_ih's). The full (B, 3H) hidden gradient
// exists only per step, in a scratch buffer that stays in cache: writing it for every step costs memory traffic.
std::vector<at::Tensor> gru_backward(at::Tensor grad_out, at::Tensor act, at::Tensor ghn, at::Tensor h,
                                     at::Tensor w_hh) {
  check(grad_out, "grad_out");
  check(act, "act");
  const int64_t T = act.size(0), B = act.size(1), H = w_hh.size(1);
  auto d_ih = at::empty_like(act);
  auto dnr = at::empty({T, B, H}, act.options());
  auto d_hh = at::empty({B, 3 * H}, act.options());  // scratch, hot
  auto carry = at::zeros({B, H}, act.options());     // d_hh[t+1] @ W_hh
  auto direct = at::zeros({B, H}, act.options());    // dh_{t+1} * z_{t+1}
  auto zero = at::zeros({B, H}, act.options());
  AT_DISPATCH_FLOATING_TYPES(act.scalar_type(), "gru_backward", [&] {
    const scalar_t one = 1;
    scalar_t* __restrict__ dhh = d_hh.data_ptr<scalar_t>();
    for (int64_t t = T - 1; t >= 0; --t) {
      const scalar_t* __restrict__ go = grad_out[t].data_ptr<scalar_t>();
      const scalar_t* __restrict__ a = act[t].data_ptr<scalar_t>();
      const scalar_t* __restrict__ gn = ghn[t].data_ptr<scalar_t>();
      const scalar_t* __restrict__ hp = (t ? h[t - 1] : zero).data_ptr<scalar_t>();
      const scalar_t* __restrict__ c = carry.data_ptr<scalar_t>();
      scalar_t* __restrict__ di = d_ih[t].data_ptr<scalar_t>();
      scalar_t* __restrict__ dn_r = dnr[t].data_ptr<scalar_t>();
      scalar_t* __restrict__ dir = direct.data_ptr<scalar_t>();
      for (int64_t b = 0; b < B; ++b) {
        const int64_t o3 = b * 3 * H, o1 = b * H;
        for (int64_t j = 0; j < H; ++j) {
          const scalar_t dh = go[o1 + j] + (c[o1 + j] + dir[o1 + j]);
          const scalar_t r = a[o3 + j], z = a[o3 + H + j], n = a[o3 + 2 * H + j];
          const scalar_t dn = dh * (one - z) * (one - n * n);
          const scalar_t dz = dh * (hp[o1 + j] - n) * z * (one - z);
          const scalar_t dr = dn * gn[o1 + j] * r * (one - r);
          di[o3 + j] = dr;
          di[o3 + H + j] = dz;
          di[o3 + 2 * H + j] = dn;
          dhh[o3 + j] = dr;
          dhh[o3 + H + j] = dz;
          dhh[o3 + 2 * H + j] = dn * r;
          dn_r[o1 + j] = dn * r;
          dir[o1 + j] = dh * z;
        }
      }
      if (t) at::mm_out(carry, d_hh, w_hh);
    }
  });
  return {d_ih, dnr};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("rnn_forward", &rnn_forward);
  m.def("rnn_backward", &rnn_backward);
  m.def("gru_forward", &gru_forward);
  m.def("gru_backward", &gru_backward);
}
