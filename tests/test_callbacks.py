"""The driver's Tune callbacks (orchestrator/tune/callbacks.py): the live study page from results in memory."""
import json
import pickle
from types import SimpleNamespace

from orchestrator.tune.callbacks import LivePage, wait_for_live_pages
from orchestrator.tune.state_copy import read_state_copy, state_is_complete
from orchestrator.studydir.storage import Storage
from orchestrator.spec.space import parse_space

SPACE = "space:\n  cell: {grid: [rnn, gru]}\n  digits: 3\n  iters: 100\n  eval_every: 20\n"


def _live_study(tmp_path):
    """A study record, a LivePage callback on it, and two started trials (rnn, gru)."""
    spec = parse_space(SPACE, "live.yaml")
    study = tmp_path / "live"
    study.mkdir()
    (study / "adder_study.json").write_text(json.dumps({"name": "live", "spec": spec.to_json(), "runs": []}))
    cb = LivePage("live", str(tmp_path), spec.to_json(), every_s=0)
    trials = [SimpleNamespace(trial_id=f"t{i}", config={"cell": c, "digits": 3, "iters": 100, "eval_every": 20,
                                                         "_continues": ""}) for i, c in enumerate(["rnn", "gru"])]
    for t in trials:
        cb.on_trial_start(0, trials, t)
    return study, cb, trials


def test_live_page_is_drawn_from_memory_only(tmp_path):
    study, cb, trials = _live_study(tmp_path)
    for it in (20, 40):
        for t in trials:
            cb.on_trial_result(0, trials, t, {"iter": it, "loss": 2.0 / it, "exact_acc": it / 100, "digit_acc": 0.5,
                                              "status": "running", "time_total_s": it / 10.0})
    wait_for_live_pages()  # pages are rendered off Tune's event loop, in a background thread
    page = (study / "report.html").read_text()
    assert "Live view at" in page and "2 trials this run has started" in page
    assert "2/2 trials (2 running)" in page
    assert not list(study.glob("*.parquet"))  # nothing tabulated from storage: the page came from memory
    # Tune pickles callbacks with the study's state: only plain data goes in, no results
    restored = pickle.loads(pickle.dumps(cb))
    assert restored.trials == {} and restored.name == "live"


def test_live_page_with_an_errored_trial_is_written(tmp_path, capsys):
    """A trial that ends in error has no folder or error file in the driver's memory: the page says so rather
    than failing (it once raised TypeError on the missing values and was left stale)."""
    study, cb, trials = _live_study(tmp_path)
    cb.on_trial_result(0, trials, trials[1], {"iter": 20, "loss": 0.1, "exact_acc": 1.0, "digit_acc": 1.0,
                                              "status": "budget", "time_total_s": 2.0})
    cb.on_trial_complete(0, trials, trials[1])
    cb.on_trial_error(0, trials, trials[0])
    cb.on_experiment_end(trials)
    assert "not written" not in capsys.readouterr().err
    page = (study / "report.html").read_text()
    assert "1 errored" in page and "(no error file)" in page


def _state(tmp_path, statuses: dict[str, str], checkpoints: int = 5):
    """A study folder with an experiment-state snapshot holding ``statuses`` and that many checkpoint folders per
    trial."""
    study = tmp_path / "st"
    entries = []
    for trial_id, status in statuses.items():
        for i in range(checkpoints):
            (study / f"trial_{trial_id}" / f"checkpoint_{i:06d}").mkdir(parents=True)
            (study / f"trial_{trial_id}" / f"checkpoint_{i:06d}" / "checkpoint.pt").write_bytes(b"x")
        entries.append([json.dumps({"trial_id": trial_id, "status": status, "config": {},
                                    "relative_logdir": f"trial_{trial_id}"}),
                        json.dumps({"last_result": {}, "num_failures": 0})])
    (study / "experiment_state-2026-12-01_00-00-00.json").write_text(json.dumps({"trial_data": entries}))
    return study


def _kept(study):
    return {d.name: sorted(c.name for c in d.glob("checkpoint_*")) for d in sorted(study.glob("trial_*"))}


