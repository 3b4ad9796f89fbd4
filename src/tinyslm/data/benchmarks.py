"""The benchmark registry: each benchmark is data + prompt style + answer extractor + metric.

Like lm-evaluation-harness's task YAMLs, an entry *declares* a benchmark; the evaluation runner is the
same for all of them. An entry names

* where its rows come from: a file under the data directory (offline) or a Hugging Face dataset id,
* how a raw row becomes an :class:`Example` (id, question, gold answer, worked solution),
* its answer style (``number`` or ``math``), which picks the prompt wording and the scorer,
* where its few-shot exemplars come from (a training pool, never the evaluated set).

A user's own test set is a benchmark too: ``--benchmark path/to/test.jsonl`` or a Hub dataset id (see
:func:`user_benchmark`).

Data directory: ``--data-dir`` else ``$TINYSLM_DATA_DIR``; with neither, rows load from the Hub by id.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinyslm.core.errors import UserError
from tinyslm.scoring.extract import ANSWER_STYLES, last_boxed
from tinyslm.scoring.gold import gold_from_gsm8k_answer, gold_from_math_solution

DATA_DIR_ENV = "TINYSLM_DATA_DIR"

# Orca-Math has no test split: we hold out a fixed, seeded sample of 500 rows for evaluation, and the
# training subset (tiny-slm-train --dataset orcamath) is drawn from the remaining rows only.
ORCAMATH_HOLDOUT_SEED = 20240601
ORCAMATH_HOLDOUT_SIZE = 500


@dataclass(frozen=True)
class Example:
    """One problem. ``reference`` is the gold answer string the scorer compares against."""

    id: str
    question: str
    reference: str
    solution: str | None = None  # worked solution, used for exemplars and training targets


@dataclass(frozen=True)
class HubSource:
    path: str
    split: str
    configs: tuple[str | None, ...] = (None,)  # several configs are concatenated (MATH's subjects)


@dataclass(frozen=True)
class Benchmark:
    name: str
    description: str
    answer_style: str  # "number" | "math"
    local_file: str | None  # relative to the data directory; None = hub only
    hub: HubSource | None
    parse_local: Callable[[Path], list[Example]] | None
    parse_hub: Callable[[list[dict]], list[Example]] | None
    fewshot_pool: str  # a key of FEWSHOT_POOLS, or "self" (exemplars taken from the set, then excluded)
    n_expected: dict[str, int] = field(default_factory=dict)  # documented sizes, by source
    # A user's test set (user_benchmark), read when it was named: what --benchmark must say to name it
    # again (absolute path or dataset id, and style), where its rows came from, and the rows.
    spec: str | None = None
    source: str | None = None
    rows: tuple[Example, ...] | None = None
    # the records' question and answer fields where they are not named so (``:question=problem``)
    fields: tuple[str, str] | None = None


# ---------------------------------------------------------------------------------------------------
# File readers: every malformed record is a UserError naming the file and line.


def read_jsonl_records(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict]]:
    if not path.is_file():
        raise UserError(f"benchmark file not found: {path} (check --data-dir / ${DATA_DIR_ENV})")
    out = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: malformed JSON record ({e.msg})") from None
            if not isinstance(rec, dict):
                raise UserError(f"{path}:{lineno}: expected a JSON object")
            missing = [k for k in required if k not in rec]
            if missing:
                raise UserError(f"{path}:{lineno}: record lacks field(s) {', '.join(missing)}")
            out.append((lineno, rec))
    if not out:
        raise UserError(f"{path}: no records")
    return out


def _num_str(x: Any) -> str:
    """Gold numbers from JSON floats: 51.0 -> '51.0' (the scorer compares numbers, not strings)."""
    return str(x)


def _kind(v: Any) -> str:
    """How a JSON value is named in messages: null, a number, a list, ... (not Python type names)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return f"the number {v}"
    if isinstance(v, str):
        return "an empty string"
    return "a list" if isinstance(v, list) else "an object"


