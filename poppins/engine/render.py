"""Turning generated token ids into the answer text (decisions.md, "Inference").

    r = Renderer(tokenizer, sources={"docs": {"url": "https://..."}}, show_thoughts=False)
    for t in ids: r.feed(t)
    r.text()            # the answer so far (grows by appending only: safe to stream)
    r.text(final=True)  # the whole answer (open items closed)

Rendering rules:
- text items as written (concatenated, nothing added);
- ``<line-break />`` one newline, ``<line-break count="2" />`` two (a blank line);
- a source as `` (source: URL)`` when the id's URL is known, else `` (source: ID)``;
- a code block as a fenced block (```` ```lang ````), starting on a new line, every non-empty
  line (fences included) indented by 4 spaces per indent level; text after it starts on a new
  line; inline code as `` `code` ``;
- thoughts are hidden unless ``show_thoughts`` (then they come first, followed by a blank
  line).
Tokens outside any item inside ``<ai>`` are rendered as text.  Invalid UTF-8 becomes U+FFFD;
a multi-byte character split over tokens is held back until it is complete.
"""
from __future__ import annotations

import codecs
import re
from typing import Dict, List, Mapping, Optional

from ..special_tokens import CODE_LANGS, LINE_BREAK, LINE_BREAK_2, MAX_INDENT, SPECIAL_IDS, \
    code_close, code_open

S = SPECIAL_IDS
_CODE_OPEN: Dict[int, tuple] = {}
_CODE_CLOSE: Dict[int, str] = {}
for _lang in CODE_LANGS:
    _CODE_OPEN[S[code_open(_lang)]] = (_lang, False, 0)
    _CODE_OPEN[S[code_open(_lang, inline=True)]] = (_lang, True, 0)
    for _i in range(1, MAX_INDENT + 1):
        _CODE_OPEN[S[code_open(_lang, indent=_i)]] = (_lang, False, _i)
    _CODE_CLOSE[S[code_close(_lang)]] = _lang

LB1, LB2 = S[LINE_BREAK], S[LINE_BREAK_2]
from ..corpus.tokens import STOP_IDS, answer_ids, source_id  # noqa: E402  (the layout: once)


def _decode(data: bytes, final: bool) -> str:
    """UTF-8 with replacement; unless ``final``, an incomplete trailing character is held back."""
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    return dec.decode(data, final=final)


_LINK = re.compile(r"https?://[A-Za-z0-9\-._~:/?#\[\]@!$&*+,;=%]+\Z", re.IGNORECASE)
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def is_link(url: str) -> bool:
    """True for an http(s) URL that a client may turn into a link (printable ASCII, no
    spaces, quotes or brackets); any other source url is shown as text only."""
    return isinstance(url, str) and _LINK.match(url) is not None


def source_text(sid: str, sources: Mapping[str, Mapping]) -> str:
    """`` (source: URL)`` for an http(s) url; any other url (``javascript:``, ``file:``, ...)
    is kept as text: control characters dropped (no terminal escapes) and set in backticks,
    so neither the chat page (which links only http(s)) nor a Markdown client links it.
    A reference the model file does not define (a malformed id the model made up, such as
    ``so::lib::lib::lib::api``) or one without a url renders as nothing: a source id is never
    printed raw (issue 12)."""
    info = sources.get(sid) if sources else None
    url = info.get("url") if isinstance(info, Mapping) else None
    if not url or not isinstance(url, str):
        return ""
    if is_link(url):
        return f" (source: {url})"
    return f" (source: `{_CONTROLS.sub('', url).replace('`', chr(39))}`)"


def code_block(lang: str, inline: bool, indent: int, content: str, closed: bool,
               at_line_start: bool) -> str:
    """The rendering of a (possibly still open) code block."""
    if inline:
        return "`" + content + ("`" if closed else "")
    ind = " " * (4 * indent)
    out = ("" if at_line_start else "\n") + ind + "```" + lang + "\n"
    lines = content.split("\n")
    out += "\n".join((ind + ln) if ln else "" for ln in lines)
    if closed:
        out += ("" if content.endswith("\n") or not content else "\n") + ind + "```"
    return out