def test_pruning_follows_the_state_on_storage_not_the_driver(tmp_path):
    """Only trials the snapshot on storage records as finished lose checkpoints, and only all but the newest two
    (three for an errored trial: its registered checkpoint may be the second newest, and keeps one before it); a
    running trial's snapshot may name any of its checkpoints, so all stay."""
    from orchestrator.tune.callbacks import prune_finished_checkpoints
    from orchestrator.studydir.storage import Storage

    study = _state(tmp_path, {"a": "TERMINATED", "b": "ERROR", "c": "RUNNING", "d": "TERMINATED"})
    storage = Storage.open(str(tmp_path))
    assert prune_finished_checkpoints(storage, "st", only={"a", "b", "c"}) == {"a", "b"}
    kept = _kept(study)
    assert kept["trial_a"] == ["checkpoint_000003", "checkpoint_000004"]
    assert kept["trial_b"] == ["checkpoint_000002", "checkpoint_000003", "checkpoint_000004"]
    assert len(kept["trial_c"]) == len(kept["trial_d"]) == 5  # running; not asked for
    assert prune_finished_checkpoints(storage, "st", skip={"a", "b"}) == {"d"}
    assert len(_kept(study)["trial_c"]) == 5 and len(_kept(study)["trial_d"]) == 2


def test_pruner_waits_for_the_snapshot_and_never_fails_the_study(tmp_path, capsys):
    """The callback: a trial the driver saw finish is pruned only once the snapshot on storage says so; storage
    trouble is one warning, not an exception into Tune."""
    from orchestrator.tune.callbacks import CheckpointPruner

    study = _state(tmp_path, {"a": "RUNNING"})
    pruner = CheckpointPruner("st", str(tmp_path), every_s=0, cost_share=0)  # every step, whatever a prune costs
    trial = SimpleNamespace(trial_id="a")
    pruner.on_trial_complete(0, [trial], trial)
    pruner.on_step_end(0, [trial])
    assert len(_kept(study)["trial_a"]) == 5  # the snapshot still says RUNNING
    state = next(study.glob("experiment_state-*.json"))
    state.write_text(state.read_text().replace("RUNNING", "TERMINATED"))
    pruner.on_step_end(1, [trial])
    assert len(_kept(study)["trial_a"]) == 2 and pruner.pruned == {"a"}
    copy = read_state_copy(Storage.open(tmp_path), "st")  # what pruning decided from
    assert copy["file"] == state.name and "TERMINATED" in copy["text"]
    state.write_text("{")  # cut off mid-write: nothing decided from it, the copy stays, no warning
    pruner.on_experiment_end([trial])
    assert "TERMINATED" in read_state_copy(Storage.open(tmp_path), "st")["text"]
    assert capsys.readouterr().err == ""
    state.write_text(copy["text"])
    (study / "adder_state_copy.json").unlink()
    (study / "adder_state_copy.json").mkdir()  # storage trouble: one warning, not an exception into Tune
    pruner.on_experiment_end([trial])
    pruner.on_experiment_end([trial])
    assert capsys.readouterr().err.count("older checkpoints of finished trials not removed") == 1
    restored = pickle.loads(pickle.dumps(pruner))
    assert restored.finished == set() and restored.name == "st"


def test_the_state_copy_skips_an_unchanged_state_and_waits_by_its_cost(tmp_path):
    """At 10,000 trials the experiment state is tens of MB: a state Ray has not rewritten is not copied again, and
    a copy or prune that took a while waits COST_SHARE times as long before the next (<= 5% of the driver)."""
    from orchestrator.tune.callbacks import CheckpointPruner
    from orchestrator.tune.state_copy import keep_state_copy
    from orchestrator.studydir.storage import Storage

    study = _state(tmp_path, {"a": "RUNNING"})
    storage = Storage.open(tmp_path)
    text, signature = keep_state_copy(storage, "st")
    assert text is not None and signature is not None
    copy = study / "adder_state_copy.json"
    before = copy.stat().st_mtime_ns
    assert keep_state_copy(storage, "st", unchanged=signature) == (None, signature)
    assert copy.stat().st_mtime_ns == before  # not rewritten
    state = next(study.glob("experiment_state-*.json"))
    state.write_text(state.read_text().replace("RUNNING", "TERMINATED"))
    text, again = keep_state_copy(storage, "st", unchanged=signature)
    assert again != signature and "TERMINATED" in read_state_copy(storage, "st")["text"]

    pruner = CheckpointPruner("st", str(tmp_path), every_s=0)
    trial = SimpleNamespace(trial_id="a")
    pruner.on_trial_complete(0, [trial], trial)
    pruner._prune_cost = 3600.0  # the last prune took an hour: the next waits 20 hours
    pruner.on_step_end(1, [trial])
    assert pruner.pruned == set() and len(_kept(study)["trial_a"]) == 5
    pruner._prune_cost = 0.0
    pruner.on_step_end(2, [trial])
    assert pruner.pruned == {"a"} and len(_kept(study)["trial_a"]) == 2


