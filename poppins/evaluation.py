"""``python -m poppins eval`` / ``poppins.evaluate()``: measure a trained model the way clients ask.

    python -m poppins eval -m .poppins -i train.xml [--probes probes.xml] [--json]

Every case goes through the engine's chat path (``Model.chat``, what ``infer``, ``chat`` and
``serve`` use), greedy, and compares the rendered answer with the rendered expected answer
after trimming whitespace ("exact").  No system message is sent unless a row names one (what
"no", "empty" and a client's system message mean is ``poppins.corpus.tokens.resolve_system``).
The model is loaded once; each answer is cut at the expected answer's length plus a margin
(a longer answer cannot be exact).

Rows (see ``ROWS``):

* training prompts (the file's training split, every turn of a conversation with its history)
  with no system message, an empty system message, the sample's own system prompt, and each
  of the ``CLIENT_SYSTEM_PROMPTS`` (the defaults common clients and model cards send);
* validation variants (the held-out phrase variants / samples of the split the model used);
* unseen surface variants of training prompts (``EVAL_FAMILIES`` with ``EVAL_SEED``: families
  and a seed the training augmentation does not use: see below);
* hand-written paraphrases from a probes file (``--probes``, format: probes.xsd);
* conversation chains: 4 in-scope training prompts asked one after the other, the earlier
  answers as a client sends them back (their rendered expected text); turns 2..4 are scored;
* off-topic questions from the probes file answered with the file's beyond-scope refusal
  (a file without a ``<beyond-scope>`` block gets a note instead: no refusal is invented);
* in-scope prompts (training, validation, surface, paraphrase rows) wrongly answered with the
  refusal (lower is better).

Surface families of eval (documented so training's augmentation stays disjoint): training's
augmentation (issue 12, part B) uses case, punctuation, typos (dropped / doubled / swapped
letters), contractions, filler, spacing, asides (no greeting or thanks), generic synonyms,
dropped function words and keyword queries.  Eval uses ``neighbour-key`` (one letter replaced
by a neighbouring key of a QWERTY keyboard: a family training does not use), ``greeting`` (a
greeting before the question: "hi, ", "hello! ", "hey there, "), ``thanks`` (a thank-you
after it), and ``lower-bare`` (all lower case without the final punctuation), all drawn with
``EVAL_SEED``, which no training seed equals.

``--url URL`` asks an OpenAI-compatible server instead of the model in-process: every case is a
``POST URL/chat/completions`` (``temperature`` 0, ``max_tokens`` the case's budget) with the
same messages, so ``poppins serve`` (or llama-server running the exported GGUF) is measured
exactly as a client sees it.  The model folder still gives the tokenizer that renders the
expected answers and the split.

``--min-recall X`` (0..1): exit code 1 when any recall row (every row but the wrongly-refused
one) measures below X; rows with nothing to measure are skipped.
"""
from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from .corpus import tokens as T
from .errors import PoppinsError

#: System prompts that common clients and model cards send by default (or that users type);
#: measured one row each.  Never used by training's augmentation.
CLIENT_SYSTEM_PROMPTS = (
    "You are a helpful assistant.",                                  # OpenAI docs, LangChain
    "You are ChatGPT, a large language model trained by OpenAI.",    # ChatGPT-style clients
    "You are a helpful, respectful and honest assistant.",           # Llama 2 chat default
    "A chat between a curious user and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the user's questions.",  # Vicuna/llama.cpp
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",  # Qwen default
    "Write Assistant's next reply in a fictional chat between Assistant and User.",  # SillyTavern
    "You are a helpful AI assistant.",                               # Open WebUI / Ollama users
    "You are a friendly assistant. Keep your answers short.",
    "Answer the following question.",
    "You are an expert. Answer accurately and concisely.",
)
#: The seed of eval's surface variants and case sampling (training never uses it).
EVAL_SEED = 0x5EED_E7A1
EVAL_FAMILIES = ("neighbour-key", "greeting", "thanks", "lower-bare")
#: Default cap of cases per row (a seeded sample; None: all).
DEFAULT_MAX_CASES = 100
#: Conversation chains: turns per chain (turns 2..CHAIN_TURNS are scored).
CHAIN_TURNS = 4
#: Tokens an answer may run past the expected answer's length before it is cut.
ANSWER_MARGIN = 8
#: Probes file bounds.
MAX_PROBES_BYTES = 4 * 1024 * 1024
MAX_PROBES = 10_000
MAX_PROBE_CHARS = 4_000

