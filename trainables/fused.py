"""Fused recurrent layers: the same maths as ``nn.RNN`` / ``nn.GRU`` with fewer ops per time step (``kernel: fused``).

On a CPU, a training step of the adder is bound by per-op overhead more than by arithmetic: ``nn.RNN`` and
``nn.GRU`` run each time step as several small autograd ops. Each layer here is one ``autograd.Function``:

* forward: the input projection of *all* time steps is one large matmul; the loop over time does one small
  matmul into a preallocated buffer plus a few in-place elementwise ops, with no autograd graph;
* backward: everything that does not depend on the running gradient (gate derivatives) is computed for all
  steps at once before the loop; the loop does 2 (rnn) or 3 (gru) ops per step; weight and input gradients are
  large matmuls after it.

``nn.LSTM`` is not replaced: on CPU PyTorch already runs it as one oneDNN kernel, which is faster than a loop like
this one (docs/PERFORMANCE.md); on CUDA all three cells keep cuDNN.

The weights are the ``nn.RNN``/``nn.GRU`` module's own parameters (``weight_ih_l0`` ...), so state
dicts, checkpoints and the cuDNN path are unchanged; only the order of floating-point operations differs, which
changes results at rounding level (see docs/PERFORMANCE.md). Inputs and outputs are time-major: (T, B, features).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["fused_forward", "supports"]


def supports(rnn: nn.RNNBase) -> bool:
    """Whether ``rnn`` is a configuration this module implements (what AdderNet builds for rnn and gru)."""
    return (rnn.mode in ("RNN_TANH", "GRU") and not rnn.bidirectional and rnn.bias and rnn.batch_first and rnn.proj_size == 0
            and getattr(rnn, "nonlinearity", "tanh") == "tanh" and not (rnn.training and rnn.dropout))


def fused_forward(rnn: nn.RNNBase, x: torch.Tensor) -> torch.Tensor:
    """Output of the last layer for time-major input ``x`` (T, B, I), from zero initial states."""
    if not supports(rnn):
        raise ValueError(f"fused kernel: unsupported recurrent module {rnn}")
    layer = _GRULayer if rnn.mode == "GRU" else _RNNLayer
    for i in range(rnn.num_layers):
        x = layer.apply(x, getattr(rnn, f"weight_ih_l{i}"), getattr(rnn, f"weight_hh_l{i}"),
                        getattr(rnn, f"bias_ih_l{i}"), getattr(rnn, f"bias_hh_l{i}"))
    return x


def _input_projection(x: torch.Tensor, w_ih: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    T, B, _ = x.shape
    return torch.addmm(bias, x.reshape(T * B, -1), w_ih.t()).view(T, B, -1)


def _weight_grads(x, w_ih, d_ih, h_prev, d_hh, T, B):
    """Input gradient and weight/bias gradients from the per-step pre-activation gradients (all large matmuls).
    ``d_ih`` / ``d_hh``: (T, B, G) gradients of the input and hidden projections; ``h_prev``: (T-1, B, H)."""
    flat_ih = d_ih.reshape(T * B, -1)
    grad_x = torch.mm(flat_ih, w_ih).view(T, B, -1)
    grad_w_ih = torch.mm(flat_ih.t(), x.reshape(T * B, -1))
    grad_b_ih = flat_ih.sum(0)
    grad_b_hh = d_hh.reshape(T * B, -1).sum(0)
    if T > 1:
        grad_w_hh = torch.mm(d_hh[1:].reshape((T - 1) * B, -1).t(), h_prev.reshape((T - 1) * B, -1))
    else:
        grad_w_hh = d_hh.new_zeros(d_hh.shape[-1], h_prev.shape[-1])
    return grad_x, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh


class _RNNLayer(torch.autograd.Function):
    """h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)."""

    @staticmethod
    def forward(ctx, x, w_ih, w_hh, b_ih, b_hh):
        T = x.shape[0]
        out = _input_projection(x, w_ih, b_ih + b_hh)  # becomes h in place, step by step
        deriv = torch.empty_like(out)                  # 1 - h_t^2, written while h_t is in cache
        one = out.new_ones(())
        w_hh_t = w_hh.t()
        steps, derivs = out.unbind(0), deriv.unbind(0)
        for t in range(T):
            if t:
                steps[t].addmm_(steps[t - 1], w_hh_t)
            torch.addcmul(one, steps[t].tanh_(), steps[t], value=-1, out=derivs[t])
        ctx.save_for_backward(x, w_ih, w_hh, out, deriv)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, w_ih, w_hh, out, deriv = ctx.saved_tensors
        T, B, _ = x.shape
        g = torch.empty_like(deriv)                     # d(pre-activation) of every step
        gs, ds, go = g.unbind(0), deriv.unbind(0), grad_out.unbind(0)
        torch.mul(go[T - 1], ds[T - 1], out=gs[T - 1])
        for t in range(T - 1, 0, -1):
            torch.addmm(go[t - 1], gs[t], w_hh, out=gs[t - 1]).mul_(ds[t - 1])  # dh_{t-1} -> dpre_{t-1}
        return _weight_grads(x, w_ih, g, out[:-1], g, T, B)


class _GRULayer(torch.autograd.Function):
    """PyTorch's GRU: r, z = sigmoid(...), n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h = (1 - z) n + z h."""

    @staticmethod
    def forward(ctx, x, w_ih, w_hh, b_ih, b_hh):
        T, B, _ = x.shape
        H = w_hh.shape[1]
        gi = _input_projection(x, w_ih, b_ih)              # (T, B, 3H)
        gh = x.new_empty(T, B, 3 * H)                     # hidden projections incl. b_hh, per step
        rz = gi[:, :, :2 * H]                             # becomes sigmoid(r, z) in place
        n = gi[:, :, 2 * H:]                              # becomes n in place
        h = x.new_empty(T, B, H)
        diff = x.new_empty(B, H)
        w_hh_t = w_hh.t()
        zero = x.new_zeros(B, H)
        for t in range(T):
            h_prev = h[t - 1] if t else zero
            torch.addmm(b_hh, h_prev, w_hh_t, out=gh[t])
            rz_t, n_t = rz[t], n[t]
            rz_t.add_(gh[t, :, :2 * H]).sigmoid_()
            n_t.addcmul_(rz_t[:, :H], gh[t, :, 2 * H:]).tanh_()
            torch.sub(h_prev, n_t, out=diff)
            torch.addcmul(n_t, rz_t[:, H:], diff, out=h[t])
        ctx.save_for_backward(x, w_ih, w_hh, gi, gh, h)
        return h

    @staticmethod
    def backward(ctx, grad_out):
        x, w_ih, w_hh, gi, gh, h = ctx.saved_tensors
        T, B, _ = x.shape
        H = w_hh.shape[1]
        r, z, n = gi[:, :, :H], gi[:, :, H:2 * H], gi[:, :, 2 * H:]
        h_prev = torch.cat([h.new_zeros(1, B, H), h[:-1]])
        # d(pre-activation)/dh_t for all steps: dn_pre = dh * A, and d(gh) = dh * [C, Bz, A r]
        a = (1 - z) * (1 - n * n)
        factors = torch.cat([a * gh[:, :, 2 * H:] * r * (1 - r), (h_prev - n) * z * (1 - z), a * r], dim=2)
        g = grad_out.clone(memory_format=torch.contiguous_format)
        d_hh = torch.empty_like(gh)
        gs = g.unbind(0)
        f3 = factors.view(T, B, 3, H)
        d3 = d_hh.view(T, B, 3, H)
        for t in range(T - 1, -1, -1):
            torch.mul(f3[t], gs[t].unsqueeze(1), out=d3[t])
            if t:
                gs[t - 1].addcmul_(gs[t], z[t]).addmm_(d_hh[t], w_hh)
        d_ih = torch.cat([d_hh[:, :, :2 * H], g * a], dim=2)
        return _weight_grads(x, w_ih, d_ih, h[:-1], d_hh, T, B)
