"""Packed members (trainables/packed.py): K models of one shape as one batched model equal the same models trained
alone with AdderNet and torch.optim.Adam -- in float64, every weight within 1e-9 after 50 steps, for each cell --
and a diverging member leaves the others bit for bit as they were."""
import copy

import pytest
import torch
from torch import nn

from trainables.data import train_batch
from trainables.model import AdderNet
from trainables.packed import PackedAdam, PackedAdderNet, clip_member_grads, member_losses

DIGITS, BATCH, STEPS = 4, 16, 50
MEMBERS = [  # (seed, lr, grad_clip): different seeds, learning rates and clipping
    (0, 1e-3, 0.0),
    (1, 1e-2, 0.5),
    (2, 3e-3, 0.0),
]


def alone(cell: str, seed: int, lr: float, clip: float, steps: int = STEPS) -> AdderNet:
    """The reference: one member trained by itself, as trainables/loop.py trains a run."""
    torch.manual_seed(seed)
    model = AdderNet(cell, 2, hidden=12, embed=6, digits=DIGITS).double()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    for it in range(steps):
        batch = train_batch("full", DIGITS, BATCH, seed, it)
        loss = loss_fn(model(batch.a, batch.b).reshape(-1, 10), batch.target.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
    return model


def packed(cell: str, members, steps: int = STEPS):
    """The same members as one pack, from the same initial weights; returns (pack, each step's member losses)."""
    inits = []
    for seed, _, _ in members:
        torch.manual_seed(seed)
        inits.append(AdderNet(cell, 2, hidden=12, embed=6, digits=DIGITS).double())
    pack = PackedAdderNet.from_members(inits)
    opt = PackedAdam(pack.parameters(), torch.tensor([lr for _, lr, _ in members], dtype=torch.float64))
    clip = torch.tensor([c for _, _, c in members], dtype=torch.float64)
    history = []
    for it in range(steps):
        batches = [train_batch("full", DIGITS, BATCH, seed, it) for seed, _, _ in members]
        a, b = torch.stack([x.a for x in batches]), torch.stack([x.b for x in batches])
        target = torch.stack([x.target for x in batches])
        losses = member_losses(pack(a, b), target)
        opt.zero_grad()
        losses.sum().backward()
        clip_member_grads(pack, clip)
        opt.step()
        history.append(losses.detach())
    return pack, torch.stack(history)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_each_member_equals_its_configuration_trained_alone(cell):
    pack, _ = packed(cell, MEMBERS)
    for k, (seed, lr, clip) in enumerate(MEMBERS):
        ref = alone(cell, seed, lr, clip).state_dict()
        got = pack.member_state_dict(k)
        assert ref.keys() == got.keys()
        worst = max((ref[key] - got[key]).abs().max().item() for key in ref)
        assert worst < 1e-9, (cell, k, worst)
        moved = max((ref[key] - alone(cell, seed, lr, clip, steps=0).state_dict()[key]).abs().max().item()
                    for key in ref)
        assert moved > 1e-3  # the members trained: equality is not two untouched copies


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_a_diverging_member_leaves_the_others_untouched(cell):
    calm, calm_losses = packed(cell, MEMBERS[:2] + [(2, 3e-3, 0.0)], steps=20)
    wild, wild_losses = packed(cell, MEMBERS[:2] + [(2, 10.0, 0.0)], steps=20)
    for k in range(2):
        a, b = calm.member_state_dict(k), wild.member_state_dict(k)
        assert all(torch.equal(a[key], b[key]) for key in a), k
    assert torch.equal(calm_losses[:, :2], wild_losses[:, :2])
    assert not torch.equal(calm_losses[:, 2], wild_losses[:, 2])  # the third member did train differently


def test_a_frozen_member_does_not_change():
    """A member that has ended (solved, diverged, out of budget) stops changing while the others train on."""
    inits = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        inits.append(AdderNet("gru", 1, hidden=8, embed=4, digits=DIGITS).double())
    pack = PackedAdderNet.from_members(inits)
    opt = PackedAdam(pack.parameters(), torch.tensor([1e-2, 1e-2], dtype=torch.float64))
    before = pack.member_state_dict(1)
    for it in range(5):
        batches = [train_batch("full", DIGITS, BATCH, s, it) for s in (0, 1)]
        losses = member_losses(pack(torch.stack([x.a for x in batches]), torch.stack([x.b for x in batches])),
                               torch.stack([x.target for x in batches]))
        opt.zero_grad()
        losses.sum().backward()
        opt.step(active=torch.tensor([True, False]))
    after = pack.member_state_dict(1)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert opt.steps.tolist() == [5.0, 0.0]


def test_shapes_and_refusals():
    pack = PackedAdderNet(3, "lstm", 2, hidden=8, embed=4)
    assert pack.w_ih[0].shape == (3, 32, 8) and pack.w_ih[1].shape == (3, 32, 8) and pack.w_hh[0].shape == (3, 32, 8)
    with pytest.raises(ValueError, match="unknown cell"):
        PackedAdderNet(2, "cnn")
    with pytest.raises(ValueError, match="at least one member"):
        PackedAdderNet(0)


# -- the pack's loop against trainables.loop.train -------------------------------------------------------------
from trainables.config import ConfigError, TrainConfig  # noqa: E402
from trainables.loop import train  # noqa: E402
from trainables.pack_loop import check_packable, train_pack  # noqa: E402

SHARED = {"layers": 2, "hidden": 12, "embed": 6, "digits": 2, "batch_size": 32, "eval_size": 100, "eval_every": 10,
          "dtype": "float64", "device": "cpu", "threads": 1}
VARIED = [  # what members may differ in: seed, lr, schedule and its knobs, clipping, target, budget
    {"seed": 0, "lr": 3e-3, "iters": 60},
    {"seed": 1, "lr": 1e-2, "iters": 45, "grad_clip": 0.5},  # a budget that is no multiple of eval_every
    {"seed": 2, "lr": 2e-2, "iters": 60, "schedule": "plateau", "plateau_patience": 1, "plateau_factor": 0.5,
     "plateau_threshold": 0.5},  # a plateau rule that fires
    {"seed": 3, "lr": 3e-2, "iters": 60, "target": 0.005},  # solves (one sum in 100 right), then stays frozen
    {"seed": 4, "lr": 1e-3, "iters": 60},  # diverges: its weights are poisoned at iteration 10 (see POISON_AT)
]
POISON_AT, POISONED = 10, 4  # NaN written into a member's weights through its checkpoint, as tests/test_loop.py does
KEYS = ("iter", "exact_acc", "digit_acc", "lr", "status", "iters_to_solve")


def run_alone(flat, poison=False):
    reports = []

    def report(metrics, checkpoint):
        reports.append(metrics)
        if poison and metrics["iter"] == POISON_AT:
            checkpoint()["model"]["dense.weight"].fill_(float("nan"))

    summary = train(TrainConfig.from_flat(flat), report=report)
    return summary, reports


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_each_member_of_a_pack_reports_what_it_reports_alone(cell):
    configs = [{**SHARED, "cell": cell, **v} for v in VARIED]
    packed_reports = {k: [] for k in range(len(configs))}

    def report(reports, checkpoint):
        for k, m in reports.items():
            packed_reports[k].append(m)
            if k == POISONED and m["iter"] == POISON_AT:
                checkpoint()["model"]["dense_w"][k].fill_(float("nan"))

    summaries = train_pack([TrainConfig.from_flat(c) for c in configs], report=report)
    statuses = set()
    for k, flat in enumerate(configs):
        summary, reports = run_alone(flat, poison=k == POISONED)
        got = packed_reports[k]
        assert [tuple(r[x] for x in KEYS) for r in got] == [tuple(r[x] for x in KEYS) for r in reports], (cell, k)
        assert all(abs(a["loss"] - b["loss"]) <= 1e-9 * abs(b["loss"]) or (a["loss"] != a["loss"] and
                   b["loss"] != b["loss"]) for a, b in zip(got, reports)), (cell, k)
        assert (summaries[k]["status"], summaries[k]["iters"], summaries[k]["iters_to_solve"]) == \
            (summary["status"], summary["iters"], summary["iters_to_solve"]), (cell, k)
        statuses.add(summary["status"])
    assert statuses == {"budget", "solved", "diverged"}  # the members reached every outcome
    assert any(r["lr"] < VARIED[2]["lr"] for r in packed_reports[2])  # the plateau rule fired


def test_members_that_do_not_share_a_step_are_refused():
    a = TrainConfig.from_flat({**SHARED, "cell": "rnn"})
    b = TrainConfig.from_flat({**SHARED, "cell": "gru", "digits": 4})
    with pytest.raises(ConfigError, match="cell: member 1 has 'gru', member 0 'rnn'") as exc:
        check_packable([a, b])
    assert "digits" in str(exc.value)


def test_members_continued_to_a_larger_budget_equal_a_pack_run_to_it_from_the_start():
    """A pack's last checkpoint, resumed with larger budgets for the members that ended on theirs (what `extend`
    does), goes on exactly as a pack given those budgets from the start: each member from its own iteration (45
    and 60 here), the solved member frozen."""
    short = [{**SHARED, "cell": "gru", **v} for v in VARIED[:4]]
    last = {}
    train_pack([TrainConfig.from_flat(c) for c in short], report=lambda r, c: last.update(state=c()))
    longer = [{**c, "iters": c["iters"] + 30} if c.get("target") is None else c for c in short]
    got, want = {k: [] for k in range(4)}, {k: [] for k in range(4)}

    def collect(into):
        return lambda reports, checkpoint: [into[k].append(m) for k, m in reports.items()]

    train_pack([TrainConfig.from_flat(c) for c in longer], report=collect(got), resume_from=last["state"])
    train_pack([TrainConfig.from_flat(c) for c in longer], report=collect(want))
    for k in range(4):
        tail = [r for r in want[k] if r["iter"] > short[k]["iters"]]
        assert [(r["iter"], r["exact_acc"], r["digit_acc"], r["status"]) for r in got[k]] == \
            [(r["iter"], r["exact_acc"], r["digit_acc"], r["status"]) for r in tail], k
        # a report's loss is the mean since the previous one: equal once the window starts after the old budget
        full = lambda rs: [r["loss"] for r in rs if r["iter"] - SHARED["eval_every"] >= short[k]["iters"]]  # noqa
        assert full(got[k]) == full(tail), k
    assert [r["iter"] for r in got[1]] == [50, 60, 70, 75] and got[3] == []  # 45 + 30; the solved one stays


def test_a_pack_resumed_from_any_checkpoint_goes_on_bit_identically():
    """Resumed from the checkpoint of the round where one member ended alone (iteration 45, mid-window for the
    others), every member's later reports equal the uninterrupted pack's: the checkpoint holds their windows."""
    configs = [TrainConfig.from_flat({**SHARED, "cell": "rnn", **v}) for v in VARIED[:4]]
    want, states = {k: [] for k in range(4)}, {}

    def collect(reports, checkpoint):
        for k, m in reports.items():
            want[k].append(m)
        states[max(m["iter"] for m in reports.values())] = copy.deepcopy(checkpoint())  # (it holds live tensors)

    train_pack(configs, report=collect)
    assert 45 in states and 40 in states
    got = {k: [] for k in range(4)}
    train_pack(configs, report=lambda r, c: [got[k].append(m) for k, m in r.items()], resume_from=states[45])
    for k in range(4):
        later = [(m["iter"], m["loss"], m["exact_acc"], m["status"]) for m in want[k] if m["iter"] > 45]
        assert [(m["iter"], m["loss"], m["exact_acc"], m["status"]) for m in got[k]] == later, k
    assert [m["iter"] for m in got[0]] == [50, 60]