def record_text(rec: dict, key: str, where: str, *, allow_empty: bool = False) -> str:
    """``rec[key]`` as text, or a UserError naming ``where`` (file:line): a question that is null or a number
    would otherwise end in an AttributeError deep in the parser, or become the prompt "None"."""
    v = rec.get(key)
    if isinstance(v, str) and (allow_empty or v.strip()):
        return v
    need = "a string" if allow_empty else "a non-empty string"
    raise UserError(f"{where}: field '{key}' must be {need}, got {_kind(v)}")


def record_answer(rec: dict, key: str, where: str) -> str:
    """A gold answer, which JSON files hold as a number or as text; anything else is a UserError at ``where``."""
    v = rec.get(key)
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return _num_str(v)
    if isinstance(v, str) and v.strip():
        return v
    raise UserError(f"{where}: field '{key}' must be a number or a non-empty string, got {_kind(v)}")


_CALC_ANNOTATION = re.compile(r"<<[^<>]*>>")


def clean_gsm8k_solution(answer: str) -> str:
    """GSM8K solutions carry calculator annotations (``<<16-3-4=9>>``) that no model should imitate."""
    return _CALC_ANNOTATION.sub("", answer).strip()


def _gsm8k_rows(rows: list[tuple[int, dict]], path: Path | str) -> list[Example]:
    out = []
    for lineno, r in rows:
        where = f"{path}:{lineno}"
        question = record_text(r, "question", where)
        answer = record_text(r, "answer", where)  # the worked solution ending in '#### N': text, not a number
        if "####" not in answer:
            raise UserError(f"{where}: GSM8K answer has no '####' line")
        out.append(
            Example(
                id=str(len(out)),
                question=question.strip(),
                reference=gold_from_gsm8k_answer(answer),
                solution=clean_gsm8k_solution(answer),
            )
        )
    return out


def parse_gsm8k_file(path: Path) -> list[Example]:
    return _gsm8k_rows(read_jsonl_records(path, ("question", "answer")), path)


def parse_svamp_file(path: Path) -> list[Example]:
    if not path.is_file():
        raise UserError(f"benchmark file not found: {path} (check --data-dir / ${DATA_DIR_ENV})")
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    if not isinstance(rows, list) or not rows:
        raise UserError(f"{path}: expected a non-empty JSON array of SVAMP problems")
    return [_svamp_row(r, f"{path} (item {i})") for i, r in enumerate(rows)]


def _svamp_row(r: Any, where: str) -> Example:
    if not isinstance(r, dict) or not all(k in r for k in ("Body", "Question", "Answer")):
        raise UserError(f"{where}: SVAMP record needs Body, Question and Answer")
    body = record_text(r, "Body", where, allow_empty=True).strip()
    q = record_text(r, "Question", where).strip()
    return Example(
        id=str(r.get("ID", where)), question=f"{body} {q}", reference=record_answer(r, "Answer", where)
    )


def _math_row(r: dict, where: str, default_id: int) -> Example:
    problem = record_text(r, "problem", where)
    solution = record_text(r, "solution", where)
    has_answer = r.get("answer") not in (None, "")
    gold = record_answer(r, "answer", where) if has_answer else gold_from_math_solution(solution)
    if not gold:
        raise UserError(f"{where}: MATH record has no answer and no \\boxed{{}} in its solution")
    rid = r.get("unique_id", r.get("idx", default_id))
    return Example(id=str(rid), question=problem.strip(), reference=gold, solution=solution)


def parse_math_file(path: Path) -> list[Example]:
    rows = read_jsonl_records(path, ("problem", "solution"))
    return [_math_row(r, f"{path}:{lineno}", i) for i, (lineno, r) in enumerate(rows)]


def parse_asdiv_file(path: Path) -> list[Example]:
    out = []
    for lineno, r in read_jsonl_records(path, ("body", "question", "answer")):
        where = f"{path}:{lineno}"
        body = record_text(r, "body", where, allow_empty=True).strip()
        q = f"{body} {record_text(r, 'question', where).strip()}"
        gold = record_answer(r, "answer", where).strip()
        out.append(Example(id=str(r.get("idx", len(out))), question=q, reference=gold))
    return out


