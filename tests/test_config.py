import pytest

from trainables.config import ConfigError, TrainConfig, field_specs


def test_defaults_are_the_assignments_basic_model():
    c = TrainConfig()
    assert (c.model.cell, c.model.layers, c.model.hidden, c.model.embed) == ("rnn", 2, 64, 32)
    assert (c.data.digits, c.data.batch_size, c.data.eval_size) == (11, 200, 2000)
    assert (c.optim.lr, c.optim.schedule, c.run.iters) == (1e-3, "fixed", 3000)
    o = c.optim
    assert (o.plateau_factor, o.plateau_patience, o.plateau_threshold, o.plateau_min_lr) == (0.5, 10, 1e-3, 1e-3)


def test_every_field_has_a_doc_and_flat_names_are_unique():
    specs = field_specs()
    assert all(s.doc for s in specs.values()), [s.name for s in specs.values() if not s.doc]
    assert TrainConfig().to_flat().keys() == specs.keys()


def test_flat_round_trip():
    c = TrainConfig.from_flat({"cell": "gru", "digits": "100", "lr": "0.02", "eval_lengths": "20,30"})
    assert c.model.cell == "gru" and c.data.digits == 100 and c.optim.lr == 0.02 and c.data.eval_lengths == [20, 30]
    assert TrainConfig.from_flat(c.to_flat()) == c


def test_validation_lists_every_bad_field_at_once():
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_flat({"cell": "transformer", "layers": 0, "iters": -1})
    names = [n for n, _ in e.value.problems]
    assert names == ["cell", "layers", "iters"]
    assert "transformer" in str(e.value) and "rnn, lstm, gru" in str(e.value)


def test_unknown_key_suggests_closest_and_types_are_strict():
    with pytest.raises(ConfigError, match="did you mean 'layers'"):
        TrainConfig.from_flat({"layer": 3})
    with pytest.raises(ConfigError, match="expected an integer, got 2.5"):
        TrainConfig.from_flat({"layers": 2.5})
    with pytest.raises(ConfigError, match="expected a number"):
        TrainConfig.from_flat({"lr": True})


def test_seed_mode_rejects_short_lengths():
    with pytest.raises(ConfigError, match="seed mode.*needs >= 10, got 5"):
        TrainConfig.from_flat({"mode": "seed", "digits": 5})