def test_a_ray_shaped_state_is_whole_only_with_its_last_byte():
    """The copy checks Ray's state by its end (a 10,000-trial state is ~200 MB, too much to parse every few
    seconds): no prefix of it -- a file Ray was still writing in place -- passes, the whole does, and the copy
    holds its bytes as they were."""
    trial = json.dumps({"trial_id": "a", "status": "RUNNING", "stats": {"x": 1}, "config": {"stats": 2}}, indent=2)
    text = json.dumps({"trial_data": [[trial, json.dumps({"last_result": {"stats": {}}})]],
                       "runner_data": {"_stats": {}}, "stats": {"start_time": 1796196427.12}})
    assert state_is_complete(text) and state_is_complete(text.encode())
    assert not any(state_is_complete(text[:n]) for n in range(1, len(text)))


class _Planted:
    """A pickle that, loaded, would write a file: what a hostile searcher state could hold."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_searcher_state_is_whole_only_to_its_stop_and_nothing_in_it_runs(tmp_path):
    """Ray's searcher state (a pickle) is checked by the C unpickler with every class it names made inert: each
    protocol's prefix fails, the whole passes, trailing bytes fail, and a pickle that names `open` writes nothing."""
    from collections import OrderedDict

    from orchestrator.studydir.state_copy import pickle_is_complete

    planted = tmp_path / "planted"
    value = {"configs": [{"lr": 0.1 * i, "tag": "é"} for i in range(50)], "od": OrderedDict(a=1),
             "s": {1, 2}, "b": bytes(range(256)) * 4, "x": _Planted(str(planted))}
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        data = pickle.dumps(value, protocol=protocol)
        assert pickle_is_complete(data)
        assert not any(pickle_is_complete(data[:n]) for n in range(len(data)))
        assert not pickle_is_complete(data + b".")
    assert not planted.exists()


def test_the_state_copy_is_streamed_and_never_takes_a_cut_state(tmp_path, monkeypatch):
    """The copy is written a chunk at a time: a whole state (Ray's shape, or another whole JSON shape) is copied
    byte for byte; a state cut off mid-write -- Ray's shape or not -- leaves the previous copy as it was."""
    from orchestrator.studydir.storage import Storage
    from orchestrator.tune import state_copy

    monkeypatch.setattr(state_copy, "_CHUNK", 7)
    trial = json.dumps({"trial_id": "a", "status": "RUNNING", "config": {}}, indent=2)
    whole = json.dumps({"trial_data": [[trial, "{}"]] * 20, "runner_data": {}, "stats": {"start_time": 1.0}})
    study = tmp_path / "st"
    study.mkdir()
    state = study / "experiment_state-2026-12-01_00-00-00.json"
    storage = Storage.open(tmp_path)
    state.write_text(whole)
    copied, _ = state_copy.keep_state_copy(storage, "st")
    with state_copy.open_state_copy(copied) as f:
        assert f.read() == whole.encode()
    for cut in (whole[:-1], whole[:len(whole) // 2], whole.replace(', "stats": {"start_time": 1.0}', "")[:-1]):
        state.write_text(cut)
        assert state_copy.keep_state_copy(storage, "st") == (None, None)
        assert read_state_copy(storage, "st")["text"] == whole
    other = whole.replace(', "stats": {"start_time": 1.0}', "")  # whole, but not Ray's last key
    state.write_text(other)
    assert state_copy.keep_state_copy(storage, "st")[0] is not None and read_state_copy(storage, "st")["text"] == other