class Renderer:
    """Incremental renderer of one answer."""

    def __init__(self, tokenizer, sources: Optional[Mapping] = None, show_thoughts: bool = False):
        self.tok = tokenizer
        self.sources = sources or {}
        self.show_thoughts = show_thoughts
        self.done: List[str] = []       # rendered, closed items
        self.state = "pre"              # pre | thought | ai
        self.item: Optional[tuple] = None   # open item: (kind, info, bytearray)
        self.newline_due = False        # text after a fenced block starts on a new line
        self.ids: List[int] = []

    # --------------------------------------------------------------- helpers
    def _done_text(self) -> str:
        if len(self.done) > 1:
            self.done = ["".join(self.done)]
        return self.done[0] if self.done else ""

    def _at_line_start(self) -> bool:
        t = self._done_text()
        return not t or t.endswith("\n")

    def _open(self, kind: str, info=None) -> None:
        self._close()
        self.item = (kind, info, bytearray())

    def _render_item(self, final: bool, closed: bool) -> str:
        if self.item is None:
            return ""
        kind, info, data = self.item
        if kind == "source":
            if not closed:
                return ""
            return source_text(source_id(_decode(bytes(data), True)), self.sources)
        text = _decode(bytes(data), final or closed)
        if kind == "code":
            lang, inline, indent = info
            return code_block(lang, inline, indent, text, closed, self._at_line_start())
        if kind == "thought":
            if not self.show_thoughts:
                return ""
            return text + ("\n\n" if closed else "")
        return text  # text

    def _prefix_for(self, kind, info) -> str:
        """A newline owed after a fenced block, paid by the next text-like item."""
        if self.newline_due and kind in ("text", "source") or \
                (self.newline_due and kind == "code" and info[1]):
            return "\n"
        return ""

    def _close(self) -> None:
        if self.item is None:
            return
        kind, info, data = self.item
        pre = self._prefix_for(kind, info) if data or kind == "source" else ""
        if pre:
            self.done.append(pre)
            self.newline_due = False
        body = self._render_item(True, True)  # may consolidate self.done: append after
        self.done.append(body)
        if kind == "code" and not info[1]:
            self.newline_due = True
        self.item = None

    # --------------------------------------------------------------- feeding
    def feed(self, t: int) -> None:
        t = int(t)
        self.ids.append(t)
        if t < len(S):
            self._special(t)
            return
        if self.item is None:
            if self.state == "thought":
                self.item = ("thought", None, bytearray())
            else:
                self.state = "ai"
                self.item = ("text", None, bytearray())
        self.item[2].extend(self.tok.id_to_bytes(t))

    def _special(self, t: int) -> None:
        if t == S["<thought>"]:
            self._close()
            self.state = "thought"
            self.item = ("thought", None, bytearray())
        elif t == S["</thought>"]:
            self._close()
            self.state = "pre"
        elif t == S["<ai>"]:
            self._close()
            self.state = "ai"
        elif t in STOP_IDS:
            self._close()
        elif t == S["<text>"]:
            self._open("text")
        elif t == S["<source>"]:
            self._open("source")
        elif t in _CODE_OPEN:
            self._open("code", _CODE_OPEN[t])
        elif t in (S["</text>"], S["</source>"]) or t in _CODE_CLOSE:
            if self.item is not None and self.item[0] != "thought":
                self._close()
        elif t in (LB1, LB2):
            self._close()
            self.newline_due = False
            self.done.append("\n" if t == LB1 else "\n\n")
        # other structural tokens (<sample>, <prompt>, <system>...) render as nothing

    def text(self, final: bool = False) -> str:
        """The answer rendered so far.  Without ``final`` the result only ever grows by
        appending (an open source or a split character is held back)."""
        base = self._done_text()
        if self.item is None:
            return base
        kind, info, data = self.item
        body = self._render_item(final, False)
        if not body:
            return base
        pre = self._prefix_for(kind, info) if data else ""
        return base + pre + body


def render_answer(tokenizer, items, thought: Optional[str] = None,
                  sources: Optional[Mapping] = None) -> "tuple[str, int]":
    """The rendered text of one answer (its items and thought, as a trained model produces
    them: ``poppins.corpus.tokens.answer_ids``) with whitespace trimmed, and the number of
    ids it takes.  What a client shows and sends back as the assistant's message: ``eval``
    expects it, and training's replayed conversations hold it."""
    ids = answer_ids(tokenizer, items, thought)
    r = Renderer(tokenizer, sources)
    for t in ids:
        r.feed(t)
    return r.text(final=True).strip(), len(ids)
