"""From a checked train document to samples: expansion, phrase variants, beyond-scope, split.

    from poppins.trainxml import read_train_xml
    from poppins.samples import build_samples
    sset = build_samples(read_train_xml("train.xml"), seed=1337)
    sset.train, sset.val

Order is document order, file by file in import order; beyond-scope samples follow the
regular ones.  Each original sample forms a *group* with its phrase variants.  The split is
seeded: by default one member of every group with variants goes to validation (the
original's rule); with ``val_fraction`` F, round(F x groups) whole groups (at least one when
F > 0) go to validation instead.
"""
from __future__ import annotations

import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import regex

from ..errors import Collector, PoppinsError
from ..trainxml import TrainDoc
from ..trainxml import reader as R

#: Seconds one phrase pattern may spend on one prompt before it is reported as too slow.
PHRASE_TIMEOUT_S = 1.0
#: All phrase patterns together may spend PHRASE_BUDGET_S + PHRASE_BUDGET_PER_PROMPT_S per
#: prompt (a real 4,000-sample file with dozens of phrases takes a few seconds; 1,000 prompts
#: with a pattern just under the per-prompt timeout stop after 10 s, not 1,000 s).
PHRASE_BUDGET_S = 5.0
PHRASE_BUDGET_PER_PROMPT_S = 0.005
DEFAULT_SEED = 1337

#: The original's built-in beyond-scope topics: category -> [(prefix, value), ...].
#: Same lists as the original (reference §3.5); politics is listed once here, and a prompt
#: that two categories share ("What are mountains?") is emitted once.
BEYOND_SCOPE_TOPICS = {
    "sports": [("is", v) for v in ("soccer", "basketball", "football", "baseball", "tennis",
                                   "golf", "cricket", "rugby", "hockey")]
    + [("is the", v) for v in ("olympics", "world cup", "super bowl")],
    "food": [("is", "cooking"), ("is", "baking"), ("are", "recipes"), ("is", "pasta"),
             ("is", "pizza"), ("is", "dessert"), ("is", "vegetarian"), ("is", "vegan"),
             ("is", "wine"), ("is", "coffee"), ("is a", "restaurant"), ("is", "cuisine")],
    "movies": [("are", "movies"), ("are", "tv shows"), ("is", "netflix"), ("are", "actors"),
               ("are", "actresses"), ("are", "directors"), ("are the", "oscars"),
               ("is", "hollywood"), ("is", "cinema"), ("are", "documentaries"),
               ("is", "animation")],
    "history": [("is", "ancient egypt"), ("is the", "roman empire"), ("was", "world war 1"),
                ("was", "world war 2"), ("was the", "civil war"), ("was the", "renaissance"),
                ("was the", "industrial revolution"), ("was the", "cold war"),
                ("were the", "middle ages")],
    "geography": [("are", v) for v in ("countries", "capitals", "mountains", "rivers", "oceans",
                                       "deserts", "forests", "volcanoes", "islands")],
    "politics": [("is the", "president"), ("are", "elections"), ("is", "government"),
                 ("is", "democracy"), ("is the", "senate"), ("is", "congress"),
                 ("is the", "supreme court"), ("are", "taxes"), ("is", "immigration")],
    "science": [("is", "biology"), ("is", "chemistry"), ("is", "physics"), ("is", "astronomy"),
                ("is", "evolution"), ("is", "dna"), ("are", "cells"), ("are", "planets"),
                ("are", "black holes"), ("is", "climate change")],
    "health": [("is", "medicine"), ("are", "diseases"), ("is", "exercise"), ("is", "nutrition"),
               ("is", "mental health"), ("are", "vaccines"), ("is", "surgery"),
               ("is", "pharmacy")],
    "art": [("is", "art"), ("is", "painting"), ("is", "sculpture")],
    "music": [("is", "rock music"), ("is", "jazz"), ("is", "classical music"), ("is", "hip hop"),
              ("is", "pop music"), ("are", "concerts"), ("are", "instruments")],
    "fashion": [("is", "fashion"), ("is", "clothing"), ("are", "shoes"), ("are", "designers"),
                ("are", "models"), ("is", "runway"), ("is", "style")],
    "travel": [("is", "travel"), ("are", "hotels"), ("are", "flights"), ("is", "tourism"),
               ("are", "destinations"), ("are", "beaches"), ("are", "mountains"),
               ("are", "cities")],
    "pets": [("are", "dogs"), ("are", "cats"), ("are", "birds"), ("are", "fish"),
             ("are", "reptiles"), ("is", "pet care"), ("is", "veterinary")],
    "cars": [("are", v) for v in ("cars", "vans", "trucks", "electric vehicles", "dealerships")],
}
assert list(BEYOND_SCOPE_TOPICS) == list(R.CATEGORIES)


@dataclass(frozen=True)
class Item:
    """One answer item: text, a source id, a code block or a line break."""
    kind: str            # "text" | "source" | "code" | "line-break"
    text: str = ""       # the text, the source id, or the code
    lang: str = ""
    inline: bool = False
    indent: int = 0
    count: int = 1


