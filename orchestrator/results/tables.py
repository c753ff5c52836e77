"""Result tables of a study, read from what Ray Tune wrote, without importing Ray.

Sources in a study directory, per generation (the study root is generation 0, ``gen-K/`` each later one, see
``adder-sweep extend``): the newest ``experiment_state-*.json`` (every trial's id, state, config, last result) and
each trial's ``result.json`` (one JSON line per report). A trial continued in a later generation is a new Tune trial
whose config names its predecessor (``_continues``); the tables join them into one logical trial with one curve.
"""
from __future__ import annotations

import io
import json
import re
from typing import Any, Callable, Iterable, Iterator, Optional

from ..errors import UserError
from ..studydir.storage import Storage, generation_parts

FINAL_STATES = "final_states.json"
RAY_STATES = {"PENDING": "pending", "RUNNING": "running", "PAUSED": "pending", "TERMINATED": "terminated",
              "ERROR": "errored"}


def generation_paths(storage: Storage, name: str) -> list[str]:
    """The study's generations as paths under its directory: "" (the root, generation 0), "gen-1", ..."""
    from ..studydir.storage import record_or_none

    gens = (record_or_none(storage, name) or {}).get("generations") or [{"path": ""}]
    return [g.get("path", "") for g in gens]


def experiment_state_path(storage: Storage, name: str, gen_path: str = "") -> str | None:
    from pyarrow.fs import FileSelector

    base = storage.join(*generation_parts(name, gen_path))
    if not storage.is_dir(base):
        return None
    files = [i for i in storage.fs.get_file_info(FileSelector(base)) if
             i.base_name.startswith("experiment_state-") and i.base_name.endswith(".json")]
    if not files:
        return None
    # The name carries the run's start time; mtimes do not order them (Ray re-syncs old files at the end).
    return max(files, key=lambda i: i.base_name).path


# Ray keeps no format version in its experiment-state files, and they are private: this reader was tested against
# the Ray releases below (pyproject.toml bounds Ray to them). A study that a Ray outside them ran is refused with one
# line, and so is a state file whose shape is not the one read here -- never a table built from a guess.
RAY_STATE_TESTED = ((2, 52), (2, 60))
TRIAL_STATUSES = ("PENDING", "RUNNING", "PAUSED", "TERMINATED", "ERROR")


def _ray_minor(version: str) -> tuple[int, int] | None:
    parts = str(version).split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def tested_ray_range() -> str:
    (a, b), (c, d) = RAY_STATE_TESTED
    return f"{a}.{b}-{c}.{d}"


def check_ray_versions(storage: Storage, name: str) -> None:
    """UserError if a Ray outside RAY_STATE_TESTED wrote (ran) this study, by the versions its record holds."""
    from ..studydir.storage import record_or_none

    record = record_or_none(storage, name)
    if record is None:
        return  # no record: the caller reports that
    lo, hi = RAY_STATE_TESTED
    for run in record.get("runs", []):
        version = (run.get("versions") or {}).get("ray")
        minor = _ray_minor(version) if version else None
        if minor is not None and not lo <= minor <= hi:
            raise UserError(f"study {name!r} was run with Ray {version} ({run.get('kind', 'run')} of "
                            f"{run.get('at', '?')}), but this adder-sweep reads the experiment state of Ray "
                            f"{tested_ray_range()} only; use an adder-sweep release made for Ray {version}")


def _trial_problem(t: Any, rt: Any) -> str | None:
    if not isinstance(t, dict) or not isinstance(rt, dict):
        return "not a JSON object"
    for key, types in (("trial_id", str), ("status", str), ("config", dict)):
        if not isinstance(t.get(key), types):
            return f"no {key!r} of the expected type"
    if t["status"] not in TRIAL_STATUSES:
        return f"unknown trial status {t['status']!r}"
    if not isinstance(t.get("relative_logdir") or t.get("custom_dirname"), (str, type(None))):
        return "a trial directory that is not a string"
    if not isinstance(rt.get("last_result") or {}, dict) or not isinstance(rt.get("num_failures", 0), int):
        return "run metadata of an unexpected shape"
    return None