def parse_mawps_file(path: Path) -> list[Example]:
    out = []
    for lineno, r in read_jsonl_records(path, ("input", "target")):
        where = f"{path}:{lineno}"
        question = record_text(r, "input", where).strip()
        gold = record_answer(r, "target", where)
        out.append(Example(id=str(r.get("idx", len(out))), question=question, reference=gold))
    return out


# Hub rows (same field names as the offline copies, or close to them).


def _hub_gsm8k(rows: list[dict]) -> list[Example]:
    return _gsm8k_rows(list(enumerate(rows, 1)), "hub:openai/gsm8k")


def _hub_svamp(rows: list[dict]) -> list[Example]:
    return [_svamp_row(r, f"hub:ChilleD/SVAMP row {i}") for i, r in enumerate(rows)]


def _hub_math(rows: list[dict]) -> list[Example]:
    return [_math_row(r, f"hub row {i}", i) for i, r in enumerate(rows)]


def orcamath_holdout_indices(n_rows: int) -> list[int]:
    """The fixed, seeded 500 row indices of Orca-Math held out for evaluation (never trained on)."""
    rng = random.Random(ORCAMATH_HOLDOUT_SEED)
    return sorted(rng.sample(range(n_rows), ORCAMATH_HOLDOUT_SIZE))


def orcamath_answer(answer: str) -> str:
    """Orca-Math answers are prose; the gold is the last number in them (what the paper scored)."""
    from tinyslm.scoring.extract import extract_answer

    ext = extract_answer(answer, "number")
    return ext.text or ""


def _hub_orcamath(rows: list[dict]) -> list[Example]:
    keep = orcamath_holdout_indices(len(rows))
    where = "hub:microsoft/orca-math-word-problems-200k row {}".format
    return [
        Example(
            id=str(i),
            question=record_text(rows[i], "question", where(i)).strip(),
            reference=orcamath_answer(record_text(rows[i], "answer", where(i))),
        )
        for i in keep
    ]


# ---------------------------------------------------------------------------------------------------
# A user's own test set: --benchmark path/to/test.jsonl, or a Hub dataset id owner/name


HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+")  # a Hugging Face dataset id, owner/name
# what --benchmark names on the Hub: owner/name, optionally @split (default test)
_HUB_TEST_SET = re.compile(rf"(?P<id>{HUB_ID.pattern})(?:@(?P<split>[A-Za-z0-9_.-]+))?")
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
DEFAULT_FIELDS = ("question", "answer")  # a user's record's question and answer, unless the spec renames them


def _user_gold(answer: str) -> tuple[str, str | None]:
    """(gold, worked solution) from a user record's ``answer``: a worked solution ending in ``#### N``
    (GSM8K's form) or holding a ``\\boxed{}`` (MATH's) gives its marked answer and is kept as the solution;
    anything else is the gold answer itself."""
    if "####" in answer:
        return gold_from_gsm8k_answer(answer), clean_gsm8k_solution(answer)
    if "\\boxed" in answer or "\\fbox" in answer:
        return last_boxed(answer) or "", answer.strip()
    return answer.strip(), None


def user_examples(
    records: list[tuple[int, dict]],
    where: Callable[[int], str],
    fields: tuple[str, str] = DEFAULT_FIELDS,
) -> list[Example]:
    """The problems of a user's test set, from ``(place, record)`` pairs (a file's line numbers, a Hub
    dataset's row numbers; ``where(place)`` names one in errors). Each record: a question and an answer (a
    number, the answer as text, or a worked solution with ``#### N`` or ``\\boxed{}``), in the fields named by
    ``fields`` (``question`` and ``answer`` unless the spec says otherwise); optional ``id`` (default: the
    record's number from 0) and ``solution`` (a worked solution, for few-shot exemplars). Ids must be
    unique: the predictions of a resumed run are matched to problems by id."""
    q_field, a_field = fields
    out: list[Example] = []
    first: dict[str, str] = {}
    for place, r in records:
        at = where(place)
        if not isinstance(r, dict) or q_field not in r or a_field not in r:
            keys = f" (it has {', '.join(map(str, list(r)[:8]))})" if isinstance(r, dict) and r else ""
            raise UserError(
                f"{at}: a record needs the fields {q_field} and {a_field}{keys}; name others after the data: "
                "...:question=FIELD:answer=FIELD"
            )
        question = record_text(r, q_field, at).strip()
        gold, solution = _user_gold(record_answer(r, a_field, at))
        if not gold:
            raise UserError(f"{at}: field '{a_field}' has an empty \\boxed{{}}")
        if r.get("solution") is not None:
            solution = record_text(r, "solution", at).strip()
        rid = r.get("id", len(out))
        if isinstance(rid, bool) or not isinstance(rid, (str, int)) or not str(rid).strip():
            raise UserError(f"{at}: field 'id' must be a non-empty string or an integer, got {_kind(rid)}")
        if str(rid) in first:
            raise UserError(f"{at}: duplicate id {rid!r} (first at {first[str(rid)]})")
        first[str(rid)] = at
        out.append(Example(id=str(rid), question=question, reference=gold, solution=solution))
    return out