_NEIGHBOURS = {}
for _row in ("qwertyuiop", "asdfghjkl", "zxcvbnm"):
    for _i, _c in enumerate(_row):
        _NEIGHBOURS[_c] = _row[max(_i - 1, 0):_i] + _row[_i + 1:_i + 2]


def surface_variant(prompt: str, family: str, rng: random.Random) -> str:
    """One eval surface variant of ``prompt`` (families: ``EVAL_FAMILIES``)."""
    if family == "neighbour-key":
        spots = [i for i, c in enumerate(prompt) if c.lower() in _NEIGHBOURS and i > 0]
        if not spots:
            return prompt
        i = rng.choice(spots)
        c = rng.choice(_NEIGHBOURS[prompt[i].lower()])
        return prompt[:i] + (c.upper() if prompt[i].isupper() else c) + prompt[i + 1:]
    if family == "greeting":
        g = rng.choice(("hi, ", "hello! ", "hey there, "))
        return g + (prompt[:1].lower() + prompt[1:] if prompt[1:2].islower() else prompt)
    if family == "thanks":
        return prompt.rstrip() + rng.choice((" Thanks!", " thank you", " Thanks."))
    if family == "lower-bare":
        return prompt.lower().rstrip(" ?.!")
    raise ValueError(f"unknown eval family {family!r}")


# ------------------------------------------------------------------------------ probes
@dataclass(frozen=True)
class Paraphrase:
    text: str
    expect: str                  # the prompt id of the sample whose answer is expected
    system: Optional[str] = None  # a system message the case sends (None: none)
    loc: str = ""


@dataclass(frozen=True)
class OffTopic:
    text: str
    system: Optional[str] = None
    loc: str = ""


@dataclass
class Probes:
    paraphrases: List[Paraphrase] = field(default_factory=list)
    off_topic: List[OffTopic] = field(default_factory=list)


PROBES_SCHEMA_PATH = Path(__file__).with_name("probes.xsd")


def read_probes(path) -> Probes:
    """Read a probes file strictly (probes.xsd); problems are raised with FILE:LINE."""
    from .errors import Collector
    from .trainxml.reader import FileReader

    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_PROBES_BYTES:
            raise PoppinsError(f"the probes file is {size:,} bytes; at most "
                               f"{MAX_PROBES_BYTES:,} are read", file=str(path))
        data = path.read_bytes()
    except OSError as exc:
        raise PoppinsError(f"cannot read the probes file: {exc.strerror}", file=str(path)) from None
    errors = Collector()
    r = FileReader(path, str(path), errors)
    from lxml import etree
    from .trainxml.reader import _parser
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        line = (exc.position[0] if exc.position else exc.lineno) or 1
        raise PoppinsError(f"malformed XML: {exc.msg or exc}", file=str(path), line=line) from None
    tree = root.getroottree()
    if tree.docinfo.internalDTD is not None or tree.docinfo.doctype:
        raise PoppinsError("DOCTYPE declarations are not allowed in probes files", file=str(path),
                           line=1)
    out = Probes()
    if root.tag != "probes":
        r.err(root, f"the root element must be <probes>, found <{r.tagname(root)}>")
        errors.check()
    r.attrs(root)
    count = 0

    def text_of(el) -> Optional[str]:
        t = r.text(el)
        if not t:
            r.err(el, f"<{el.tag}> is empty")
            return None
        if len(t) > MAX_PROBE_CHARS:
            r.err(el, f"<{el.tag}> holds {len(t):,} characters; at most {MAX_PROBE_CHARS:,}")
            return None
        return t

    for section in r.elements(root, ("paraphrases", "off-topic")):
        r.attrs(section)
        child = "paraphrase" if section.tag == "paraphrases" else "question"
        for el in r.elements(section, (child,)):
            count += 1
            if count > MAX_PROBES:
                r.err(el, f"more than {MAX_PROBES:,} probes; at most {MAX_PROBES:,} are read")
                errors.check()
            loc = f"{path}:{el.sourceline or 1}"
            if child == "paraphrase":
                a = r.attrs(el, required=("expect",), optional=("system",))
                expect = r.id_attr(el, a, "expect")
                t = text_of(el)
                if expect and t:
                    out.paraphrases.append(Paraphrase(t, expect, a.get("system"), loc))
            else:
                a = r.attrs(el, optional=("system",))
                t = text_of(el)
                if t:
                    out.off_topic.append(OffTopic(t, a.get("system"), loc))
    errors.check()
    return out