def load_trials(storage: Storage, name: str) -> list[dict[str, Any]]:
    """One dict per Tune trial of every generation: trial_id, ray_status, state, config (the training config),
    tune_config, last_result, num_failures, dir (relative to the study directory), error_file, generation."""
    check_ray_versions(storage, name)
    rows = []
    for generation, gen_path in enumerate(generation_paths(storage, name)):
        rows += _load_generation(storage, name, gen_path, generation)
    return rows


def snapshot_trials(storage: Storage, name: str, gen_path: str = "", text: Any = None,
                    keep: Optional[Callable[[str], bool]] = None) -> list[dict[str, Any]]:
    """The trials of one generation exactly as its newest experiment-state snapshot on storage holds them -- what
    `resume` would restore -- without the driver's final_states.json correction (load_trials applies it); from
    ``text`` (a snapshot's content, or a binary stream of it, e.g. of adder-sweep's copy) if given; only the trials whose id ``keep`` accepts
    (the others are not parsed: at 10,000 trials the state holds 200 MB of them)."""
    return _load_generation(storage, name, gen_path, 0, use_final=False, text=text, keep=keep)


_TRIAL_ID = re.compile(r'"trial_id": "([^"]+)"')
_STATE_HEAD = re.compile(r'\s*\{\s*"trial_data"\s*:\s*\[')
_SPACE = re.compile(r"\s*")
_CHUNK = 1 << 20


class _Shape(ValueError):
    """A whole JSON file that is not shaped as Ray's experiment state (not a cut-off one)."""


def _text_reader(source: Any) -> Callable[[int], str]:
    """read(n) -> about n more characters ('' only at the end) of a str, of bytes or of a binary stream (UTF-8; a
    character cut by the end of the stream raises UnicodeDecodeError, a ValueError)."""
    import codecs

    if isinstance(source, str):
        at = 0

        def read_str(n: int) -> str:
            nonlocal at
            at += n
            return source[at - n:at]
        return read_str
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    decoder = codecs.getincrementaldecoder("utf-8")()

    def read_text(n: int) -> str:
        while True:
            chunk = stream.read(n)
            text = decoder.decode(chunk, final=not chunk)
            if text or not chunk:
                return text
    return read_text


def state_entries(source: Any) -> Iterator[Any]:
    """The entries of an experiment state's ``trial_data`` list, one at a time, read ``_CHUNK`` characters at a
    time: at 10,000 trials the state is ~200 MB, and reading it whole (its bytes, its text, then every entry's
    strings, all at once) cost the driver hundreds of MB at the end of a study. ``source``: a str, bytes or a
    binary stream. Raises ValueError if the file is not whole JSON (cut off mid-write) -- also when that shows only
    after the last entry -- and ``_Shape`` if it is JSON of another shape."""
    read = _text_reader(source)
    buf, at, eof = "", 0, False

    def more() -> bool:  # append the next chunk, dropping what was read (``at`` moves with it); False at the end
        nonlocal buf, at, eof
        chunk = "" if eof else read(_CHUNK)
        if not chunk:
            eof = True
            return False
        buf, at = buf[at:] + chunk, 0
        return True

    def skip_space() -> None:  # past white space, reading on while it runs to the end of what is read
        nonlocal at
        at = _SPACE.match(buf, at).end()
        while at == len(buf) and more():
            at = _SPACE.match(buf, at).end()

    def rest() -> str:  # what is left unread, whole
        parts = [buf[at:]]
        while chunk := "" if eof else read(_CHUNK):
            parts.append(chunk)
        return "".join(parts)

    while len(buf) < 64 and more():
        pass
    head = _STATE_HEAD.match(buf)
    if head is None:  # not Ray's shape or key order: read it whole
        yield from _parsed_entries(json.loads(rest()))
        return
    at = head.end()
    decoder = json.JSONDecoder()
    count = 0
    while True:
        skip_space()
        if buf.startswith("]", at):
            at += 1
            break
        if count:
            if not buf.startswith(",", at):
                raise ValueError(f"expected ',' or ']' after trial entry {count - 1}")
            at += 1
            skip_space()
        while True:  # one entry, taken once something follows it (so a number or a name is known to be whole)
            try:
                entry, end = decoder.raw_decode(buf, at)
            except ValueError:
                if more():
                    continue
                raise
            if _SPACE.match(buf, end).end() < len(buf) or not more():
                break
        at, count = end, count + 1
        yield entry
    json.loads('{"trial_data": []' + rest())  # the rest (runner data, stats) must be whole JSON too


