"""AdderNet: digit embeddings of two operands -> recurrent cell -> per-step digit classifier."""
from __future__ import annotations

import torch
from torch import nn

from . import fused
from .config import KERNELS, DataConfig, ModelConfig
from .data import digits_to_int, int_to_digits, sequence_length, str_from_int

_CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
_M, _D = ModelConfig(), DataConfig()  # the defaults are config.py's, stated once


class AdderNet(nn.Module):
    def __init__(self, cell: str = _M.cell, layers: int = _M.layers, hidden: int = _M.hidden, embed: int = _M.embed,
                 mode: str = _D.mode, digits: int = _D.digits, kernel: str = _M.kernel):
        super().__init__()
        if cell not in _CELLS:
            raise ValueError(f"unknown cell {cell!r}; choose one of {', '.join(_CELLS)}")
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
        self.cell, self.mode, self.digits, self.kernel = cell, mode, digits, kernel
        self.embed = nn.Embedding(10, embed)
        self.rnn = _CELLS[cell](2 * embed, hidden, num_layers=layers, batch_first=True)
        self.dense = nn.Linear(hidden, 10)

    @classmethod
    def from_config(cls, config) -> "AdderNet":
        m, d = config.model, config.data
        return cls(m.cell, m.layers, m.hidden, m.embed, d.mode, d.digits, m.kernel)

    def uses_fused_kernel(self, device: torch.device) -> bool:
        """``kernel: fused`` (trainables/fused.py) runs rnn and gru on CPU; lstm (oneDNN) and CUDA keep torch's."""
        return fused.used_for(self.kernel, self.cell, device) and fused.supports(self.rnn)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(B, T) digits of each operand -> (B, T, 10) logits of the sum's digits."""
        if self.uses_fused_kernel(a.device):
            # time-major inside the fused layers; the logits go back to batch-major as a view
            x = torch.cat([self.embed(a.t()), self.embed(b.t())], dim=-1)
            return self.dense(fused.fused_forward(self.rnn, x)).transpose(0, 1)
        x = torch.cat([self.embed(a), self.embed(b)], dim=-1)
        out, _ = self.rnn(x)
        return self.dense(out)

    @torch.no_grad()
    def predict(self, a: torch.Tensor, b: torch.Tensor, chunk: int = 1000) -> torch.Tensor:
        """Argmax digits, evaluated in chunks so long sequences fit in memory."""
        return torch.cat([self(a[i:i + chunk], b[i:i + chunk]).argmax(-1) for i in range(0, a.shape[0], chunk)])

    @torch.no_grad()
    def add(self, a: int, b: int) -> int:
        """Add two non-negative Python ints of any size through the model."""
        if a < 0 or b < 0:
            raise ValueError("AdderNet.add takes non-negative integers")
        n = len(str_from_int(max(a, b)))
        # Pad at least to the length the model was trained on: leading zeros are what it has seen.
        T = max(n + 1, sequence_length(self.mode, self.digits))
        dev = next(self.parameters()).device
        ta = torch.tensor([int_to_digits(a, T)], device=dev)
        tb = torch.tensor([int_to_digits(b, T)], device=dev)
        was_training = self.training
        self.eval()
        try:
            return digits_to_int(self.predict(ta, tb)[0])
        finally:
            self.train(was_training)

