"""Packed members: K adder models of one shape trained as one batched model (issue #23's maths).

``torch.vmap`` cannot run ``nn.RNN``/``nn.LSTM``/``nn.GRU`` (pytorch/pytorch#105982, #134606), so the cells are
written here over stacked parameters: member k's weights are slice ``[k]`` of every tensor, and each time step is
one batched matmul over ``[K, B, ...]`` -- on the CPU and on CUDA alike (autograd's backward of ``bmm`` is batched
matmuls too). Nothing couples two members: member k's loss depends only on slice k, the pack's loss is the sum of
the members' losses (so each slice's gradient is that member's own), and the optimizer (``PackedAdam``), the
gradient clipping (``clip_member_grads``, by each member's own norm) and the learning rates are per member. A member
therefore equals the same configuration trained alone with ``AdderNet`` and ``torch.optim.Adam`` up to rounding
(tests/test_packed.py: every weight within 1e-9 after 50 steps in float64, for each cell), and a member that
diverges leaves the others' numbers bit for bit as they were.

Gate layouts are PyTorch's, so ``from_members`` / ``member_state_dict`` move weights to and from ``AdderNet``'s
state dict: LSTM gates (i, f, g, o); GRU gates (r, z, n) with n = tanh(W_in x + b_in + r * (W_hn h + b_hn)).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

GATES = {"rnn": 1, "gru": 3, "lstm": 4}


class PackedAdderNet(nn.Module):
    """K AdderNets of one shape (cell, layers, hidden, embed), parameters stacked ``[K, ...]``."""

    def __init__(self, k: int, cell: str = "rnn", layers: int = 2, hidden: int = 64, embed: int = 32):
        super().__init__()
        if cell not in GATES:
            raise ValueError(f"unknown cell {cell!r}; choose one of {', '.join(GATES)}")
        if k < 1:
            raise ValueError(f"a pack needs at least one member, got {k}")
        self.k, self.cell, self.layers, self.hidden, self.embed_size = k, cell, layers, hidden, embed
        g = GATES[cell] * hidden
        self.embed = nn.Parameter(torch.empty(k, 10, embed))
        self.w_ih = nn.ParameterList([nn.Parameter(torch.empty(k, g, 2 * embed if n == 0 else hidden))
                                      for n in range(layers)])
        self.w_hh = nn.ParameterList([nn.Parameter(torch.empty(k, g, hidden)) for _ in range(layers)])
        self.b_ih = nn.ParameterList([nn.Parameter(torch.empty(k, g)) for _ in range(layers)])
        self.b_hh = nn.ParameterList([nn.Parameter(torch.empty(k, g)) for _ in range(layers)])
        self.dense_w = nn.Parameter(torch.empty(k, 10, hidden))
        self.dense_b = nn.Parameter(torch.empty(k, 10))

    # -- weights to and from AdderNet ------------------------------------------------------------------------
    def _names(self) -> list[tuple[str, nn.Parameter]]:
        """(AdderNet state-dict key, the stacked parameter) for every weight."""
        out = [("embed.weight", self.embed)]
        for n in range(self.layers):
            out += [(f"rnn.weight_ih_l{n}", self.w_ih[n]), (f"rnn.weight_hh_l{n}", self.w_hh[n]),
                    (f"rnn.bias_ih_l{n}", self.b_ih[n]), (f"rnn.bias_hh_l{n}", self.b_hh[n])]
        return out + [("dense.weight", self.dense_w), ("dense.bias", self.dense_b)]

    @classmethod
    def from_members(cls, models: Sequence[nn.Module]) -> "PackedAdderNet":
        """A pack holding copies of ``models`` (AdderNets of one shape), in their dtype and device."""
        first = models[0]
        rnn = first.rnn
        cell = {nn.RNN: "rnn", nn.GRU: "gru", nn.LSTM: "lstm"}[type(rnn)]
        pack = cls(len(models), cell, rnn.num_layers, rnn.hidden_size, first.embed.embedding_dim)
        ref = first.embed.weight
        pack = pack.to(dtype=ref.dtype, device=ref.device)
        states = [m.state_dict() for m in models]
        with torch.no_grad():
            for key, p in pack._names():
                p.copy_(torch.stack([s[key] for s in states]))
        return pack

    def member_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Member k's weights as an AdderNet state dict (copies)."""
        return {key: p.detach()[k].clone() for key, p in self._names()}

    # -- forward ----------------------------------------------------------------------------------------------
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(K, B, T) digits of each member's operands -> (K, B, T, 10) logits."""
        k, batch, steps = a.shape
        idx = torch.arange(k, device=a.device).view(k, 1, 1)
        x = torch.cat([self.embed[idx, a], self.embed[idx, b]], dim=-1)  # (K, B, T, 2E)
        for n in range(self.layers):
            x = self._layer(x, n)
        return torch.matmul(x, self.dense_w.transpose(1, 2).unsqueeze(1)) + self.dense_b.view(k, 1, 1, 10)

    def _layer(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """One recurrent layer over time: the input projection of every step at once, then one batched matmul
        with the recurrent weights per step."""
        k, batch, steps, width = x.shape
        h_size = self.hidden
        proj = torch.baddbmm(self.b_ih[n].unsqueeze(1), x.reshape(k, batch * steps, width),
                             self.w_ih[n].transpose(1, 2)).view(k, batch, steps, -1)
        w_hh, b_hh = self.w_hh[n].transpose(1, 2), self.b_hh[n].unsqueeze(1)
        h = x.new_zeros(k, batch, h_size)
        c = x.new_zeros(k, batch, h_size) if self.cell == "lstm" else None
        outs = []
        for t in range(steps):
            rec = torch.baddbmm(b_hh, h, w_hh)  # (K, B, G*H)
            xt = proj[:, :, t]
            if self.cell == "rnn":
                h = torch.tanh(xt + rec)
            elif self.cell == "gru":
                xr, xz, xn = xt.split(h_size, dim=-1)
                hr, hz, hn = rec.split(h_size, dim=-1)
                r = torch.sigmoid(xr + hr)
                z = torch.sigmoid(xz + hz)
                cand = torch.tanh(xn + r * hn)
                h = (1 - z) * cand + z * h
            else:
                i, f, g, o = (xt + rec).split(h_size, dim=-1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h)
        return torch.stack(outs, dim=2)  # (K, B, T, H)


def member_losses(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(K,) each member's mean cross-entropy over its batch and steps, as ``nn.CrossEntropyLoss`` gives it alone.
    Their sum is the pack's loss: its gradient in slice k is member k's own."""
    k = logits.shape[0]
    per = nn.functional.cross_entropy(logits.reshape(-1, 10), target.reshape(-1), reduction="none")
    return per.view(k, -1).mean(dim=1)


@torch.no_grad()
def clip_member_grads(pack: PackedAdderNet, max_norm: torch.Tensor) -> torch.Tensor:
    """``nn.utils.clip_grad_norm_`` per member: member k's gradients scaled by its own total norm against
    ``max_norm[k]`` (0: not clipped). Returns the members' norms before clipping."""
    params = [p for p in pack.parameters() if p.grad is not None]
    k = pack.k
    norms = torch.stack([p.grad.reshape(k, -1).norm(2, dim=1) for p in params]).norm(2, dim=0)
    coef = torch.clamp(max_norm / (norms + 1e-6), max=1.0)
    coef = torch.where(max_norm > 0, coef, torch.ones_like(coef))
    for p in params:
        p.grad.mul_(coef.view(k, *([1] * (p.grad.dim() - 1))))
    return norms


class PackedAdam:
    """Adam with each member's own learning rate and step count, on stacked parameters: the formula of
    ``torch.optim.Adam`` (no weight decay, no amsgrad), element by element, so member k follows exactly the
    trajectory of an Adam over its slice alone. ``active`` freezes finished members (no step, no state change)."""

    def __init__(self, params, lr: torch.Tensor, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params = list(params)
        self.lr = lr.detach().clone()
        self.beta1, self.beta2 = betas
        self.eps = eps
        k = self.lr.shape[0]
        self.steps = torch.zeros(k, dtype=torch.float64, device=self.lr.device)
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, active: torch.Tensor | None = None) -> None:
        k = self.lr.shape[0]
        active = torch.ones(k, dtype=torch.bool, device=self.lr.device) if active is None else active
        self.steps += active.to(self.steps.dtype)
        t = torch.clamp(self.steps, min=1)
        bias1 = 1 - self.beta1 ** t
        bias2_sqrt = torch.sqrt(1 - self.beta2 ** t)
        step_size = (self.lr.to(torch.float64) / bias1)
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq):
            if p.grad is None:
                continue
            shape = (k, *([1] * (p.dim() - 1)))
            on = active.view(shape)
            g = p.grad
            m.copy_(torch.where(on, torch.lerp(m, g, 1 - self.beta1), m))  # (as torch.optim.Adam)
            v.copy_(torch.where(on, v * self.beta2 + g * g * (1 - self.beta2), v))
            denom = v.sqrt() / bias2_sqrt.to(p.dtype).view(shape) + self.eps
            update = step_size.to(p.dtype).view(shape) * m / denom
            p.sub_(torch.where(on, update, torch.zeros_like(update)))

    def state_dict(self) -> dict:
        return {"lr": self.lr.clone(), "steps": self.steps.clone(), "exp_avg": [m.clone() for m in self.exp_avg],
                "exp_avg_sq": [v.clone() for v in self.exp_avg_sq]}

    def load_state_dict(self, state: dict) -> None:
        self.lr.copy_(state["lr"])
        self.steps.copy_(state["steps"])
        for m, s in zip(self.exp_avg, state["exp_avg"]):
            m.copy_(s)
        for v, s in zip(self.exp_avg_sq, state["exp_avg_sq"]):
            v.copy_(s)