def _parsed_entries(state: Any) -> Iterator[Any]:
    if not isinstance(state, dict) or not isinstance(state.get("trial_data"), list):
        raise _Shape("no 'trial_data' list at its top level")
    yield from state["trial_data"]


def _load_generation(storage: Storage, name: str, gen_path: str, generation: int, use_final: bool = True,
                     text: Any = None, keep: Optional[Callable[[str], bool]] = None
                     ) -> list[dict[str, Any]]:
    path = experiment_state_path(storage, name, gen_path)
    if path is None:
        return []
    final = _final_states(storage, name, path, gen_path) if use_final else {}
    where = storage.uri(*generation_parts(name, gen_path, path.rsplit("/", 1)[-1]))

    def rows_from(source: Any) -> tuple[list[dict[str, Any]], Optional[str]]:
        try:
            return _trial_rows(state_entries(source), final, gen_path, generation, keep)
        except _Shape as exc:
            return [], str(exc)

    try:
        if text is None:
            with storage.fs.open_input_stream(path) as f:
                rows, problem = rows_from(f)
        else:
            rows, problem = rows_from(text)
    except ValueError as exc:
        state = _from_state_copy(storage, name, gen_path, path, where) if text is None else None
        if state is None:
            raise UserError(f"{where}: experiment state is unreadable ({type(exc).__name__}: {exc}); it may be "
                            "truncated, and adder-sweep has no copy of it; the per-trial folders are intact") from None
        rows, problem = rows_from(state)
    if problem:
        raise UserError(f"{where}: experiment state in a format this adder-sweep does not read ({problem}); it reads "
                        f"the state of Ray {tested_ray_range()} -- is the study from another Ray version, or is "
                        "the file damaged?")
    return rows


def _trial_rows(entries: Iterable[Any], final: dict, gen_path: str, generation: int,
                keep: Optional[Callable[[str], bool]]) -> tuple[list[dict[str, Any]], Optional[str]]:
    """(one row per trial -- a packed trial's members each -- or [], the first problem or None) from the entries of
    ``trial_data``; a ValueError of the entries' source (a cut file) goes through."""
    rows: list[dict[str, Any]] = []
    for i, entry in enumerate(entries):
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and all(isinstance(e, str) for e in entry)):
            return [], f"trial entry {i} is not a pair of JSON texts"
        if keep is not None:
            found = _TRIAL_ID.search(entry[0][:1000])
            if found and not keep(found.group(1)):
                continue
        try:
            t, rt = json.loads(entry[0]), json.loads(entry[1])
        except ValueError as exc:
            return [], f"trial entry {i} is not JSON ({exc})"
        problem = _trial_problem(t, rt)
        if problem:
            return [], f"trial entry {i}: {problem}"
        status = final.get(t["trial_id"], t["status"])
        trial_dir = t.get("relative_logdir") or t.get("custom_dirname")
        last = rt.get("last_result") or {}
        last.pop("config", None)  # Ray's copy of the config, as in every report (see load_reports)
        row = {
            "trial_id": t["trial_id"],
            "ray_status": status,
            "state": RAY_STATES.get(status, status.lower()),
            "config": training_values(t["config"]),  # what the trial trained with
            "tune_config": t["config"],  # as Tune holds it: with the driver's hidden keys (_continues, ...)
            "dir": (f"{gen_path}/{trial_dir}" if gen_path else trial_dir) if trial_dir else None,
            "last_result": last,
            "num_failures": rt.get("num_failures", 0),
            "error_file": rt.get("error_filename"),
            "generation": generation,
        }
        if not t["config"].get("_pack"):
            rows.append(row)
            continue
        try:
            rows += member_rows(row)
        except (TypeError, ValueError, AttributeError) as exc:
            return [], f"trial entry {i}: a packed trial whose member list is unreadable ({exc})"
    return rows, None


