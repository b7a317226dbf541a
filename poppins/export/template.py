"""The chat template: OpenAI-style messages rendered into poppins' conversation layout.

The layout is :mod:`poppins.corpus.tokens`' (``sample_head_ids``, ``system_part``,
``prompt_part``, ``answer_text_part``); the Jinja text below is *derived* from those helpers
(each is called with a placeholder and its ids are spelled as their special tokens), so the
template cannot drift from what training and ``poppins.api`` build::

    <sample> [<system> S </system>] then per message
    user:      <prompt><text> U </text></prompt>
    assistant: <ai><text> A </text></ai>

A first ``system`` message replaces the model's default system prompt (embedded in the
template when the model has one); an empty system text means none, as in ``poppins.api``.
No generation prompt is appended: the model itself opens its answer (``<ai>`` or
``<thought>``) after ``</prompt>``, and stops at ``</ai>`` (``STOP_IDS``).

One difference from poppins' own encoding: a chat template is text, so markup such as
``<text>`` typed inside a message is read as the special token by llama.cpp and transformers,
while poppins encodes message text with special-token matching off.
"""
from __future__ import annotations

import json
from typing import List, Optional

from ..corpus import tokens as T
from ..special_tokens import SPECIAL_TOKENS

_HOLE = object()


def _spell(parts, expr: str) -> str:
    """The parts of a layout helper as template text; the placeholder part becomes ``expr``."""
    out = []
    for p in parts:
        if p is _HOLE:
            out.append(expr)
        else:
            out.append("".join(SPECIAL_TOKENS[int(i)] for i in p))
    return "".join(out)


def _head() -> str:
    ids = T.sample_head_ids(None)          # no system: the tokenizer is never used
    return "".join(SPECIAL_TOKENS[i] for i in ids)


def chat_template(default_system: Optional[str] = None) -> str:
    """The Jinja chat template (transformers' ``chat_template``, GGUF's
    ``tokenizer.chat_template``) of a model whose default system prompt is ``default_system``."""
    default = json.dumps(default_system or "", ensure_ascii=False)
    system = _spell(T.system_part(_HOLE), "{{ sys }}")
    user = _spell(T.prompt_part(_HOLE), "{{ m['content'] }}")
    answer = _spell(T.answer_text_part(_HOLE), "{{ m['content'] }}")
    lines: List[str] = [
        "{%- if messages and messages[0]['role'] == 'system' -%}",
        "{%- set sys = messages[0]['content'] -%}",
        "{%- else -%}",
        "{%- set sys = " + default + " -%}",
        "{%- endif -%}",
        _head(),
        "{%- if sys -%}" + system + "{%- endif -%}",
        "{%- for m in messages -%}",
        "{%- if m['role'] == 'user' -%}" + user,
        "{%- elif m['role'] == 'assistant' -%}" + answer,
        "{%- endif -%}",
        "{%- endfor -%}",
    ]
    return "\n".join(lines)


#: the token after which generation stops (an answered turn), and the end of a sample
def stop_tokens() -> List[str]:
    return [SPECIAL_TOKENS[i] for i in T.STOP_IDS]


def set_in_tokenizer_config(path, default_system: Optional[str]) -> None:
    """Rewrite the ``chat_template`` of the tokenizer_config.json at ``path`` for a model whose
    default system prompt is ``default_system`` (the data stage calls this: it knows it)."""
    from pathlib import Path
    from ..tokenizer import hf_json
    p = Path(path)
    cfg = json.loads(p.read_text(encoding="utf-8"))
    p.write_text(hf_json.dumps(hf_json.with_chat_template(cfg, default_system)), encoding="utf-8")
