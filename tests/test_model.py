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
    model = AdderNet("gru", 1)
    result = model.add(10**60, 5)
    assert isinstance(result, int) and result >= 0
    with pytest.raises(ValueError):
        model.add(-1, 2)
