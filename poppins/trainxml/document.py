"""A train.xml with its imports, merged into one checked document.

Files are read depth-first in import order (the main file first).  Ids are global: a
duplicate id anywhere is an error naming both places, and every reference must resolve.
An ``<import system="ID">`` sets the system prompt of every sample in the imported file and
in that file's own imports, unless a nearer import sets its own.  Constants: per name, the
first file that sets it wins (imports only fill gaps), as in the original.  Phrases with the
same pattern are merged (variants unioned); the first ``<beyond-scope>`` wins and later ones
only fill gaps, their topics unioned.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from lxml import etree

from ..errors import Collector, PoppinsError
from . import reader as R

SCHEMA_PATH = Path(__file__).with_name("train.xsd")
DEFAULT_MAX_XML_MB = 256
#: --max-xml-mb may be raised up to this many megabytes (1 TiB)
MAX_XML_MB = 1 << 20
#: imports nest at most this deep (a longer chain is almost surely generated or a loop)
MAX_IMPORT_DEPTH = 64


@dataclass
class TrainDoc:
    main: Path
    files: List[R.FileDoc]
    constants: Dict[str, R.Constant]
    definitions: Dict[str, Dict[str, R.Definition]]      # kind -> id -> definition
    samples: List[R.RawSample]
    phrases: List[R.Phrase]
    beyond_scope: Optional[R.BeyondScope]
    file_sizes: Dict[str, int] = field(default_factory=dict)
    #: "FILE:LINE: warning: ..." lines (imports outside the main file's folder)
    warnings: List[str] = field(default_factory=list)

    def text(self, kind: str, ident: str) -> str:
        return self.definitions[kind][ident].text

    @property
    def dialects(self) -> List[str]:
        return sorted({f.dialect for f in self.files})


_schema = None


def schema() -> etree.XMLSchema:
    global _schema
    if _schema is None:
        _schema = etree.XMLSchema(etree.parse(str(SCHEMA_PATH)))
    return _schema


def _display(path: Path) -> str:
    """How a file is named in messages: relative to the current folder when inside it."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if rel.startswith("..") else rel


class _Loader:
    def __init__(self, main: Path, errors: Collector, max_bytes: int, max_mb: float,
                 allow_outside: bool = True):
        self.main = main
        self.base = main.parent
        self.errors = errors
        self.max_bytes = max_bytes
        self.max_mb = max_mb
        self.allow_outside = allow_outside
        self.total = 0
        self.files: List[R.FileDoc] = []
        self.loaded: Dict[Path, R.Loc] = {}
        self.sizes: Dict[str, int] = {}
        self.warnings: List[str] = []

    def _inside(self, target: Path) -> bool:
        try:
            target.relative_to(self.base)
            return True
        except ValueError:
            return False

    def load(self, path: Path, chain: List[Path], system: Optional[R.Ref],
             imported_at: Optional[R.Loc]) -> None:
        display = _display(path)
        where = (imported_at.file, imported_at.line) if imported_at else (display, None)
        try:
            exists, is_file = path.exists(), path.is_file()
            size = path.stat().st_size if is_file else 0
        except (OSError, ValueError) as exc:
            self.errors.add(*where, f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}")
            return
        if not exists:
            self.errors.add(*where, f"file not found: {path}" if not imported_at else
                            f"imported file not found: {path}")
            return
        if not is_file:
            self.errors.add(*where, f"not a file: {path}")
            return
        self.total += size
        if self.total > self.max_bytes:
            self.errors.add(where[0], where[1] or 1, f"the train files together exceed the size limit of "
                                    f"{self.max_mb:g} MB ({self.total / 2**20:.1f} MB so far); "
                                    f"raise it with --max-xml-mb")
            return
        try:
            data = path.read_bytes()
        except OSError as exc:
            self.errors.add(*where, f"cannot read {path}: {exc.strerror or exc}")
            return
        self.sizes[display] = size
        reader = R.FileReader(path, display, self.errors)
        doc = reader.read(data)
        if doc is None:
            return
        self.loaded[path] = imported_at or R.Loc(display, 1)
        if not self.errors:   # the schema speaks only when our own reading found nothing
            self._validate_schema(data, display)
        for s in doc.samples:
            if system is not None:
                s.system_override = system
        self.files.append(doc)
        for imp in doc.imports:
            try:
                target = (path.parent / imp.path).resolve()
            except (OSError, RuntimeError, ValueError) as exc:   # a symlink loop, a bad name
                self.errors.add(imp.loc.file, imp.loc.line,
                                f"cannot resolve the import path {imp.path!r}: {exc}")
                continue
            if target in chain or target == path:
                names = " -> ".join(_display(p) for p in chain + [path, target])
                self.errors.add(imp.loc.file, imp.loc.line, f"import cycle: {names}")
                continue
            if target in self.loaded:
                self.errors.add(imp.loc.file, imp.loc.line,
                                f"{imp.path} is imported twice (first at {self.loaded[target]}); "
                                "import each file once")
                continue
            if len(chain) + 1 >= MAX_IMPORT_DEPTH:
                self.errors.add(imp.loc.file, imp.loc.line,
                                f"imports nest more than {MAX_IMPORT_DEPTH} files deep "
                                f"(from {_display(chain[0] if chain else path)})")
                return
            if not self._inside(target):
                if not self.allow_outside:
                    self.errors.add(imp.loc.file, imp.loc.line,
                                    f"import {imp.path!r} ({target}) is outside the folder of "
                                    f"{_display(self.main)} ({self.base}); imports outside it are "
                                    "refused here")
                    continue
                self.warnings.append(f"{imp.loc}: warning: import {imp.path!r} reads {target}, "
                                     f"outside the folder of {_display(self.main)}")
            self.load(target, chain + [path], imp.system or system, imp.loc)

    def _validate_schema(self, data: bytes, display: str) -> None:
        tree = etree.fromstring(data, R._parser()).getroottree()
        s = schema()
        if s.validate(tree):
            return
        for e in s.error_log:
            self.errors.add(display, e.line, f"does not match train.xsd: {e.message}")


