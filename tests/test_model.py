import pytest
import torch

from trainables.model import AdderNet


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 3])
def test_shapes(cell, layers):
    model = AdderNet(cell, layers, hidden=64, embed=32)
    assert isinstance(model.rnn, {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell])
    assert model.rnn.input_size == 64 and model.rnn.hidden_size == 64 and model.rnn.num_layers == layers
    a = torch.randint(0, 10, (7, 13))
    assert model(a, a).shape == (7, 13, 10)
    assert model.embed.num_embeddings == 10 and model.embed.embedding_dim == 32


def test_unknown_cell():
    with pytest.raises(ValueError, match="unknown cell 'cnn'"):
        AdderNet("cnn")


def test_add_pads_to_any_size_and_returns_an_int():
    """A model whose classifier always answers 7 shows how many digits ``add`` asked it for: at least the length it
    was trained on (12 steps for 11 digits), else one more than the longer operand."""
    model = AdderNet("gru", 1, digits=11)
    with torch.no_grad():
        model.dense.weight.zero_()
        model.dense.bias.copy_(torch.nn.functional.one_hot(torch.tensor(7), 10).float())
    assert model.add(3, 4) == int("7" * 12)
    result = model.add(10**60, 5)
    assert type(result) is int and result == int("7" * 62)
    with pytest.raises(ValueError):
        model.add(-1, 2)


@pytest.mark.parametrize("cell", ["rnn", "gru"])
@pytest.mark.parametrize("steps", [1, 9])
def test_fused_kernel_matches_torch_in_float64(cell, steps):
    """Outputs and every gradient of the fused layers equal nn.RNN's / nn.GRU's up to float64 rounding."""
    torch.manual_seed(0)
    model = AdderNet(cell, 3, hidden=16, embed=8).double()
    fused = AdderNet(cell, 3, hidden=16, embed=8, kernel="fused").double()
    fused.load_state_dict(model.state_dict())
    assert fused.uses_fused_kernel(torch.device("cpu")) and not model.uses_fused_kernel(torch.device("cpu"))
    a, b = torch.randint(0, 10, (5, steps)), torch.randint(0, 10, (5, steps))
    weights = torch.randn(5, steps, 10, dtype=torch.float64)
    outs = []
    for m in (model, fused):
        out = m(a, b)
        (out * weights).sum().backward()
        outs.append((out.detach(), {k: p.grad for k, p in m.named_parameters()}))
    (ref, ref_grads), (got, got_grads) = outs
    assert got.shape == ref.shape == (5, steps, 10)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    assert ref_grads.keys() == got_grads.keys()
    for k in ref_grads:
        if steps > 1 or "weight_hh" not in k:  # one step: h_0 = 0, so W_hh gets no gradient
            assert got_grads[k].abs().sum() > 0, k
        torch.testing.assert_close(got_grads[k], ref_grads[k], rtol=1e-10, atol=1e-12, msg=k)


@pytest.mark.parametrize("cell", ["lstm"])
def test_fused_kernel_leaves_other_cells_and_the_state_dict_alone(cell):
    torch.manual_seed(0)
    model = AdderNet(cell, 2, kernel="fused")
    assert not model.uses_fused_kernel(torch.device("cpu"))  # torch's oneDNN LSTM: see trainables/fused.py
    twin = AdderNet(cell, 2)
    twin.load_state_dict(model.state_dict())
    a = torch.randint(0, 10, (4, 6))
    assert torch.equal(model(a, a), twin(a, a))
    rnn = AdderNet("rnn", 2, kernel="fused")
    assert rnn.state_dict().keys() == AdderNet("rnn", 2).state_dict().keys()
    with pytest.raises(ValueError, match="unknown kernel 'cuda'"):
        AdderNet("rnn", kernel="cuda")


def test_fused_kernel_build_failure_is_one_clear_error(monkeypatch):
    """No compiler / ninja: the fused kernel says what is missing and what to use instead."""
    from torch.utils import cpp_extension

    from trainables import fused

    def broken(*args, **kwargs):
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(fused, "_EXT", None)
    monkeypatch.setattr(cpp_extension, "load", broken)
    model = AdderNet("rnn", 1, kernel="fused")
    a = torch.randint(0, 10, (2, 3))
    with pytest.raises(fused.FusedKernelError, match="Ninja is required.*C\\+\\+ compiler and ninja.*kernel: torch"):
        model(a, a)