@dataclass(frozen=True)
class Turn:
    """A later turn of a conversation."""
    prompt: str
    items: Tuple[Item, ...]
    thought: Optional[str] = None


@dataclass(frozen=True)
class Sample:
    """One sample: the first (or only) turn's prompt, thought and answer, then any later turns
    of a conversation.  Phrase variants rewrite the first prompt."""
    prompt: str
    items: Tuple[Item, ...]
    system: Optional[str] = None
    thought: Optional[str] = None
    origin: str = ""     # "file:line" where the sample (or its topic) is written
    variant: str = ""    # "" for an original; "file:line" of the phrase variant otherwise
    turns: Tuple[Turn, ...] = ()
    #: Earlier exchanges replayed before the first prompt as a client sends them back:
    #: (user text, the assistant's rendered answer) pairs, never learned (training
    #: augmentation only; see poppins.samples.augment).
    history: Tuple[Tuple[str, str], ...] = ()


@dataclass
class SampleSet:
    groups: List[List[Sample]]
    train: List[Sample]
    val: List[Sample]
    seed: int
    val_fraction: Optional[float]
    originals: int = 0
    variants: int = 0
    beyond_scope: int = 0
    default_system: Optional[str] = None
    warnings: List[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.train) + len(self.val)


_GROUP_REF = regex.compile(r"\$(\d+)")


class _Phrase:
    def __init__(self, phrase: R.Phrase, errors: Collector):
        self.src = phrase
        self.ok = False
        try:
            self.pattern = regex.compile(phrase.pattern)
        except (regex.error, ValueError, OverflowError) as exc:
            errors.add(phrase.loc.file, phrase.loc.line,
                       f"phrase pattern {phrase.pattern!r} does not compile: {exc}")
            return
        self.templates = []
        for value, loc in phrase.variants:
            bad = [int(m.group(1)) for m in _GROUP_REF.finditer(value)
                   if int(m.group(1)) > self.pattern.groups]
            if bad:
                errors.add(loc.file, loc.line,
                           f"variant {value!r} uses ${bad[0]} but the pattern has "
                           f"{self.pattern.groups} group(s)")
            self.templates.append(value)
        self.ok = True

    def rewrite(self, prompt: str, origin: str,
                budget: Optional["_Budget"] = None) -> Optional[List[str]]:
        """The variants of ``prompt`` (None when the pattern does not match it).  Each pattern
        application stops after PHRASE_TIMEOUT_S, or earlier when ``budget`` runs out."""
        budget = budget or _Budget(1)
        try:
            if self.pattern.search(prompt, timeout=budget.timeout(self, origin)) is None:
                return None
            out = []
            for template in self.templates:
                def fill(m, template=template):
                    return _GROUP_REF.sub(lambda g: m.group(int(g.group(1))) or "", template)
                out.append(self.pattern.sub(fill, prompt, timeout=budget.timeout(self, origin)))
            return out
        except TimeoutError:
            budget.check(self, origin)
            raise PoppinsError(
                f"phrase pattern {self.src.pattern!r} took over {PHRASE_TIMEOUT_S:g} s on the prompt "
                f"of the sample at {origin}; simplify the pattern (nested repeats such as (a+)+ "
                f"backtrack exponentially)", self.src.loc.file, self.src.loc.line) from None


class _Budget:
    """The total time phrase patterns may take on ``prompts`` prompts (see PHRASE_BUDGET_S)."""

    def __init__(self, prompts: int):
        self.total = PHRASE_BUDGET_S + PHRASE_BUDGET_PER_PROMPT_S * prompts
        self.prompts = prompts
        self.deadline = time.monotonic() + self.total

    def check(self, phrase: "_Phrase", origin: str) -> None:
        if time.monotonic() >= self.deadline:
            raise PoppinsError(
                f"phrase patterns took over their total budget of {self.total:g} s for "
                f"{self.prompts} prompts (stopped in pattern {phrase.src.pattern[:60]!r} on the "
                f"prompt of the sample at {origin}); simplify the patterns",
                phrase.src.loc.file, phrase.src.loc.line)

    def timeout(self, phrase: "_Phrase", origin: str) -> float:
        self.check(phrase, origin)
        return max(0.001, min(PHRASE_TIMEOUT_S, self.deadline - time.monotonic()))


def _items(doc: TrainDoc, raw_items) -> Tuple[Item, ...]:
    out = []
    for it in raw_items:
        if it.kind == "response":
            out.append(Item("text", doc.text("response", it.ref.id)))
        elif it.kind == "source":
            out.append(Item("source", it.ref.id))
        elif it.kind == "code":
            d = doc.definitions["code"][it.ref.id]
            out.append(Item("code", d.text, lang=d.lang, inline=it.inline, indent=it.indent))
        else:
            out.append(Item("line-break", count=it.count))
    return tuple(out)


def _origin_names(doc: TrainDoc):
    """display name -> path relative to the main file's folder (outputs must not depend on cwd)."""
    base = doc.files[0].path.parent
    return {f.display: os.path.relpath(f.path, base).replace(os.sep, "/") for f in doc.files}