def _merge(files: List[R.FileDoc], errors: Collector) -> TrainDoc:
    constants: Dict[str, R.Constant] = {}
    defs: Dict[str, Dict[str, R.Definition]] = {k: {} for k in
                                                ("system", "prompt", "thought", "response",
                                                 "source", "code")}
    samples: List[R.RawSample] = []
    phrases: Dict[str, R.Phrase] = {}
    beyond: Optional[R.BeyondScope] = None
    for f in files:
        for name, c in f.constants.items():
            constants.setdefault(name, c)
        for d in f.definitions:
            table = defs[d.kind]
            if d.id in table:
                first = table[d.id].loc
                errors.add(d.loc.file, d.loc.line,
                           f"duplicate {d.kind} id {d.id!r} (first defined at {first})")
            else:
                table[d.id] = d
        samples.extend(f.samples)
        for p in f.phrases:
            if p.pattern in phrases:
                have = {v for v, _ in phrases[p.pattern].variants}
                phrases[p.pattern].variants += [(v, l) for v, l in p.variants if v not in have]
            else:
                phrases[p.pattern] = R.Phrase(p.pattern, p.loc, list(p.variants))
        b = f.beyond_scope
        if b is not None:
            if beyond is None:
                beyond = R.BeyondScope(b.loc, b.system, b.response, b.thought, dict(b.flags),
                                       list(b.topics))
            else:
                beyond.thought = beyond.thought or b.thought
                for cat, flag in b.flags.items():
                    beyond.flags.setdefault(cat, flag)
                have = {(t.value, t.prefix) for t in beyond.topics}
                beyond.topics += [t for t in b.topics if (t.value, t.prefix) not in have]
    return TrainDoc(main=files[0].path if files else Path("."), files=files, constants=constants,
                    definitions=defs, samples=samples, phrases=list(phrases.values()),
                    beyond_scope=beyond)


def _check_refs(doc: TrainDoc, errors: Collector) -> None:
    def check(ref: Optional[R.Ref], context: str) -> None:
        if ref is not None and ref.id not in doc.definitions[ref.kind]:
            errors.add(ref.loc.file, ref.loc.line, f"{context} references unknown {ref.kind} id {ref.id!r}")

    for f in doc.files:
        for imp in f.imports:
            check(imp.system, "<import>")
    for s in doc.samples:
        if s.prompt is None:
            errors.add(s.loc.file, s.loc.line, "<sample> has no <prompt id=...>")
        check(s.prompt, "sample")
        check(s.thought, "sample")
        for r in s.systems:
            check(r, "sample")
        for item in s.items:
            check(item.ref, "sample")
        for turn in s.turns:
            check(turn.prompt, "sample")
            check(turn.thought, "sample")
            for item in turn.items:
                check(item.ref, "sample")
    b = doc.beyond_scope
    if b is not None:
        for r in (b.system, b.response, b.thought):
            check(r, "<beyond-scope>")


def check_max_xml_mb(max_xml_mb) -> float:
    """``--max-xml-mb``: a finite number of megabytes in (0, MAX_XML_MB]."""
    ok = isinstance(max_xml_mb, (int, float)) and not isinstance(max_xml_mb, bool)
    if not ok or not math.isfinite(max_xml_mb) or not 0 < max_xml_mb <= MAX_XML_MB:
        raise PoppinsError(f"--max-xml-mb must be a positive number of megabytes up to "
                           f"{MAX_XML_MB}, got {max_xml_mb!r}")
    return float(max_xml_mb)


def read_train_xml(path, max_xml_mb: float = DEFAULT_MAX_XML_MB,
                   allow_outside_imports: bool = True) -> TrainDoc:
    """Read, validate and merge ``path`` and its imports; raises PoppinsError with every problem.

    An import that resolves outside the main file's folder (``../``, an absolute path, a
    symlink out) adds a warning to ``doc.warnings``; with ``allow_outside_imports=False`` it
    is an error instead."""
    max_xml_mb = check_max_xml_mb(max_xml_mb)
    try:
        main = Path(path).resolve() if Path(path).exists() else Path(path)
    except (OSError, RuntimeError, ValueError) as exc:
        raise PoppinsError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") \
            from None
    errors = Collector()
    loader = _Loader(main, errors, int(max_xml_mb * 2**20), max_xml_mb,
                     allow_outside=allow_outside_imports)
    loader.load(main, [], None, None)
    errors.check()
    doc = _merge(loader.files, errors)
    doc.file_sizes = loader.sizes
    doc.warnings = loader.warnings
    _check_refs(doc, errors)
    errors.check()
    return doc
