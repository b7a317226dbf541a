"""The 125 special tokens of the current Poppins format, ids 0..124, in the original's order.

Exact spelling matters (one space before ``/>``, double quotes).  They are never merged with
anything by the tokenizer, and text from a user's file never turns into one of them.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

#: The twelve code languages, in the order their token blocks appear.
CODE_LANGS: Tuple[str, ...] = ("html", "css", "js", "ts", "jsx", "tsx", "rust", "bash", "xml",
                               "json", "txt", "md")

#: Structural pairs, in id order after ``<unknown>``.
STRUCTURAL: Tuple[str, ...] = ("sample", "system", "prompt", "thought", "ai", "text", "source")

LINE_BREAK = "<line-break />"
LINE_BREAK_2 = '<line-break count="2" />'
MAX_INDENT = 6


def _build() -> List[str]:
    toks = ["<unknown>"]
    for name in STRUCTURAL:
        toks += [f"<{name}>", f"</{name}>"]
    toks += [LINE_BREAK, LINE_BREAK_2]
    for lang in CODE_LANGS:
        toks += [f"<{lang}>", f"</{lang}>", f'<{lang} inline="true">']
        toks += [f'<{lang} indent="{i}">' for i in range(1, MAX_INDENT + 1)]
    return toks


SPECIAL_TOKENS: Tuple[str, ...] = tuple(_build())
SPECIAL_IDS: Dict[str, int] = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
assert len(SPECIAL_TOKENS) == 125 and SPECIAL_IDS["<html>"] == 17 and SPECIAL_IDS["<ts>"] == 44
assert SPECIAL_IDS['<md indent="6">'] == 124


def code_open(lang: str, inline: bool = False, indent: int = 0) -> str:
    """The opening tag of a code block: inline wins over indent."""
    if inline:
        return f'<{lang} inline="true">'
    if indent:
        return f'<{lang} indent="{indent}">'
    return f"<{lang}>"


def code_close(lang: str) -> str:
    return f"</{lang}>"
