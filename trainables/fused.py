"""The fused recurrent kernel (``kernel: fused``): the maths of ``nn.RNN`` / ``nn.GRU`` with far fewer ops per
time step, for the CPU.

On a CPU, a training step of the adder is bound by per-op overhead and memory traffic more than by arithmetic:
``nn.GRU`` runs each time step as a dozen small autograd ops, each a pass over memory. Each layer here is one
``autograd.Function`` whose time loop is C++ (``fused_ext.cpp``, compiled on first use):

* forward: the input projection of *all* time steps is one large matmul (here, in Python); per step the loop
  does one small matmul (MKL), the gate nonlinearities with ATen's vectorised ``sigmoid_``/``tanh_``, and all
  other gate arithmetic in one pass over the (batch, hidden) slice while it is in cache; no autograd graph;
* backward: per step one pass computes every gate gradient from the saved activations, plus one small matmul
  for the recurrent gradient; weight and input gradients are large matmuls after the loop (here, in Python).

``nn.LSTM`` is left to torch: on CPU it already runs as one oneDNN kernel per layer, which measured faster than
the same C++ loop written for the LSTM (docs/PERFORMANCE.md). On CUDA every cell keeps cuDNN.

The weights are the ``nn.RNN``/``nn.GRU`` module's own parameters (``weight_ih_l0`` ...), so state dicts and
checkpoints are the same for both kernels. Floating-point operations happen in another order than in
torch's kernels, so results differ from ``kernel: torch`` at rounding level (docs/PERFORMANCE.md); the fused
kernel is itself deterministic. Inputs and outputs are time-major: (T, B, features).

Building needs a C++ compiler and ninja (a dependency); the module is cached by torch
(``~/.cache/torch_extensions``, or ``TORCH_EXTENSIONS_DIR``), so a machine builds it once (about 25 s).
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["CELLS", "FusedKernelError", "extension", "fused_forward", "supports", "used_for"]

CELLS = ("rnn", "gru")  # lstm keeps torch's oneDNN kernel (module docstring)
SOURCE = Path(__file__).with_name("fused_ext.cpp")
_EXT: Any = None
_LOCK = threading.Lock()


class FusedKernelError(RuntimeError):
    """The fused kernel cannot be built or loaded on this machine."""


def extension() -> Any:
    """The compiled loops, built on first use (torch caches the build and rebuilds when the source changes)."""
    global _EXT
    if _EXT is not None:  # called on every layer's forward and backward: no lock once loaded
        return _EXT
    with _LOCK:
        if _EXT is None:
            from torch.utils import cpp_extension

            try:
                _EXT = cpp_extension.load(name="adder_sweep_fused", sources=[str(SOURCE)], extra_cflags=["-O3"],
                                          verbose=False)
            except Exception as exc:  # no compiler, no ninja, no Python headers: one clear message
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
                raise FusedKernelError(
                    f"kernel fused: cannot build {SOURCE.name} ({first[:300]}); it needs a C++ compiler and "
                    f"ninja (pip install ninja). Use kernel: torch instead.") from exc
    return _EXT


def used_for(kernel: str, cell: str, device: torch.device) -> bool:
    """Whether a model with this ``kernel`` setting and ``cell`` runs the fused loops on ``device``."""
    return kernel == "fused" and cell in CELLS and device.type == "cpu"


def supports(rnn: nn.RNNBase) -> bool:
    """Whether ``rnn`` is a configuration this kernel implements (what AdderNet builds)."""
    return (rnn.mode in ("RNN_TANH", "GRU") and not rnn.bidirectional and rnn.bias and rnn.batch_first
            and rnn.proj_size == 0 and not (rnn.training and rnn.dropout))


def fused_forward(rnn: nn.RNNBase, x: torch.Tensor) -> torch.Tensor:
    """Output of the last layer for time-major input ``x`` (T, B, I), from zero initial states."""
    if not supports(rnn):
        raise ValueError(f"fused kernel: unsupported recurrent module {rnn}")
    layer = _GRULayer if rnn.mode == "GRU" else _RNNLayer
    for i in range(rnn.num_layers):
        x = layer.apply(x.contiguous(), getattr(rnn, f"weight_ih_l{i}"), getattr(rnn, f"weight_hh_l{i}"),
                        getattr(rnn, f"bias_ih_l{i}"), getattr(rnn, f"bias_hh_l{i}"))
    return x


def _input_projection(x: torch.Tensor, w_ih: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    T, B, _ = x.shape
    return torch.addmm(bias, x.reshape(T * B, -1), w_ih.t()).view(T, B, -1)


def _weight_grads(x, w_ih, d_ih, h, d_hh_blocks):
    """Input, weight and bias gradients from the per-step gradients of the input projection ``d_ih`` (T, B, G),
    the gradient of the hidden projection as column blocks ``d_hh_blocks`` (tensors (T, B, G_k) whose widths add
    up to G), and the layer's outputs ``h`` (T, B, H): all large matmuls."""
    T, B, _ = x.shape
    flat_ih = d_ih.reshape(T * B, -1)
    grad_x = torch.mm(flat_ih, w_ih).view(T, B, -1)
    grad_w_ih = torch.mm(flat_ih.t(), x.reshape(T * B, -1))
    ones = x.new_ones(T * B)
    grad_b_ih = torch.mv(flat_ih.t(), ones)  # column sums as a matrix-vector product: far faster than sum(0)
    grad_b_hh = torch.cat([torch.mv(blk.reshape(T * B, -1).t(), ones) for blk in d_hh_blocks])
    if T > 1:  # h_{t-1} feeds step t; h_{-1} = 0 contributes nothing
        h_prev = h[:-1].reshape((T - 1) * B, -1)
        grad_w_hh = torch.cat([torch.mm(blk[1:].reshape((T - 1) * B, -1).t(), h_prev) for blk in d_hh_blocks])
    else:
        grad_w_hh = x.new_zeros(w_ih.shape[0], h.shape[-1])
    return grad_x, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh


class _RNNLayer(torch.autograd.Function):
    """h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)."""

    @staticmethod
    def forward(ctx, x, w_ih, w_hh, b_ih, b_hh):
        h = extension().rnn_forward(_input_projection(x, w_ih, b_ih + b_hh), w_hh)
        ctx.save_for_backward(x, w_ih, w_hh, h)
        return h

    @staticmethod
    def backward(ctx, grad_out):
        x, w_ih, w_hh, h = ctx.saved_tensors
        d = extension().rnn_backward(grad_out.contiguous(), h, w_hh)
        return _weight_grads(x, w_ih, d, h, [d])


class _GRULayer(torch.autograd.Function):
    """PyTorch's GRU: r, z = sigmoid(...), n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h = (1 - z) n + z h."""

    @staticmethod
    def forward(ctx, x, w_ih, w_hh, b_ih, b_hh):
        act = _input_projection(x, w_ih, b_ih)  # becomes the activations r, z, n
        h, ghn = extension().gru_forward(act, w_hh, b_hh)
        ctx.save_for_backward(x, w_ih, w_hh, act, ghn, h)
        return h

    @staticmethod
    def backward(ctx, grad_out):
        x, w_ih, w_hh, act, ghn, h = ctx.saved_tensors
        d_ih, dnr = extension().gru_backward(grad_out.contiguous(), act, ghn, h, w_hh)
        H = h.shape[-1]
        return _weight_grads(x, w_ih, d_ih, h, [d_ih[:, :, :2 * H], dnr])
