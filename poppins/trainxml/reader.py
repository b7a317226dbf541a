"""Read one train.xml file (either dialect) into plain records, strictly.

Parsing is safe with hostile input: no DTD is loaded, no entity is expanded, nothing is
fetched, and a file with a DOCTYPE is refused.  The structure is checked element by element
with messages that name the file, the line and what is wrong (unknown element or attribute,
missing attribute, bad value); every problem goes to a :class:`~poppins.errors.Collector` so a
user sees up to 20 of them at once.  Ids are resolved later, across all imported files
(``document.py``).

Text content: leading and trailing XML whitespace of plain text is trimmed (as the original
Poppins does); CDATA content is kept verbatim; inner newlines and indentation are kept.
"""
from __future__ import annotations

import difflib
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from lxml import etree

from ..errors import Collector
from ..special_tokens import CODE_LANGS, MAX_INDENT
from . import constants as C

XSI = "http://www.w3.org/2001/XMLSchema-instance"
#: An element with more attributes than this is refused before they are read.
MAX_ATTRIBUTES = 32
#: Import paths: at most this many characters (and 255 bytes per path component).
MAX_IMPORT_PATH = 1024
XML_WS = " \t\r\n"

#: Root sections, in the order the documentation lists them.
SECTIONS = ("imports", "constants", "system-prompts", "prompts", "thoughts", "responses",
            "sources", "code-snippets", "samples", "phrases", "beyond-scope")
#: Definition sections holding ``<tag id="...">TEXT</tag>`` elements: section -> (tag, kind).
TEXT_DEFS = {"system-prompts": ("system", "system"), "prompts": ("prompt", "prompt"),
             "thoughts": ("thought", "thought"), "responses": ("response", "response")}
CATEGORIES = ("sports", "food", "movies", "history", "geography", "politics", "science",
              "health", "art", "music", "fashion", "travel", "pets", "cars")


@dataclass(frozen=True)
class Loc:
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class Definition:
    kind: str            # system | prompt | thought | response | source | code
    id: str
    loc: Loc
    text: str = ""
    url: str = ""        # sources
    title: str = ""      # sources
    lang: str = ""       # code


@dataclass
class Ref:
    """A reference to a definition by id, with where it was written."""
    kind: str
    id: str
    loc: Loc


@dataclass
class AiItem:
    kind: str                         # response | source | code | line-break
    ref: Optional[Ref] = None
    inline: bool = False
    indent: int = 0
    count: int = 1
    loc: Optional[Loc] = None


@dataclass
class RawTurn:
    """A later turn of a conversation: its prompt, optional thought and answer items."""
    prompt: Ref
    thought: Optional[Ref] = None
    items: List[AiItem] = field(default_factory=list)


@dataclass
class RawSample:
    loc: Loc
    systems: List[Ref] = field(default_factory=list)
    prompt: Optional[Ref] = None            # the first (or only) turn
    thought: Optional[Ref] = None
    items: List[AiItem] = field(default_factory=list)
    turns: List[RawTurn] = field(default_factory=list)   # the turns after the first
    system_override: Optional[Ref] = None   # set by an <import system="..."> above this file


@dataclass
class Phrase:
    pattern: str
    loc: Loc
    variants: List[Tuple[str, Loc]] = field(default_factory=list)


@dataclass
class Topic:
    value: str
    prefix: str
    loc: Loc


@dataclass
class BeyondScope:
    loc: Loc
    system: Optional[Ref] = None
    response: Optional[Ref] = None
    thought: Optional[Ref] = None
    flags: Dict[str, bool] = field(default_factory=dict)
    topics: List[Topic] = field(default_factory=list)


@dataclass
class Import:
    path: str
    system: Optional[Ref]
    loc: Loc


@dataclass
class Constant:
    name: str
    value: object
    loc: Loc