def parse_user_file(path: Path, fields: tuple[str, str] = DEFAULT_FIELDS) -> list[Example]:
    """A user's JSONL test set (see :func:`user_examples`); every bad record is a UserError naming file:line."""
    return user_examples(read_jsonl_records(path, ()), lambda n: f"{path}:{n}", fields)


def user_style(examples: list[Example]) -> str:
    """``math`` when any gold answer is LaTeX (it holds a backslash: ``\\frac{1}{2}``, ``\\sqrt{2}``), else
    ``number``. The style picks the prompt (``#### <number>`` or ``\\boxed{}``) and the scorer; number style
    still compares a gold that is not a number (``Yes``, ``3:30 p.m.``) as text."""
    return "math" if any("\\" in e.reference for e in examples) else "number"


def _split_options(spec: str) -> tuple[str, list[str]]:
    """``PATH.jsonl:math:question=problem`` or ``owner/name@split:number`` -> (what names the data, the
    options after it); a spec that names no user data with options -> (spec, [])."""
    parts = spec.split(":")
    for k in range(1, len(parts)):
        data = ":".join(parts[:k])
        if data.endswith(".jsonl") or _HUB_TEST_SET.fullmatch(data):
            return data, parts[k:]
    return spec, []


def _read_options(spec: str, options: list[str]) -> tuple[str | None, tuple[str, str]]:
    """The answer style (None: inferred) and the (question, answer) field names a spec's options give."""
    style, seen = None, set()
    fields = {key: key for key in DEFAULT_FIELDS}  # each option's default is its own name
    for opt in options:
        key, eq, value = opt.partition("=")
        if opt in ANSWER_STYLES:
            key, value = "style", opt
        elif not (eq and key in fields and value.strip()):
            raise UserError(
                f"{spec}: unknown option '{opt}' after the data (an answer style: {' or '.join(ANSWER_STYLES)}; "
                "or question=FIELD, answer=FIELD)"
            )
        if key in seen:
            raise UserError(f"{spec}: {key} is given twice")
        seen.add(key)
        if key == "style":
            style = value
        else:
            fields[key] = value.strip()
    return style, (fields["question"], fields["answer"])


def benchmark_name(spec: str) -> str:
    """The name (and output directory) a ``--benchmark`` value's results are filed under, without reading
    anything: a registered benchmark's own name, a JSONL file's stem, a Hub dataset's ``owner--name`` (plus
    ``--<split>`` for a split other than ``test``). The report uses it to match what a study declared with
    what it finds on disk."""
    data = _split_options(spec)[0]
    if data.endswith(".jsonl"):
        return Path(data).name[: -len(".jsonl")]
    hub = _HUB_TEST_SET.fullmatch(data)
    if hub is None:
        return spec
    split = hub["split"] or "test"
    return hub["id"].replace("/", "--") + ("" if split == "test" else f"--{split}")


def answer_style_of(spec: str) -> str:
    """The answer style a ``--benchmark`` value scores with. A registered name or a value that states its
    style (``owner/name:number``, as results.json's ``benchmark_spec`` does) needs no data read, so
    rescoring works offline; otherwise the set is read to infer it (:func:`user_style`)."""
    if spec in BENCHMARKS:
        return BENCHMARKS[spec].answer_style
    style = next((o for o in _split_options(spec)[1] if o in ANSWER_STYLES), None)
    return style or get_benchmark(spec).answer_style


