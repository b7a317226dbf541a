"""``train_corpus.xml`` / ``val_corpus.xml``: human-readable, well-formed dumps of the samples.

Layout (text escaped, so user text such as ``<html>`` stays text)::

    <?xml version="1.0" encoding="UTF-8"?>
    <samples count="2">
      <sample origin="train.xml:12">
        <system>...</system>
        <prompt>
          <text>What is a computer?</text>
        </prompt>
        <thought>...</thought>
        <ai>
          <text>A computer is ...</text>
          <source>so::computer</source>
          <line-break />
          <bash indent="1">ls -la</bash>
        </ai>
      </sample>
    </samples>

Each element mirrors one special token of the model's stream (see poppins.special_tokens);
multi-line text and code are written verbatim (escaped), not re-indented.  A replayed
conversation (augmentation) has ``<history><user>U</user><assistant>A</assistant></history>``
elements after ``<system>``: earlier exchanges as a client sends them back, not learned.
"""
from __future__ import annotations

from typing import Iterable, List
from xml.sax.saxutils import escape, quoteattr

from ..special_tokens import LINE_BREAK, LINE_BREAK_2, code_close, code_open


def _esc(text: str) -> str:
    return escape(text, {"\r": "&#13;"})


def _item_xml(item) -> str:
    if item.kind == "text":
        return f"<text>{_esc(item.text)}</text>"
    if item.kind == "source":
        return f"<source>{_esc(item.text)}</source>"
    if item.kind == "line-break":
        return LINE_BREAK if item.count == 1 else LINE_BREAK_2
    return code_open(item.lang, item.inline, item.indent) + _esc(item.text) + code_close(item.lang)


def dump_samples_xml(samples: Iterable) -> str:
    samples = list(samples)
    out: List[str] = ['<?xml version="1.0" encoding="UTF-8"?>\n',
                      f'<samples count="{len(samples)}">\n']
    for s in samples:
        attrs = f" origin={quoteattr(s.origin)}"
        if s.variant:
            attrs += f" variant={quoteattr(s.variant)}"
        out.append(f"  <sample{attrs}>\n")
        if s.system:
            out.append(f"    <system>{_esc(s.system)}</system>\n")
        for user, assistant in s.history:   # replayed as a client sends it (never learned)
            out.append(f"    <history>\n      <user>{_esc(user)}</user>\n      <assistant>"
                       f"{_esc(assistant)}</assistant>\n    </history>\n")
        for prompt, thought, items in [(s.prompt, s.thought, s.items)] + \
                [(t.prompt, t.thought, t.items) for t in s.turns]:
            out.append(f"    <prompt>\n      <text>{_esc(prompt)}</text>\n    </prompt>\n")
            if thought:
                out.append(f"    <thought>{_esc(thought)}</thought>\n")
            out.append("    <ai>\n")
            out.extend(f"      {_item_xml(it)}\n" for it in items)
            out.append("    </ai>\n")
        out.append("  </sample>\n")
    out.append("</samples>\n")
    return "".join(out)