@dataclass
class FileDoc:
    path: Path
    display: str
    dialect: str = "current"          # "early" when <constant key=...> is used
    imports: List[Import] = field(default_factory=list)
    constants: Dict[str, Constant] = field(default_factory=dict)
    definitions: List[Definition] = field(default_factory=list)
    samples: List[RawSample] = field(default_factory=list)
    phrases: List[Phrase] = field(default_factory=list)
    beyond_scope: Optional[BeyondScope] = None
    root_line: int = 1


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, load_dtd=False, no_network=True,
                           strip_cdata=False, huge_tree=False, remove_blank_text=False)


_CDATA = re.compile(r"<!\[CDATA\[(.*?)\]\]>", re.S)
_MARKUP_NOISE = re.compile(r"<!--.*?-->|<\?.*?\?>", re.S)


def _suggest(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f" (did you mean <{close[0]}>?)" if close else ""


class FileReader:
    """Reads one file; problems go to ``errors``."""

    def __init__(self, path: Path, display: str, errors: Collector):
        self.path = path
        self.display = display
        self.errors = errors

    # -- helpers ---------------------------------------------------------------------------
    def loc(self, el) -> Loc:
        return Loc(self.display, el.sourceline or 1)

    def err(self, el_or_line, message: str, col: Optional[int] = None) -> None:
        line = el_or_line if isinstance(el_or_line, int) else (el_or_line.sourceline or 1)
        self.errors.add(self.display, line, message, col)

    def elements(self, parent, allowed) -> list:
        """Child elements of ``parent`` whose tag is in ``allowed``; reports the others and stray text."""
        out = []
        if parent.text and parent.text.strip(XML_WS):
            self.err(parent, f"unexpected text {parent.text.strip()[:40]!r} inside <{parent.tag}>")
        for child in parent:
            if isinstance(child.tag, str):
                if child.tag in allowed:
                    out.append(child)
                else:
                    self.err(child, f"unknown element <{self.tagname(child)}> in <{parent.tag}>"
                             + _suggest(self.tagname(child), allowed)
                             + f"; expected {', '.join('<%s>' % a for a in allowed)}")
            if child.tail and child.tail.strip(XML_WS):
                self.err(child, f"unexpected text {child.tail.strip()[:40]!r} after "
                                f"<{self.tagname(child)}>")
        return out

    @staticmethod
    def tagname(el) -> str:
        tag = el.tag
        if isinstance(tag, str) and tag.startswith("{"):
            return tag.split("}", 1)[1] + f" (namespace {tag[1:].split('}', 1)[0]})"
        return tag

    def attrs(self, el, required=(), optional=()) -> Dict[str, str]:
        out = {}
        allowed = set(required) | set(optional)
        # lxml looks attribute values up by name, so reading n of them costs n^2: count first
        n = len(el.attrib)
        if n > MAX_ATTRIBUTES:
            self.err(el, f"<{self.tagname(el)}> has {n} attributes; at most {MAX_ATTRIBUTES} "
                         f"are accepted (allowed here: {', '.join(sorted(allowed)) or 'none'})")
            return out
        for key, value in el.attrib.items():
            if key.startswith("{"):
                if key.startswith("{%s}" % XSI) and el.getparent() is None:
                    continue  # xsi:noNamespaceSchemaLocation and friends on the root
                self.err(el, f"unknown attribute {key} on <{el.tag}>")
            elif key in allowed:
                out[key] = value
            else:
                close = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]}?)" if close else ""
                expected = ", ".join(sorted(allowed)) or "none"
                self.err(el, f"unknown attribute {key!r} on <{el.tag}>{hint}; allowed: {expected}")
        for key in required:
            if key not in el.attrib:
                self.err(el, f"<{el.tag}> is missing the required attribute {key!r}")
        return out

    def id_attr(self, el, attrs, key="id") -> Optional[str]:
        value = attrs.get(key)
        if value is None:
            return None
        if not value.strip(XML_WS):
            self.err(el, f"<{el.tag}> has an empty {key!r} attribute")
            return None
        return value

    def text(self, el, trim: bool = True) -> str:
        """Text content: plain text trimmed at both ends, CDATA verbatim, markup refused."""
        kids = [c for c in el if isinstance(c.tag, str)]
        if kids:
            self.err(kids[0], f"<{el.tag}> must contain text only, found <{self.tagname(kids[0])}>; "
                              "write markup as &lt;...&gt; or inside <![CDATA[...]]>")
            return ""
        has_cdata_or_noise = len(el) > 0
        if not has_cdata_or_noise:
            raw = etree.tostring(el, encoding=str, with_tail=False)
            has_cdata_or_noise = "<![CDATA[" in raw
        if not has_cdata_or_noise:
            text = el.text or ""
            return text.strip(XML_WS) if trim else text
        raw = etree.tostring(el, encoding=str, with_tail=False)
        if raw.endswith("/>"):
            return ""
        inner = raw[raw.index(">") + 1: raw.rindex("</")]
        parts: List[Tuple[bool, str]] = []   # (is_cdata, text)
        pos = 0
        for m in _CDATA.finditer(inner):
            parts.append((False, html.unescape(_MARKUP_NOISE.sub("", inner[pos:m.start()]))))
            parts.append((True, m.group(1)))
            pos = m.end()
        parts.append((False, html.unescape(_MARKUP_NOISE.sub("", inner[pos:]))))
        if trim:
            if not parts[0][0]:
                parts[0] = (False, parts[0][1].lstrip(XML_WS))
            if not parts[-1][0]:
                parts[-1] = (False, parts[-1][1].rstrip(XML_WS))
        return "".join(p for _, p in parts)

    def bool_attr(self, el, attrs, key) -> Optional[bool]:
        if key not in attrs:
            return None
        v = attrs[key].strip(XML_WS)
        if v in ("true", "1"):
            return True
        if v in ("false", "0"):
            return False
        self.err(el, f"{key}={attrs[key]!r} on <{el.tag}> must be true or false")
        return None

    # -- the file --------------------------------------------------------------------------
    def read(self, data: bytes) -> Optional[FileDoc]:
        try:
            root = etree.fromstring(data, _parser())
        except etree.XMLSyntaxError as exc:
            line, col = exc.position if exc.position else (exc.lineno or 1, None)
            msg = exc.msg or str(exc)
            msg = re.sub(r",? line \d+, column \d+$", "", msg)
            if "encoding" in msg.lower() or "utf-8" in msg.lower():
                msg += " (the file is not in the encoding its XML declaration names; UTF-8 by default)"
            self.errors.add(self.display, line or 1, f"malformed XML: {msg}", col or None)
            return None
        tree = root.getroottree()
        if tree.docinfo.internalDTD is not None or tree.docinfo.doctype:
            m = re.search(rb"<!DOCTYPE", data)
            line = data.count(b"\n", 0, m.start()) + 1 if m else 1
            self.errors.add(self.display, line,
                            "DOCTYPE declarations are not allowed in train files: poppins does not "
                            "expand entities or load anything external; remove the <!DOCTYPE ...>")
            return None
        doc = FileDoc(path=self.path, display=self.display, root_line=root.sourceline or 1)
        crowded = False
        for el in root.iter():   # one linear pass before any attribute is read
            if isinstance(el.tag, str) and len(el.attrib) > MAX_ATTRIBUTES:
                self.err(el, f"<{self.tagname(el)}> has {len(el.attrib)} attributes; at most "
                             f"{MAX_ATTRIBUTES} are accepted")
                crowded = True
        if crowded:
            return doc
        if root.tag != "train":
            self.err(root, f"the root element is <{self.tagname(root)}>, expected <train>")
            return doc
        self.attrs(root)
        seen: Dict[str, int] = {}
        for section in self.elements(root, SECTIONS):
            if section.tag in seen:
                self.err(section, f"<{section.tag}> appears twice in <train> (first at line "
                                  f"{seen[section.tag]}); merge them into one")
                continue
            seen[section.tag] = section.sourceline or 1
            getattr(self, "_" + section.tag.replace("-", "_"))(section, doc)
        return doc

    # -- sections --------------------------------------------------------------------------
    def _imports(self, section, doc: FileDoc) -> None:
        self.attrs(section)
        for el in self.elements(section, ("import",)):
            a = self.attrs(el, required=("path",), optional=("system",))
            path = a.get("path", "").strip(XML_WS)
            if "path" in a and not path.endswith(".xml"):
                self.err(el, f"import path {path[:80]!r} must name a .xml file")
                continue
            if len(path) > MAX_IMPORT_PATH or "\0" in path or any(
                    len(part.encode("utf-8", "surrogatepass")) > 255
                    for part in path.replace("\\", "/").split("/")):
                self.err(el, f"import path {path[:80]!r}... is too long (at most "
                             f"{MAX_IMPORT_PATH} characters, 255 bytes per folder or file name)")
                continue
            sys_id = self.id_attr(el, a, "system")
            if path:
                doc.imports.append(Import(path, Ref("system", sys_id, self.loc(el)) if sys_id else None,
                                          self.loc(el)))

    def _constants(self, section, doc: FileDoc) -> None:
        self.attrs(section)
        allowed = ("constant",) + tuple(C.SPECS)
        for el in self.elements(section, allowed):
            if el.tag == "constant":
                self._early_constant(el, doc)
                continue
            spec = C.SPECS[el.tag]
            if el.tag in doc.constants:
                self.err(el, f"<{el.tag}> is set twice (first at line {doc.constants[el.tag].loc.line})")
                continue
            self.attrs(el)
            if spec.kind == "list":
                values = []
                for v in self.elements(el, ("value",)):
                    self.attrs(v)
                    values.append(self.text(v, trim=False))
                doc.constants[el.tag] = Constant(el.tag, [v for v in values if v], self.loc(el))
                continue
            value, problem = C.parse_value(spec, self.text(el))
            if problem:
                self.err(el, f"<{el.tag}> {problem}")
            else:
                doc.constants[el.tag] = Constant(el.tag, value, self.loc(el))

    def _early_constant(self, el, doc: FileDoc) -> None:
        doc.dialect = "early"
        a = self.attrs(el, required=("key", "value"), optional=("delimiter",))
        if "key" not in a or "value" not in a:
            return
        key = a["key"]
        name = C.name_for_key(key)
        if name is None:
            known = sorted(k.replace("-", "_") for k in C.SPECS)
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            self.err(el, f"unknown constant key {key!r}{hint}")
            return
        spec = C.SPECS[name]
        if spec.kind == "list":
            delim = a.get("delimiter", "|") or "|"
            values = [v for v in a["value"].split(delim) if v]
            doc.constants[name] = Constant(name, values, self.loc(el))
            return
        if "delimiter" in a:
            self.err(el, f"delimiter is only meaningful for bpe_requested_tokens, not {key!r}")
        value, problem = C.parse_value(spec, a["value"])
        if problem:
            self.err(el, f"constant {key!r} {problem}")
        else:  # as in the original, a later <constant> with the same key overwrites an earlier one
            doc.constants[name] = Constant(name, value, self.loc(el))

    def _text_definitions(self, section, doc: FileDoc) -> None:
        tag, kind = TEXT_DEFS[section.tag]
        self.attrs(section)
        for el in self.elements(section, (tag,)):
            a = self.attrs(el, required=("id",))
            ident = self.id_attr(el, a)
            text = self.text(el)
            if ident is None:
                continue
            if not text and kind in ("prompt", "response"):
                self.err(el, f"<{tag} id={ident!r}> is empty")
                continue
            doc.definitions.append(Definition(kind, ident, self.loc(el), text=text))

    _system_prompts = _prompts = _thoughts = _responses = _text_definitions

    def _sources(self, section, doc: FileDoc) -> None:
        self.attrs(section)
        for el in self.elements(section, ("source",)):
            a = self.attrs(el, required=("id", "url"), optional=("title",))
            ident = self.id_attr(el, a)
            if ident is not None and "url" in a:
                if el.text and el.text.strip(XML_WS):
                    self.err(el, f"<source id={ident!r}> takes no text; put it in title=\"...\"")
                doc.definitions.append(Definition("source", ident, self.loc(el),
                                                  url=a["url"].strip(XML_WS),
                                                  title=a.get("title", "").strip(XML_WS)))

    def _code_snippets(self, section, doc: FileDoc) -> None:
        self.attrs(section)
        for el in self.elements(section, ("code",)):
            a = self.attrs(el, required=("id", "lang"))
            ident = self.id_attr(el, a)
            lang = a.get("lang")
            if lang is not None and lang not in CODE_LANGS:
                self.err(el, f"unknown code lang {lang!r} on <code id={ident!r}>; "
                             f"use one of {', '.join(CODE_LANGS)}")
                continue
            text = self.text(el)
            if ident is not None and lang is not None:
                if not text:
                    self.err(el, f"<code id={ident!r}> is empty")
                    continue
                doc.definitions.append(Definition("code", ident, self.loc(el), text=text, lang=lang))

    def _samples(self, section, doc: FileDoc) -> None:
        self.attrs(section)
        for el in self.elements(section, ("sample-ids", "sample")):
            if el.tag == "sample-ids":
                self._sample_ids(el, doc)
            else:
                self._sample(el, doc)

    def _ref(self, el, attrs, key, kind) -> Optional[Ref]:
        ident = self.id_attr(el, attrs, key)
        return Ref(kind, ident, self.loc(el)) if ident else None

    def _sample_ids(self, el, doc: FileDoc) -> None:
        a = self.attrs(el, required=("prompt",),
                       optional=("response", "source", "code", "system", "thought"))
        s = RawSample(self.loc(el))
        s.prompt = self._ref(el, a, "prompt", "prompt")
        sys_ref = self._ref(el, a, "system", "system")
        s.systems = [sys_ref] if sys_ref else []
        s.thought = self._ref(el, a, "thought", "thought")
        for key in ("response", "source", "code"):
            ref = self._ref(el, a, key, key)
            if ref:
                s.items.append(AiItem(key, ref, loc=ref.loc))
        doc.samples.append(s)

    def _sample(self, el, doc: FileDoc) -> None:
        """A <sample>.  With one <prompt> its position does not matter (as in the original).
        With several it is a conversation: the items after each prompt, up to the next one,
        are that turn's answer (the original kept only the last prompt)."""
        self.attrs(el)
        s = RawSample(self.loc(el))
        children = self.elements(el, ("system", "prompt", "thought", "response", "source", "code",
                                      "response-ids", "line-break"))
        if not children:
            self.err(el, "<sample> is empty; it needs a <prompt id=...> and an answer")
        conversation = sum(c.tag == "prompt" for c in children) > 1
        turn: Optional[RawTurn] = None     # the current later turn of a conversation
        for c in children:
            if conversation and c.tag in ("prompt", "thought", "response", "source", "code",
                                          "response-ids", "line-break"):
                if c.tag != "prompt" and s.prompt is None:
                    self.err(c, f"<{c.tag}> comes before the first <prompt> of a conversation; "
                                "each turn's answer follows its prompt")
                    continue
                if c.tag == "prompt" and s.prompt is not None:
                    a = self.attrs(c, required=("id",))
                    ref = self._ref(c, a, "id", "prompt")
                    if ref is not None:
                        turn = RawTurn(ref)
                        s.turns.append(turn)
                    continue
                if turn is not None:
                    self._turn_child(c, turn)
                    continue
            self._first_turn_child(c, s)
        doc.samples.append(s)

    def _turn_child(self, c, turn: RawTurn) -> None:
        holder = RawSample(self.loc(c))
        self._first_turn_child(c, holder)
        if holder.thought is not None:
            turn.thought = holder.thought
        turn.items += holder.items

    def _first_turn_child(self, c, s: RawSample) -> None:
        """One child of a single-turn sample (or of the first turn of a conversation)."""
        loc = self.loc(c)
        if c.tag in ("system", "prompt", "thought", "response", "source"):
            a = self.attrs(c, required=("id",))
            ref = self._ref(c, a, "id", c.tag)
            if ref is None:
                return
            if c.tag == "system":
                s.systems.append(ref)
            elif c.tag == "prompt":
                s.prompt = ref
            elif c.tag == "thought":
                s.thought = ref
            else:
                s.items.append(AiItem(c.tag, ref, loc=loc))
        elif c.tag == "code":
            a = self.attrs(c, required=("id",), optional=("indent", "inline"))
            ref = self._ref(c, a, "id", "code")
            inline = bool(self.bool_attr(c, a, "inline"))
            indent = 0
            if "indent" in a:
                raw = a["indent"].strip(XML_WS)
                # ASCII digits only ("²".isdigit() is true), and short enough for int()
                if raw.isascii() and raw.isdigit() and len(raw) <= 6 and int(raw) <= MAX_INDENT:
                    indent = int(raw)
                else:
                    self.err(c, f"indent={a['indent'][:20]!r} must be a whole number from 0 to "
                                f"{MAX_INDENT}")
            if ref:
                s.items.append(AiItem("code", ref, inline=inline, indent=indent, loc=loc))
        elif c.tag == "response-ids":
            a = self.attrs(c, required=("response",), optional=("source",))
            r = self._ref(c, a, "response", "response")
            src = self._ref(c, a, "source", "source")
            if r:
                s.items.append(AiItem("response", r, loc=loc))
            if src:
                s.items.append(AiItem("source", src, loc=loc))
        else:  # line-break
            a = self.attrs(c, optional=("count",))
            raw = a.get("count", "1").strip(XML_WS)
            if raw not in ("1", "2"):
                self.err(c, f"line-break count={a.get('count')!r} must be 1 or 2")
                return
            s.items.append(AiItem("line-break", count=int(raw), loc=loc))

    def _phrases(self, section, doc: FileDoc) -> None:
        self.attrs(section)
        for el in self.elements(section, ("phrase",)):
            a = self.attrs(el, required=("pattern",))
            if "pattern" not in a:
                continue
            if not a["pattern"]:
                self.err(el, "<phrase> has an empty pattern")
                continue
            p = Phrase(a["pattern"], self.loc(el))
            variants = self.elements(el, ("variant",))
            if not variants:
                self.err(el, "<phrase> needs at least one <variant value=...>")
            for v in variants:
                va = self.attrs(v, required=("value",))
                if "value" in va:
                    p.variants.append((va["value"], self.loc(v)))
            doc.phrases.append(p)

    def _beyond_scope(self, section, doc: FileDoc) -> None:
        a = self.attrs(section, required=("system", "response"), optional=("thought",) + CATEGORIES)
        b = BeyondScope(self.loc(section))
        b.system = self._ref(section, a, "system", "system")
        b.response = self._ref(section, a, "response", "response")
        b.thought = self._ref(section, a, "thought", "thought")
        for cat in CATEGORIES:
            flag = self.bool_attr(section, a, cat)
            if flag is not None:
                b.flags[cat] = flag
        for t in self.elements(section, ("topic",)):
            ta = self.attrs(t, required=("value", "prefix"))
            if "value" in ta and "prefix" in ta:
                value, prefix = ta["value"].strip(XML_WS), ta["prefix"].strip(XML_WS)
                if not value:
                    self.err(t, "<topic> has an empty value")
                    continue
                b.topics.append(Topic(value, prefix, self.loc(t)))
        doc.beyond_scope = b