def _user_benchmark(
    data: str, style: str | None, fields: tuple[str, str], examples: list[Example], source: str
) -> Benchmark:
    """The registry entry of a user's test set whose rows are read (``source``: the file, or ``hub:...``)."""
    style = style or user_style(examples)
    where = source.removeprefix("hub:")
    # each field named otherwise than the default (which is the option's own name), as an option again
    renamed = "".join(
        f":{key}={name}" for key, name in zip(DEFAULT_FIELDS, fields, strict=True) if name != key
    )
    return Benchmark(
        name=benchmark_name(data),
        description=f"your test set {where}",
        answer_style=style,
        local_file=None,  # neither read from the data directory
        hub=None,  # nor loaded again: the rows are below
        parse_local=None,
        parse_hub=None,
        fewshot_pool="gsm8k-train" if style == "number" else "self",
        spec=f"{where}:{style}{renamed}",
        source=source,
        rows=tuple(examples),
        fields=fields if renamed else None,
    )


def user_benchmark(spec: str) -> Benchmark | None:
    """The benchmark a ``--benchmark`` value names when it is a test set of the user's own; ``None`` when it
    names none. A JSONL file (``PATH.jsonl``), named by its stem, or a Hugging Face dataset id
    (``owner/name``, its ``test`` split, or ``owner/name@split``, through ``datasets``), named ``owner--name``
    (``owner--name--split``); either may end in ``:math`` or ``:number`` to choose the answer style instead
    of :func:`user_style`. Number-style sets draw few-shot exemplars from GSM8K train (as GSM8K does,
    skipping any question the set also holds); math-style ones from their own records that have a worked
    solution, which are then not scored."""
    data, options = _split_options(spec)
    style, fields = _read_options(spec, options)
    if data.endswith(".jsonl"):
        path = Path(data).expanduser()
        if not path.is_file():
            raise UserError(f"benchmark file not found: {data}")
        name = benchmark_name(data)
        if not _FILE_NAME.fullmatch(name):
            raise UserError(
                f"{data}: a benchmark file's name (here {name!r}) names its output directory: use letters, "
                "digits, '.', '_' or '-'"
            )
        if name in BENCHMARKS:
            raise UserError(
                f"{data}: '{name}' is a registered benchmark (its offline copy is read from --data-dir); "
                "rename your file so their results cannot be mixed up"
            )
        path = path.resolve()
        return _user_benchmark(data, style, fields, parse_user_file(path, fields), str(path))
    hub = _HUB_TEST_SET.fullmatch(data)
    if hub is None or data.startswith((".", "~")):
        return None
    hub_id, split = hub["id"], hub["split"] or "test"
    for b in BENCHMARKS.values():
        if b.hub is not None and b.hub.path == hub_id:
            raise UserError(
                f"{data} is where the registered benchmark '{b.name}' comes from: use --benchmark {b.name}"
            )
    src = HubSource(hub_id, split)
    rows = load_hub_rows(src, offline_copy=False)
    examples = user_examples(list(enumerate(rows)), lambda i: f"hub:{data} row {i}", fields)
    return _user_benchmark(data, style, fields, examples, f"hub:{data}")


# ---------------------------------------------------------------------------------------------------
# The registry.

MATH_SUBJECTS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)

BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in [
        Benchmark(
            "gsm8k",
            "GSM8K grade-school math word problems, test split",
            "number",
            "gsm8k/test.jsonl",
            HubSource("openai/gsm8k", "test", ("main",)),
            parse_gsm8k_file,
            _hub_gsm8k,
            "gsm8k-train",
            {"offline": 1319, "hub": 1319},
        ),
        Benchmark(
            "svamp",
            "SVAMP robustness variations of simple arithmetic word problems",
            "number",
            "svamp/SVAMP.json",
            HubSource("ChilleD/SVAMP", "test"),
            parse_svamp_file,
            _hub_svamp,
            "gsm8k-train",
            {"offline": 1000, "hub": 300},
        ),
        Benchmark(
            "math",
            "MATH competition problems, test split, all 7 subjects",
            "math",
            "math/test.jsonl",
            HubSource("EleutherAI/hendrycks_math", "test", MATH_SUBJECTS),
            parse_math_file,
            _hub_math,
            "self",
            {"offline": 5000, "hub": 5000},
        ),
        Benchmark(
            "math500",
            "MATH-500, the PRM800K held-out subset of MATH test",
            "math",
            "math500/test.jsonl",
            HubSource("HuggingFaceH4/MATH-500", "test"),
            parse_math_file,
            _hub_math,
            "self",
            {"offline": 500, "hub": 500},
        ),
        Benchmark(
            "orcamath",
            "Orca-Math word problems: a fixed seeded 500-row held-out set (hub only)",
            "number",
            None,
            HubSource("microsoft/orca-math-word-problems-200k", "train"),
            None,
            _hub_orcamath,
            "gsm8k-train",
            {"hub": 500},
        ),
        Benchmark(
            "asdiv",
            "ASDiv diverse elementary math word problems",
            "number",
            "asdiv/test.jsonl",
            None,
            parse_asdiv_file,
            None,
            "gsm8k-train",
            {"offline": 2215},
        ),
        Benchmark(
            "mawps",
            "MAWPS (AddSub, MultiArith, SingleEq, SingleOp)",
            "number",
            "mawps/test.jsonl",
            None,
            parse_mawps_file,
            None,
            "gsm8k-train",
            {"offline": 2065},
        ),
    ]
}

# Training pools that exemplars are drawn from: (local file, hub source, parser for each).
FEWSHOT_POOLS: dict[
    str, tuple[str, HubSource, Callable[[Path], list[Example]], Callable[[list[dict]], list[Example]]]
] = {
    "gsm8k-train": (
        "gsm8k/train.jsonl",
        HubSource("openai/gsm8k", "train", ("main",)),
        parse_gsm8k_file,
        _hub_gsm8k,
    ),
}


def get_benchmark(name: str) -> Benchmark:
    """A registered benchmark by name, or a user's JSONL file or Hub dataset (:func:`user_benchmark`)."""
    if name in BENCHMARKS:
        return BENCHMARKS[name]
    bench = user_benchmark(name)
    if bench is None and Path(name).suffix.lower() in (".json", ".csv", ".tsv", ".parquet", ".txt"):
        raise UserError(
            f"{name}: a test set of your own is a JSON Lines file ending in .jsonl, one object per line "
            "with question and answer"
        )
    if bench is None:
        raise UserError(
            f"unknown benchmark '{name}' (choose from: {', '.join(BENCHMARKS)}; or a .jsonl file or Hugging Face "
            "dataset id of your own)"
        )
    return bench


def parse_benchmark_list(spec: str) -> list[Benchmark]:
    names = list(dict.fromkeys(s.strip() for s in spec.split(",") if s.strip()))
    if not names:
        raise UserError("no benchmark given (e.g. --benchmark gsm8k,svamp)")
    benches = [get_benchmark(n) for n in names]
    seen: dict[str, str] = {}
    for given, b in zip(names, benches, strict=True):
        if b.name in seen:  # two files with one stem would write into one output directory
            raise UserError(
                f"{seen[b.name]} and {given} would both be filed as '{b.name}': rename one of them"
            )
        seen[b.name] = given
    return benches


def resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    """--data-dir, else $TINYSLM_DATA_DIR, else None (= load from the Hub). A named dir must exist."""
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_ENV) or None
    if data_dir is None:
        return None
    p = Path(data_dir).expanduser()
    if not p.is_dir():
        raise UserError(f"data directory not found: {p} (set --data-dir or ${DATA_DIR_ENV})")
    return p


def load_hub_rows(src: HubSource, *, offline_copy: bool = True) -> list[dict]:
    """Every row of ``src`` through ``datasets``; ``offline_copy``: the data directory holds the same rows
    (a registered benchmark), which the error for a missing ``datasets`` then points to."""
    try:
        import datasets  # optional: only users who load from the Hub need it
    except ImportError:
        raise UserError(
            f"loading '{src.path}' from the Hugging Face Hub needs the 'datasets' package "
            "(pip install 'tiny-slm[hub]')"
            + (", or pass --data-dir with the offline files" if offline_copy else "")
        ) from None
    rows: list[dict] = []
    for cfg in src.configs:
        try:
            ds = datasets.load_dataset(src.path, cfg, split=src.split)
        except Exception as e:  # network, auth, missing dataset: all user-facing
            raise UserError(
                f"could not load '{src.path}' from the Hugging Face Hub ({type(e).__name__}: {e})".splitlines()[
                    0
                ]
            ) from None
        rows.extend(dict(r) for r in ds)
    return rows


