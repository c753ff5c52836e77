"""A fused tanh-RNN layer: the maths of ``nn.RNN`` with fewer ops per time step (``kernel: fused``).

On a CPU, a training step of the adder is bound by per-op overhead more than by arithmetic: ``nn.RNN`` runs each
time step as several small autograd ops. Each layer here is one ``autograd.Function``:

* forward: the input projection of *all* time steps is one large matmul; the loop over time does one small
  in-place matmul, an in-place tanh and one multiply-add per step, with no autograd graph;
* backward: tanh' = 1 - h^2 is written in the forward loop while h_t is in cache; the backward loop does one
  small matmul and one multiply per step; weight and input gradients are large matmuls after it.

Only the tanh RNN is fused. ``nn.LSTM`` on CPU already runs as one oneDNN kernel per layer, faster than a loop
like this one; a GRU loop built the same way (tried, see docs/PERFORMANCE.md) was no faster than ``nn.GRU`` on one
thread: its gates need 7 elementwise ops per step forward and 14 backward, so op overhead and memory traffic
stay. On CUDA all cells keep cuDNN.

The weights are the ``nn.RNN`` module's own parameters (``weight_ih_l0`` ...), so state
dicts, checkpoints and the cuDNN path are unchanged; only the order of floating-point operations differs, which
changes results at rounding level (see docs/PERFORMANCE.md). Inputs and outputs are time-major: (T, B, features).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["fused_forward", "supports"]


def supports(rnn: nn.RNNBase) -> bool:
    """Whether ``rnn`` is a configuration this module implements (what AdderNet builds for cell rnn)."""
    return (rnn.mode == "RNN_TANH" and not rnn.bidirectional and rnn.bias and rnn.batch_first and rnn.proj_size == 0
            and not (rnn.training and rnn.dropout))


def fused_forward(rnn: nn.RNNBase, x: torch.Tensor) -> torch.Tensor:
    """Output of the last layer for time-major input ``x`` (T, B, I), from zero initial states."""
    if not supports(rnn):
        raise ValueError(f"fused kernel: unsupported recurrent module {rnn}")
    for i in range(rnn.num_layers):
        x = _RNNLayer.apply(x, getattr(rnn, f"weight_ih_l{i}"), getattr(rnn, f"weight_hh_l{i}"),
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