def _originals(doc: TrainDoc, warnings: List[str]) -> Tuple[List[Sample], int]:
    names = _origin_names(doc)

    def origin(loc: R.Loc) -> str:
        return f"{names.get(loc.file, loc.file)}:{loc.line}"

    out = []
    for raw in doc.samples:
        if raw.system_override is not None:
            system = doc.text("system", raw.system_override.id)
        else:
            system = "".join(doc.text("system", r.id) for r in raw.systems)
        items = _items(doc, raw.items)
        turns = tuple(Turn(doc.text("prompt", t.prompt.id), _items(doc, t.items),
                           doc.text("thought", t.thought.id) if t.thought else None)
                      for t in raw.turns)
        empty = [i for i, t in enumerate(((items,),) + tuple((t.items,) for t in turns), 1)
                 if not t[0]]
        if empty:
            which = "sample" if not raw.turns else f"turn {empty[0]} of the conversation"
            warnings.append(f"{raw.loc}: warning: {which} has no answer (no response, source "
                            "or code); sample skipped")
            continue
        out.append(Sample(prompt=doc.text("prompt", raw.prompt.id), items=items,
                          system=system or None,
                          thought=doc.text("thought", raw.thought.id) if raw.thought else None,
                          origin=origin(raw.loc), turns=turns))
    n_regular = len(out)
    b = doc.beyond_scope
    if b is not None:
        topics = [(t.prefix, t.value, t.loc) for t in b.topics]
        for cat in R.CATEGORIES:
            if b.flags.get(cat):
                topics += [(prefix, value, b.loc) for prefix, value in BEYOND_SCOPE_TOPICS[cat]]
        seen = set()
        system = doc.text("system", b.system.id)
        thought = doc.text("thought", b.thought.id) if b.thought else None
        answer = (Item("text", doc.text("response", b.response.id)),)
        for prefix, value, loc in topics:
            prompt = f"What {prefix} {value}?" if prefix else f"What {value}?"
            if prompt in seen:
                continue
            seen.add(prompt)
            out.append(Sample(prompt=prompt, items=answer, system=system or None, thought=thought,
                              origin=origin(loc)))
    return out, len(out) - n_regular


def _split(groups: List[List[Sample]], seed: int, val_fraction: Optional[float]):
    rng = random.Random(seed)
    val_member = [-1] * len(groups)
    if val_fraction is None:
        for g, members in enumerate(groups):
            if len(members) > 1:
                val_member[g] = rng.randrange(len(members))
        val_groups = set()
    else:
        k = round(val_fraction * len(groups))
        if val_fraction > 0:
            k = max(k, 1)
        k = min(k, len(groups))
        val_groups = set(rng.sample(range(len(groups)), k))
    train, val = [], []
    for g, members in enumerate(groups):
        for i, s in enumerate(members):
            (val if (g in val_groups or i == val_member[g]) else train).append(s)
    return train, val


def build_samples(doc: TrainDoc, seed: int = DEFAULT_SEED,
                  val_fraction: Optional[float] = None) -> SampleSet:
    """Expand ``doc`` into groups of samples and split them, deterministically for ``seed``."""
    if val_fraction is not None and not (0.0 <= val_fraction < 1.0):
        raise PoppinsError(f"--val-fraction must be at least 0 and below 1, got {val_fraction}")
    errors = Collector()
    phrases = [_Phrase(p, errors) for p in doc.phrases]
    errors.check()
    warnings: List[str] = []
    originals, n_beyond = _originals(doc, warnings)
    if not originals:
        root = doc.files[0]
        raise PoppinsError(f"{root.display} yields no samples: add <sample-ids> or <sample> "
                           "elements under <samples> (or a <beyond-scope> block)",
                           root.display, root.root_line)
    names = _origin_names(doc)
    groups: List[List[Sample]] = []
    n_variants = 0
    budget = _Budget(len(originals))
    for s in originals:
        group = [s]
        prompts = {s.prompt}
        for ph in phrases:
            rewritten = ph.rewrite(s.prompt, s.origin, budget)
            for prompt in rewritten or ():
                if prompt in prompts or not prompt.strip():
                    continue   # a variant identical to a member adds nothing (and would leak)
                prompts.add(prompt)
                group.append(Sample(prompt=prompt, items=s.items, system=s.system,
                                    thought=s.thought, origin=s.origin, turns=s.turns,
                                    variant=f"{names.get(ph.src.loc.file, ph.src.loc.file)}:"
                                            f"{ph.src.loc.line}"))
        n_variants += len(group) - 1
        groups.append(group)
    train, val = _split(groups, seed, val_fraction)
    systems = Counter(s.system for g in groups for s in g if s.system)
    default_system = None
    if systems:
        best = max(systems.values())
        default_system = next(s.system for g in groups for s in g if systems.get(s.system) == best)
    return SampleSet(groups=groups, train=train, val=val, seed=seed, val_fraction=val_fraction,
                     originals=len(originals) - n_beyond, variants=n_variants,
                     beyond_scope=n_beyond, default_system=default_system, warnings=warnings)