# ------------------------------------------------------------------------------ cases
@dataclass
class Case:
    prompt: str
    expected: str                 # rendered expected answer, trimmed
    system: Optional[str] = None  # None: no system message; "" empty; else a client's text
    history: List[Dict] = field(default_factory=list)   # earlier messages (user / assistant)
    budget: int = 64              # max_tokens
    in_scope: bool = True


@dataclass
class Row:
    name: str
    key: str
    cases: int = 0
    hits: int = 0
    population: int = 0
    lower_is_better: bool = False
    note: str = ""
    misses: List[Dict] = field(default_factory=list)

    @property
    def rate(self) -> Optional[float]:
        return self.hits / self.cases if self.cases else None


@dataclass
class Report:
    model: str
    train_xml: str
    probes: Optional[str]
    rows: List[Row]
    seconds: float
    notes: List[str] = field(default_factory=list)

    def row(self, key: str) -> Row:
        return next(r for r in self.rows if r.key == key)

    def failing(self, min_recall: float) -> List[Row]:
        return [r for r in self.rows if not r.lower_is_better and r.rate is not None
                and r.rate < min_recall]

    def to_json(self) -> Dict:
        rows = []
        for r in self.rows:
            d = asdict(r)
            d["rate"] = r.rate
            d["misses"] = r.misses[:20]
            rows.append(d)
        return {"model": self.model, "train_xml": self.train_xml, "probes": self.probes,
                "seconds": round(self.seconds, 2), "notes": self.notes, "rows": rows}

    def table(self) -> str:
        w = max(len(r.name) for r in self.rows)
        lines = [f"{'case':<{w}}  {'exact':>6}  {'cases':>11}  note",
                 f"{'-' * w}  {'-' * 6}  {'-' * 11}  ----"]
        for r in self.rows:
            rate = "-" if r.rate is None else f"{100 * r.rate:5.1f}%"
            n = f"{r.hits}/{r.cases}" if r.cases else "0"
            note = r.note
            if r.population > r.cases and r.cases:
                note = (note + "; " if note else "") + f"{r.cases} of {r.population} sampled"
            lines.append(f"{r.name:<{w}}  {rate:>6}  {n:>11}  {note}")
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"({self.seconds:.1f} s; exact = the rendered greedy answer equals the "
                     "rendered expected answer after trimming whitespace)")
        return "\n".join(lines)


class _Expect:
    """Rendered expected answers (and their token lengths) of sample turns."""

    def __init__(self, model):
        self.model = model
        self.tok = model.tokenizer
        self.sources = model.engine.sources
        self._cache: Dict = {}

    def answer(self, items, thought) -> "tuple[str, int]":
        from .engine.render import render_answer

        key = (items, thought)
        if key not in self._cache:
            self._cache[key] = render_answer(self.tok, items, thought, self.sources)
        return self._cache[key]