def _from_state_copy(storage: Storage, name: str, gen_path: str, path: str, where: str) -> Optional[str]:
    """The experiment state from adder-sweep's copy of it (orchestrator/studydir/state_copy.py) when Ray's file
    is cut off (a driver killed, or a disk filled, while Ray wrote it): read, said on stderr, nothing written --
    `resume` puts the copy back."""
    import sys

    from ..studydir.state_copy import read_state_copy

    copy = read_state_copy(storage, name, gen_path)
    if copy is None or copy["file"] != path.rsplit("/", 1)[-1]:
        return None
    print(f"adder-sweep: {where} is cut off; read adder-sweep's copy of it, saved {copy['saved']} (the trials' "
          "newest reports are still read from their folders)", file=sys.stderr)
    return copy["text"]


def member_rows(row: dict) -> list[dict]:
    """A packed trial's members as trials of their own, which is what the tables, status, reports and statistics
    see: id ``<Tune trial id>-<member index>``, the pack's state, folder, failures and error, the member's own
    config and last report; ``pack`` names the Tune trial, ``member`` the index, ``pack_config`` holds the Tune
    trial's config (shared by its members, not copied)."""
    members = json.loads(row["tune_config"]["_pack"])
    base = {k: v for k, v in row["tune_config"].items() if k not in ("_pack", "_members")}
    last = row["last_result"]
    out = []
    for k, own in enumerate(members):
        if own.get("_frozen"):  # carried in a pack continued by `extend`, but not trained there: not its trial
            continue
        tune_config = {**base, **own}
        mine = (last.get("members") or {}).get(str(k))
        out.append({**row, "trial_id": f"{row['trial_id']}-{k}", "pack": row["trial_id"], "member": k,
                    "config": training_values(tune_config), "tune_config": tune_config,
                    "pack_config": row["tune_config"], "last_result": {**_pack_fields(last), **mine} if mine else {}})
    return out


def _pack_fields(report: dict) -> dict:
    """What a packed trial's report holds for all its members: Tune's own keys (time_total_s, timestamp, ...)."""
    return {k: v for k, v in report.items() if k not in ("members", "config")}


def trial_reports(storage: Storage, name: str, trial: dict) -> list[dict[str, Any]]:
    """Every report of one trial as load_trials gives it, in order: a member of a packed trial gets its own, each
    with its pack's Tune keys."""
    if not trial.get("dir"):
        return []
    reports = load_reports(storage, name, trial["dir"])
    if trial.get("member") is None:
        return reports
    key = str(trial["member"])
    return [{**_pack_fields(r), **r["members"][key]} for r in reports
            if isinstance(r.get("members"), dict) and isinstance(r["members"].get(key), dict)]


def _final_states(storage: Storage, name: str, state_path: str, gen_path: str = "") -> dict[str, str]:
    """Trial states the driver recorded when its run ended (see study._record_final_states), if they belong to
    the newest experiment-state file; a later resume writes a new state file and so supersedes them."""
    path = storage.join(*generation_parts(name, gen_path, FINAL_STATES))
    if not storage.exists(path):
        return {}
    try:
        record = json.loads(storage.read_text(path))
    except ValueError:
        return {}
    if record.get("experiment_state") != state_path.rsplit("/", 1)[-1]:
        return {}
    return record.get("states", {})