@dataclass
class LoadedBenchmark:
    benchmark: Benchmark
    examples: list[Example]
    source: str  # file path or hub:<id>


def load_examples(bench: Benchmark, data_dir: Path | None) -> LoadedBenchmark:
    """All rows of a benchmark, from the data dir when given, else from the Hub; a user's file from itself."""
    if bench.rows is not None and bench.source is not None:  # a user's test set, read when it was named
        return LoadedBenchmark(bench, list(bench.rows), bench.source)
    if data_dir is not None:
        if bench.local_file is None or bench.parse_local is None:
            raise UserError(
                f"benchmark '{bench.name}' has no offline copy; run without --data-dir/${DATA_DIR_ENV} to load it "
                f"from the Hugging Face Hub ({bench.hub.path if bench.hub else '?'})"
            )
        path = data_dir / bench.local_file
        return LoadedBenchmark(bench, bench.parse_local(path), str(path))
    if bench.hub is None or bench.parse_hub is None:
        raise UserError(
            f"benchmark '{bench.name}' is only available offline: pass --data-dir (or set ${DATA_DIR_ENV})"
        )
    rows = load_hub_rows(bench.hub, offline_copy=bench.local_file is not None)
    return LoadedBenchmark(bench, bench.parse_hub(rows), f"hub:{bench.hub.path}")


def load_fewshot_pool(pool: str, data_dir: Path | None) -> list[Example]:
    local, hub, parse_local, parse_hub = FEWSHOT_POOLS[pool]
    if data_dir is not None:
        return parse_local(data_dir / local)
    return parse_hub(load_hub_rows(hub))


def _norm_q(q: str) -> str:
    return " ".join(q.lower().split())


@dataclass
class FewShotPlan:
    exemplars: list[Example]
    eval_examples: list[Example]  # the examples to score (exemplars removed where drawn from the set)
    source: str  # where exemplars came from
    excluded_ids: list[str]  # ids removed from scoring because they serve as exemplars


def plan_fewshot(loaded: LoadedBenchmark, shots: int, seed: int, data_dir: Path | None) -> FewShotPlan:
    """Choose ``shots`` exemplars by seed, never from the evaluated set.

    For benchmarks with a training pool the exemplars come from it, skipping any whose question also
    appears in the evaluated set. MATH has no offline train split, so its exemplars are drawn (by seed)
    from the set itself and those problems are then excluded from scoring, which results.json records.
    """
    examples = loaded.examples
    if shots == 0:
        return FewShotPlan([], examples, "none", [])
    rng = random.Random(seed)
    bench = loaded.benchmark
    if bench.fewshot_pool == "self":
        candidates = [e for e in examples if e.solution]
        if len(candidates) <= shots:
            raise UserError(
                f"{bench.name}: {len(candidates)} problem(s) with a worked solution to draw exemplars from; "
                f"--shots {shots} needs more"
            )
        chosen = rng.sample(candidates, shots)
        ids = {e.id for e in chosen}
        return FewShotPlan(
            chosen,
            [e for e in examples if e.id not in ids],
            f"{loaded.source} (excluded from scoring)",
            sorted(ids),
        )
    pool = load_fewshot_pool(bench.fewshot_pool, data_dir)
    evaluated = {_norm_q(e.question) for e in examples}
    pool = [e for e in pool if e.solution and _norm_q(e.question) not in evaluated]
    if len(pool) < shots:
        raise UserError(
            f"few-shot pool '{bench.fewshot_pool}' has only {len(pool)} usable exemplars, need {shots}"
        )
    return FewShotPlan(rng.sample(pool, shots), examples, bench.fewshot_pool, [])
