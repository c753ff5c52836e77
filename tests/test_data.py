import random

import pytest
import torch

from trainables.data import (SEED_EVAL_RANGE, SEED_TRAIN_RANGE, add_digits, digits_to_int, eval_set, int_to_digits,
                             make_batch, train_batch)


@pytest.mark.parametrize("digits", [1, 11, 1000, random.Random(7).randint(2, 300)])
def test_full_mode_targets_are_python_sums(digits):
    batch = make_batch("full", digits, 64, seed=digits)
    assert batch.a.shape == batch.b.shape == batch.target.shape == (64, digits + 1)
    assert (batch.a[:, -1] == 0).all() and (batch.b[:, -1] == 0).all()  # the carry step
    for a, b, t in zip(batch.a, batch.b, batch.target):
        assert digits_to_int(a) + digits_to_int(b) == digits_to_int(t)
        assert digits_to_int(a) < 10**digits


def test_full_mode_covers_all_digit_strings_with_leading_zeros():
    batch = make_batch("full", 3, 5000, seed=1)
    values = {digits_to_int(a) for a in batch.a}
    assert min(values) < 100  # leading zeros occur
    assert len(values) > 900  # nearly all 1000 three-digit strings


def test_carry_chain_through_nines():
    a = torch.tensor([[9] * 50 + [0]])
    b = torch.tensor([[1] + [0] * 50])
    assert add_digits(a, b).tolist() == [[0] * 50 + [1]]


def test_full_mode_handles_ten_thousand_digits():
    batch = make_batch("full", 10_000, 2, seed=3)
    assert digits_to_int(batch.a[0]) + digits_to_int(batch.b[0]) == digits_to_int(batch.target[0])


@pytest.mark.parametrize("length", [10, 11, 100])
def test_seed_mode_ranges_and_padding(length):
    train = make_batch("seed", length, 500, seed=0, split="train")
    ev = make_batch("seed", length, 500, seed=0, split="eval")
    for batch, (lo, hi) in ((train, SEED_TRAIN_RANGE), (ev, SEED_EVAL_RANGE)):
        assert batch.a.shape == (500, length)
        a = [digits_to_int(x) for x in batch.a]
        b = [digits_to_int(x) for x in batch.b]
        assert all(lo <= v < hi for v in a + b)
        assert all(x + y == digits_to_int(t) for x, y, t in zip(a, b, batch.target))
        assert (batch.a[:, 9:] == 0).all()  # operands below 10**9 are zero-padded


def test_batches_are_pure_functions_of_seed_and_index():
    assert torch.equal(train_batch("full", 11, 8, 5, 42).a, train_batch("full", 11, 8, 5, 42).a)
    assert not torch.equal(train_batch("full", 11, 8, 5, 42).a, train_batch("full", 11, 8, 5, 43).a)
    assert not torch.equal(train_batch("full", 11, 8, 5, 42).a, train_batch("full", 11, 8, 6, 42).a)
    assert torch.equal(eval_set("seed", 12, 8, 1).target, eval_set("seed", 12, 8, 1).target)
    assert not torch.equal(eval_set("full", 11, 8, 1).a, train_batch("full", 11, 8, 1, 0).a)


def test_int_digit_conversion_of_huge_numbers():
    x = 7 * 10**5000 + 12345
    assert digits_to_int(int_to_digits(x, 5002)) == x
    with pytest.raises(ValueError):
        int_to_digits(123, 2)