def error_line(text: str) -> str:
    """The telling line of a Ray Tune error file: the Python exception (``ValueError: ...``) if there is one, else
    the first line after Ray's "Failure # N" header."""
    import re

    lines = [line.strip() for line in text.splitlines() if line.strip()]
    body = [line for line in lines if not line.startswith("Failure #")]
    exc = [line for line in body if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*", line)]
    line = exc[-1] if exc else (body[0] if body else "")
    return line[:300]


def load_reports(storage: Storage, name: str, trial_dir: str) -> list[dict[str, Any]]:
    """Every report of one trial, in order, from its result.json (a truncated last line is skipped), without the
    copy of the trial's config Ray writes into every line (``config``: half of a report's memory, read by nothing
    -- the trial's config is in the experiment state)."""
    path = storage.join(name, trial_dir, "result.json")
    if not storage.exists(path):
        return []
    out = []
    for line in storage.read_text(path).splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            report = json.loads(line)
        except ValueError:
            continue  # a line cut by a killed process
        if isinstance(report, dict):
            report.pop("config", None)
            out.append(report)
    return out


# -- Parquet tables ---------------------------------------------------------------------------------------
# trials.parquet and metrics.parquet are documented column by column in docs/results.md. Config columns are
# derived from trainables.config.field_specs(), so a new training option becomes a column without edits here.
TRIALS_FILE = "trials.parquet"
METRICS_FILE = "metrics.parquet"
OUTCOMES = ("solved", "diverged", "budget", "stopped_early")
SCORES = ("exact_acc", "digit_acc", "loss")  # final_*, best_*, best_*_iter columns; loss is lower-is-better
METRIC_FIELDS = (("iter", "int64"), ("loss", "float64"), ("exact_acc", "float64"), ("digit_acc", "float64"),
                 ("lr", "float64"), ("time_s", "float64"), ("samples_per_s", "float64"), ("status", "string"),
                 ("time_total_s", "float64"), ("timestamp", "int64"))
# the report keys tables_from reads (with every ``<score>@<length>`` key): the metrics columns, the scores, and
# what a trials row takes from a trial's last report
_TABLE_KEYS = frozenset([k for k, _ in METRIC_FIELDS] + list(SCORES) + ["iters_to_solve", "node", "hostname",
                                                                          "device", "kernel"])


def _arrow_type(tp: Any):
    import pyarrow as pa

    return {int: pa.int64(), float: pa.float64(), str: pa.string(), bool: pa.bool_()}.get(tp, pa.list_(pa.int64()))


def config_fields() -> list:
    """One typed pyarrow field per training-config key, carrying the key's doc as field metadata."""
    import pyarrow as pa

    from trainables.config import field_specs

    return [pa.field(s.name, _arrow_type(s.type), metadata={"doc": s.doc, "section": s.section})
            for s in field_specs().values()]


def length_columns(lengths: Iterable[int], prefix: str = "") -> list[str]:
    """``exact_acc@L`` and ``digit_acc@L`` per extra evaluation length (``eval_lengths``), by length."""
    return [f"{prefix}{k}@{L}" for L in sorted(set(lengths)) for k in ("exact_acc", "digit_acc")]


def report_lengths(reports: Iterable[dict]) -> set[int]:
    """The extra evaluation lengths that appear in reports as ``exact_acc@L``."""
    out = set()
    for r in reports:
        for key in r:
            name, at, length = key.partition("@")
            if at and name == "exact_acc" and length.isdigit():
                out.add(int(length))
    return out


def trials_schema(lengths: Iterable[int] = ()):
    """The trials table's schema; ``lengths`` adds ``final_exact_acc@L`` / ``final_digit_acc@L`` columns."""
    import pyarrow as pa

    head = [("study", pa.string()), ("trial_id", pa.string()), ("state", pa.string()), ("outcome", pa.string())]
    tail = [(f"final_{k}", pa.float64()) for k in SCORES] + [(f"best_{k}", pa.float64()) for k in SCORES] + \
           [(f"best_{k}_iter", pa.int64()) for k in SCORES] + [
        ("iters_to_solve", pa.int64()), ("iters_run", pa.int64()), ("reports", pa.int64()),
        ("wall_s", pa.float64()), ("train_s", pa.float64()), ("num_failures", pa.int64()),
        ("node", pa.string()), ("hostname", pa.string()), ("device_ran", pa.string()), ("kernel_ran", pa.string()),
        ("error_file", pa.string()), ("trial_dir", pa.string()),
        ("config_id", pa.string()), ("generation", pa.int64()), ("first_generation", pa.int64()),
        ("tune_trials", pa.string()), ("pack", pa.string())]
    tail += [(c, pa.float64()) for c in length_columns(lengths, "final_")]
    return pa.schema([pa.field(n, t) for n, t in head] + config_fields() + [pa.field(n, t) for n, t in tail])


def metrics_schema(lengths: Iterable[int] = ()):
    """The metrics table's schema; ``lengths`` adds ``exact_acc@L`` / ``digit_acc@L`` columns."""
    import pyarrow as pa

    types = {"int64": pa.int64(), "float64": pa.float64(), "string": pa.string()}
    return pa.schema([pa.field("study", pa.string()), pa.field("trial_id", pa.string())]
                     + [pa.field(n, types[t]) for n, t in METRIC_FIELDS]
                     + [pa.field(c, pa.float64()) for c in length_columns(lengths)])


def dedupe_reports(reports: list[dict]) -> list[dict]:
    """One report per iteration, in iteration order; a report repeated by a trial resumed from an older
    checkpoint replaces the earlier one (the later run is what the trial went on from)."""
    by_iter: dict[int, dict] = {}
    for r in reports:
        it = r.get("iter")
        if isinstance(it, int) and not isinstance(it, bool):
            by_iter[it] = r
    return [by_iter[i] for i in sorted(by_iter)]


def trial_outcome(state: str, last_status: str | None) -> str | None:
    """solved/diverged/budget from the loop's own end; stopped_early if Tune ended it before that (a scheduler
    or a stop rule); None while it runs, waits or has errored."""
    if state != "terminated":
        return None
    if last_status in ("solved", "diverged", "budget"):
        return last_status
    return "stopped_early"


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def _best(reports: list[dict], key: str, lower: bool) -> tuple[float | None, int | None]:
    """Best value of ``key`` over the reports and the first iteration that reached it."""
    best, at = None, None
    for r in reports:
        v = _num(r.get(key))
        if v is None or v != v:  # NaN never counts as best
            continue
        if best is None or (v < best if lower else v > best):
            best, at = v, r["iter"]
    return best, at


def _config_value(value: Any, tp: Any) -> Any:
    from trainables.config import coerce

    if value is None:
        return None
    try:
        return coerce(value, tp)
    except (TypeError, ValueError):
        return None


def continues_of(config: dict) -> dict:
    """What a trial continues (``_continues`` in its Tune config): {"trial": logical id, "checkpoint": uri} or {}."""
    raw = config.get("_continues") or ""
    try:
        return json.loads(raw) if raw else {}
    except (TypeError, ValueError):
        return {}


def logical_trials(trials: list[dict]) -> list[list[dict]]:
    """Tune trials grouped into logical trials, each a chain oldest first: a trial continued in a later generation
    joins the chain of the logical trial it names. Ordered by the first trial's id."""
    chains: dict[str, list[dict]] = {}
    for t in sorted(trials, key=lambda t: (t["generation"], t["trial_id"])):
        root = continues_of(t["tune_config"]).get("trial")
        if root in chains:
            chains[root].append(t)
        else:
            chains[t["trial_id"]] = [t]
    return [chains[k] for k in sorted(chains)]


def training_values(config: dict) -> dict:
    """A trial's training config as it trained (trainables.seeding.training_values: the one rule)."""
    from trainables.seeding import training_values as rule

    return rule(config)


def _chain_reports(storage: Storage, name: str, chain: list[dict]) -> tuple[list[dict], float | None]:
    """The logical trial's one curve (later reports of an iteration win) and its wall seconds over all segments."""
    reports, wall = [], None
    for t in chain:
        seg = dedupe_reports(trial_reports(storage, name, t))
        if not seg and t["last_result"].get("iter") is not None:
            seg = [t["last_result"]]  # trial folder missing or not yet flushed: fall back to Tune's copy
        if seg and _num(seg[-1].get("time_total_s")) is not None:
            wall = (wall or 0.0) + _num(seg[-1].get("time_total_s"))
        reports += [_table_fields(r) for r in seg]
    return dedupe_reports(reports), wall


def _table_fields(report: dict) -> dict:
    """What tables_from reads of a report (all of a study's reports are held at once: at 10,000 trials, Ray's
    other keys were ~60 MB)."""
    return {k: v for k, v in report.items() if k in _TABLE_KEYS or "@" in k}


def build_tables(storage: Storage, name: str):
    """(trials, metrics) as pyarrow Tables from what Ray Tune wrote; works on an unfinished study too. One trials
    row per logical trial (its generations joined). Raises UserError if an experiment state is unreadable;
    returns (None, None) if there is none yet."""
    trials = load_trials(storage, name)
    if not trials and experiment_state_path(storage, name) is None:
        return None, None
    per_trial = [(chain, *_chain_reports(storage, name, chain)) for chain in logical_trials(trials)]
    return tables_from(name, per_trial, _identity(storage, name), _table_metadata(storage, name))


def tables_from(name: str, per_trial: list, ids=None, meta: Optional[dict] = None):
    """The two tables from logical trials given as (chain of Tune-trial dicts as load_trials gives them, reports
    oldest first, wall seconds or None) -- from storage (build_tables) or from a driver's memory (the live page)."""
    import pyarrow as pa

    from trainables.config import field_specs

    specs = field_specs()
    trial_rows: list[dict] = []
    metric_rows: list[dict] = []
    lengths = report_lengths(r for _, reports, _ in per_trial for r in reports)
    extra = length_columns(lengths)
    for chain, reports, wall in per_trial:
        first, t = chain[0], chain[-1]
        config = t["config"]
        last = reports[-1] if reports else {}
        row: dict[str, Any] = {"study": name, "trial_id": first["trial_id"], "state": t["state"],
                               "outcome": trial_outcome(t["state"], last.get("status"))}
        for key, spec in specs.items():
            row[key] = _config_value(config.get(key), spec.type)
        for k in SCORES:
            row[f"final_{k}"] = _num(last.get(k))
            row[f"best_{k}"], row[f"best_{k}_iter"] = _best(reports, k, lower=(k == "loss"))
        its = last.get("iters_to_solve")
        row.update({
            "iters_to_solve": its if isinstance(its, int) else None,
            "iters_run": last.get("iter"), "reports": len(reports),
            "wall_s": wall, "train_s": _num(last.get("time_s")),
            "num_failures": sum(c.get("num_failures", 0) for c in chain), "node": last.get("node"),
            "hostname": last.get("hostname"), "device_ran": last.get("device"), "kernel_ran": last.get("kernel"),
            "error_file": t.get("error_file"), "trial_dir": t.get("dir"),
            "config_id": ids(config) if ids else None, "generation": t.get("generation", 0),
            "first_generation": first.get("generation", 0),
            "tune_trials": ",".join(c.get("pack") or c["trial_id"] for c in chain), "pack": t.get("pack"),
            **{f"final_{c}": _num(last.get(c)) for c in extra},
        })
        trial_rows.append(row)
        for r in reports:
            metric_rows.append({"study": name, "trial_id": first["trial_id"],
                                **{k: (r.get(k) if typ != "float64" else _num(r.get(k))) for k, typ in METRIC_FIELDS},
                                **{c: _num(r.get(c)) for c in extra}})
    meta = meta or {"adder_sweep.study": name}
    trials_table = pa.Table.from_pylist(trial_rows, schema=trials_schema(lengths)).replace_schema_metadata(meta)
    metrics_table = pa.Table.from_pylist(metric_rows, schema=metrics_schema(lengths)).replace_schema_metadata(meta)
    return trials_table, metrics_table


def identity_function(spec):
    """config -> configuration id under ``spec`` (orchestrator/spec/plan.py)."""
    from ..spec.plan import config_id, identity_keys

    keys = identity_keys(spec)
    return lambda config: config_id(config, keys)


def _identity(storage: Storage, name: str):
    """config -> configuration id under the study's current spec (orchestrator/spec/plan.py), or None."""
    from ..spec.space import StudySpec
    from ..studydir.storage import record_or_none

    try:
        spec = StudySpec.from_json((record_or_none(storage, name) or {})["spec"])
    except (KeyError, TypeError, ValueError):
        return None
    return identity_function(spec)


def _table_metadata(storage: Storage, name: str) -> dict[str, str]:
    """The study's name, metric, mode and swept keys, so a table alone says what was searched."""
    from ..studydir.storage import record_or_none

    meta = {"adder_sweep.study": name}
    record = record_or_none(storage, name)
    if record is None:
        return meta
    spec = record["spec"]
    swept = [k for k, v in spec.get("space", {}).items() if isinstance(v, dict)]
    meta.update({"adder_sweep.metric": spec.get("metric", ""), "adder_sweep.mode": spec.get("mode", ""),
                 "adder_sweep.swept": ",".join(swept)})
    return meta


def _write_table(storage: Storage, table, path: str) -> None:
    from ..studydir.records import parquet_bytes

    storage.write_bytes(path, parquet_bytes(table))


def refresh_tables(storage: Storage, name: str):
    """Build both tables, write them into the study directory and return them (raises UserError)."""
    trials, metrics = build_tables(storage, name)
    if trials is None:
        return _exported_tables(storage, name)
    # metrics first: a reader that sees the new trials table finds metrics at least as new
    _write_table(storage, metrics, storage.join(name, METRICS_FILE))
    _write_table(storage, trials, storage.join(name, TRIALS_FILE))
    return trials, metrics


def tables_are_current(storage: Storage, name: str) -> bool:
    """True if trials.parquet and metrics.parquet exist and are newer than every file Ray wrote for the study
    (experiment states and trials' result.json, every generation) and than the study record."""
    from pyarrow.fs import FileSelector, FileType

    base = storage.join(name)
    tables = [storage.fs.get_file_info(storage.join(name, f)) for f in (TRIALS_FILE, METRICS_FILE)]
    if any(i.type != FileType.File or i.mtime is None for i in tables):
        return False
    written = min(i.mtime for i in tables)
    for info in storage.fs.get_file_info(FileSelector(base, recursive=True)):
        if info.type == FileType.File and (info.base_name == "result.json" or info.base_name == "adder_study.json"
                                           or info.base_name.startswith("experiment_state-")):
            if info.mtime is not None and info.mtime > written:
                return False
    return True


def read_tables(storage: Storage, name: str):
    """(trials, metrics) as pyarrow Tables: the Parquet files when they are current, else built in memory from
    Ray's files -- nothing is written either way. UserError if there is nothing to tabulate."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if tables_are_current(storage, name):
        try:
            return (pq.read_table(storage.join(name, TRIALS_FILE), filesystem=storage.fs),
                    pq.read_table(storage.join(name, METRICS_FILE), filesystem=storage.fs))
        except (pa.ArrowException, OSError):
            pass  # damaged: build them anew below
    trials, metrics = build_tables(storage, name)
    if trials is None:
        return _exported_tables(storage, name)
    return trials, metrics


def _exported_tables(storage: Storage, name: str):
    """A study with no Ray Tune state: its tables as they are when it has them (an exported study, e.g. the
    tables and record kept under docs/reproduction/), else UserError -- nothing to tabulate."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyarrow.fs import FileType

    paths = [storage.join(name, f) for f in (TRIALS_FILE, METRICS_FILE)]
    if all(storage.fs.get_file_info(p).type == FileType.File for p in paths):
        try:
            return tuple(pq.read_table(p, filesystem=storage.fs) for p in paths)
        except (pa.ArrowException, OSError) as exc:
            raise UserError(f"study {name!r}: {paths[0].rsplit('/', 1)[-1]} or {METRICS_FILE} is unreadable "
                            f"({type(exc).__name__}) and there is no Ray Tune state to rebuild them from") from None
    raise UserError(f"study {name!r} at {storage.uri(name)} has no Ray Tune state yet (no trial started); "
                    "there is nothing to tabulate")


def write_tables(storage: Storage, name: str) -> tuple[str, str] | None:
    """Write trials.parquet and metrics.parquet into the study directory; returns their paths.

    Called after every sweep and resume, so a study whose state cannot be read (interrupted before its first
    trial, or a damaged state file) gets a warning, never an exception that would fail the sweep;
    ``report`` uses ``refresh_tables``, which raises instead.
    """
    import sys

    try:
        refresh_tables(storage, name)
    except (UserError, OSError) as exc:
        print(f"adder-sweep: result tables not written: {exc}", file=sys.stderr)
        return None
    return storage.join(name, TRIALS_FILE), storage.join(name, METRICS_FILE)