def _turn_cases(sample, expect: _Expect, system) -> List[Case]:
    """One case per turn of ``sample``: the turn asked with the earlier turns as history."""
    out, history = [], []
    turns = [(sample.prompt, sample.thought, sample.items)] + \
        [(t.prompt, t.thought, t.items) for t in sample.turns]
    for prompt, thought, items in turns:
        text, n = expect.answer(items, thought)
        out.append(Case(prompt, text, system, list(history), n + ANSWER_MARGIN))
        history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": text}]
    return out


def _pick(items: Sequence, k: Optional[int], rng: random.Random) -> List:
    items = list(items)
    if k is None or len(items) <= k:
        return items
    return [items[i] for i in sorted(rng.sample(range(len(items)), k))]


def _manifest(model_dir: Path) -> Dict:
    p = model_dir / "manifest.json" if model_dir.is_dir() else model_dir.parent / "manifest.json"
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def evaluate(model_dir=".poppins", train_xml="train.xml", probes=None,
             threads: Optional[int] = None, max_cases: Optional[int] = DEFAULT_MAX_CASES,
             log: Optional[Callable[[str], None]] = None, model=None,
             url: Optional[str] = None, api_key: Optional[str] = None) -> Report:
    """Measure the model in ``model_dir`` on ``train_xml`` (and a probes file); see the module
    docstring.  ``max_cases``: cases per row (a seeded sample; None: all).  ``model``: an
    already loaded :class:`poppins.Model` (else it is loaded from ``model_dir``).  ``url``:
    the base URL of an OpenAI-compatible server (``http://127.0.0.1:8080/v1``) that answers
    instead of the model (``api_key``: its bearer key)."""
    from .api import Model
    from .samples import DEFAULT_SEED, build_samples
    from .trainxml import read_train_xml

    say = log or (lambda _m: None)
    t0 = time.perf_counter()
    if max_cases is not None and max_cases < 1:
        raise PoppinsError(f"--max-cases must be at least 1, got {max_cases}")
    model_dir = Path(model_dir)
    notes: List[str] = []
    doc = read_train_xml(train_xml)
    manifest = _manifest(model_dir)
    seed = manifest.get("seed", DEFAULT_SEED)
    sset = build_samples(doc, seed=seed, val_fraction=manifest.get("val_fraction"))
    inputs = manifest.get("inputs") or []
    if inputs:
        digest = hashlib.sha256(Path(doc.files[0].path).read_bytes()).hexdigest()
        if inputs[0].get("sha256") != digest:
            notes.append(f"{train_xml} differs from the file this model was trained on")
    else:
        notes.append("no manifest.json next to the model: the split was rebuilt with the "
                     f"default seed {seed}")
    pr = read_probes(probes) if probes else None
    if model is None:
        model = Model.load(model_dir, threads=threads)
    expect = _Expect(model)
    asker = _Server(url, api_key) if url else model

    refusal = None
    b = doc.beyond_scope
    if b is not None:
        from .samples import Item
        refusal = expect.answer((Item("text", doc.text("response", b.response.id)),),
                                doc.text("thought", b.thought.id) if b.thought else None)[0]

    def is_refusal(text: str) -> bool:
        return refusal is not None and text.strip() == refusal

    rng = random.Random(EVAL_SEED)
    train = _pick(sset.train, max_cases, rng)
    train_cases = lambda system: [c for s in train for c in _turn_cases(s, expect, system)]  # noqa
    own = [c for s in train for c in _turn_cases(s, expect, s.system)]
    for c in own:
        c.in_scope = not is_refusal(c.expected)

    rows: List[Row] = []
    work: List = []   # (row, cases)

    def add(key, name, cases, population, lower=False, note=""):
        row = Row(name, key, population=population, lower_is_better=lower, note=note)
        rows.append(row)
        work.append((row, cases))
        return row

    add("train-none", "training prompts, no system message", train_cases(T.NO_SYSTEM),
        len(sset.train))
    add("train-empty", "training prompts, empty system message", train_cases(T.EMPTY_SYSTEM),
        len(sset.train))
    add("train-own", "training prompts, their own system prompt", own, len(sset.train))
    for i, sp in enumerate(CLIENT_SYSTEM_PROMPTS):
        short = sp if len(sp) <= 40 else sp[:37] + "..."
        add(f"client-{i + 1}", f"client system {i + 1}: {short}", train_cases(sp),
            len(sset.train))
    val = _pick(sset.val, max_cases, rng)
    add("val", "validation variants, no system message",
        [c for s in val for c in _turn_cases(s, expect, None)], len(sset.val),
        note="" if sset.val else "the split has no validation samples")
    # unseen surface variants of single-turn in-scope training prompts
    srng = random.Random(EVAL_SEED + 1)
    singles = [s for s in sset.train if not s.turns]
    surface = []
    for i, s in enumerate(_pick(singles, max_cases, srng)):
        fam = EVAL_FAMILIES[i % len(EVAL_FAMILIES)]
        v = surface_variant(s.prompt, fam, srng)
        text, n = expect.answer(s.items, s.thought)
        surface.append(Case(v, text, None, [], n + ANSWER_MARGIN))
    add("surface", "unseen surface variants, no system message", surface, len(singles),
        note="families " + ", ".join(EVAL_FAMILIES))
    # paraphrases
    para_cases = []
    if pr is not None:
        by_prompt: Dict[str, List] = {}
        for g in sset.groups:
            by_prompt.setdefault(g[0].prompt, []).append(g[0])
        bad = []
        for p in pr.paraphrases:
            if p.expect not in doc.definitions.get("prompt", {}):
                bad.append(f"{p.loc}: expect={p.expect!r} is not a prompt id of {train_xml}")
                continue
            cands = by_prompt.get(doc.text("prompt", p.expect), [])
            if not cands:
                bad.append(f"{p.loc}: prompt {p.expect!r} is not the first prompt of a sample")
                continue
            s = next((c for c in cands if p.system and c.system == p.system), cands[0])
            text, n = expect.answer(s.items, s.thought)
            para_cases.append(Case(p.text, text, p.system, [], n + ANSWER_MARGIN,
                                   in_scope=not is_refusal(text)))
        if bad:
            raise PoppinsError(bad)
    add("paraphrase", "hand-written paraphrases (probes)", para_cases, len(para_cases),
        note="" if pr is not None else "no probes file (--probes)")
    # conversation chains
    crng = random.Random(EVAL_SEED + 2)
    pool = [s for s in singles if not is_refusal(expect.answer(s.items, s.thought)[0])]
    chains = []
    if len(pool) >= CHAIN_TURNS:
        n_chains = max(1, (max_cases or 3 * len(pool)) // (CHAIN_TURNS - 1))
        for _ in range(n_chains):
            picked = crng.sample(pool, CHAIN_TURNS)
            history: List[Dict] = []
            for j, s in enumerate(picked):
                text, n = expect.answer(s.items, s.thought)
                if j:
                    chains.append(Case(s.prompt, text, None, list(history), n + ANSWER_MARGIN))
                history += [{"role": "user", "content": s.prompt},
                            {"role": "assistant", "content": text}]
    add("chains", f"conversation chains, turns 2..{CHAIN_TURNS}", chains, len(chains),
        note="" if chains else "fewer than 4 single-turn training samples")
    # off-topic
    off = []
    if refusal is not None and pr is not None:
        from .samples import Item
        _, n = expect.answer((Item("text", doc.text("response", b.response.id)),),
                             doc.text("thought", b.thought.id) if b.thought else None)
        budget = n + ANSWER_MARGIN
        off = [Case(q.text, refusal, q.system, [], budget, in_scope=False)
               for q in pr.off_topic]
    note = ("the file has no <beyond-scope> block: no refusal is expected or invented"
            if refusal is None else ("" if pr is not None else "no probes file (--probes)"))
    add("off-topic", "off-topic questions answered with the refusal", off, len(off), note=note)
    wrong = add("refused", "in-scope prompts wrongly refused (lower is better)", [], 0,
                lower=True, note="" if refusal is not None else "no <beyond-scope> block")

    total = sum(len(c) for _, c in work)
    say(f"eval     {total} cases, model {model_dir}" + (f", answers from {url}" if url else ""))
    refused = scoped = 0
    scoped_rows = {"train-none", "val", "surface", "paraphrase"}
    for row, cases in work:
        row.cases = len(cases)
        if not row.population:
            row.population = len(cases)
        for c in cases:
            got = _ask(asker, c)
            ok = got == c.expected
            row.hits += ok
            if not ok and len(row.misses) < 200:
                row.misses.append({"prompt": c.prompt, "system": c.system,
                                   "expected": c.expected, "got": got})
            if row.key in scoped_rows and c.in_scope and refusal is not None \
                    and not is_refusal(c.expected):
                scoped += 1
                refused += is_refusal(got)
        if row is not wrong:
            say(f"eval     {row.name}: {row.hits}/{row.cases}")
    if refusal is not None:
        wrong.cases, wrong.hits, wrong.population = scoped, refused, scoped
        say(f"eval     {wrong.name}: {refused}/{scoped}")
    return Report(str(model_dir), str(train_xml), str(probes) if probes else None, rows,
                  time.perf_counter() - t0, notes)


class _Unreachable(PoppinsError):
    """The server cannot answer at all: the measurement stops (a 400 is one case's miss)."""


class _Server:
    """An OpenAI-compatible chat endpoint in place of a Model: ``chat(messages, ...)`` returns
    an object with ``.text``, the first choice's message content."""

    def __init__(self, url: str, api_key: Optional[str] = None, timeout: float = 300.0):
        from urllib.parse import urlsplit
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.netloc:
            raise PoppinsError(f"--url must be an http(s) URL such as http://127.0.0.1:8080/v1, "
                               f"got {url!r}")
        base = url.rstrip("/")
        self.endpoint = base + ("/chat/completions" if base.endswith("/v1")
                                else "/v1/chat/completions")
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout = timeout

    def chat(self, messages, temperature: float = 0.0, max_tokens: int = 256):
        import types
        import urllib.error
        import urllib.request
        body = json.dumps({"model": "poppins", "messages": messages, "temperature": temperature,
                           "max_tokens": max_tokens, "stream": False}).encode()
        req = urllib.request.Request(self.endpoint, data=body, headers=self.headers,
                                     method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                reply = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read(500).decode("utf-8", "replace")
            # 400: this request was refused (e.g. longer than the context): a miss, as in-process;
            # anything else (a wrong key or URL, a server error) stops the measurement
            kind = PoppinsError if exc.code == 400 else _Unreachable
            raise kind(f"{self.endpoint}: HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise _Unreachable(f"{self.endpoint}: {getattr(exc, 'reason', exc)}") from None
        try:
            text = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise _Unreachable(f"{self.endpoint}: not a chat completion: "
                               f"{json.dumps(reply)[:200]}") from None
        return types.SimpleNamespace(text=text if isinstance(text, str) else "")


def _ask(model, case: Case) -> str:
    msgs = []
    if case.system is not None:
        msgs.append({"role": "system", "content": case.system})
    msgs += case.history + [{"role": "user", "content": case.prompt}]
    try:
        c = model.chat(msgs, temperature=0, max_tokens=case.budget)
    except _Unreachable:
        raise
    except PoppinsError as exc:   # e.g. a history longer than the context
        return f"<error: {exc}>"
    return c.text.strip()
