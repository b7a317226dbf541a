"""The one definition of what a caller's system message means (issue 12, item 1)."""
import numpy as np
import pytest

from poppins.corpus import tokens as T
from poppins.errors import PoppinsError


class _Tok:
    vocab_size = 1000

    def encode(self, text, special=False):
        return np.asarray([500 + (ord(c) % 400) for c in text], dtype=np.int64)


def test_resolve_system_meanings():
    assert T.resolve_system(T.NO_SYSTEM, "Be brief.") == "Be brief."
    assert T.resolve_system(None, None) is None
    assert T.resolve_system(None, "") is None
    assert T.resolve_system(T.EMPTY_SYSTEM, "Be brief.") is None
    assert T.resolve_system("  \n", "Be brief.") is None
    assert T.resolve_system("You are a helpful assistant.", "Be brief.") \
        == "You are a helpful assistant."
    with pytest.raises(PoppinsError):
        T.resolve_system(3, None)


def test_system_layouts():
    tok = _Tok()
    head_default = T.system_head_ids(tok, None, "ab")
    assert head_default == [T.SAMPLE, T.SYSTEM, 500 + ord("a") % 400, 500 + ord("b") % 400,
                            T.END_SYSTEM]
    assert T.system_head_ids(tok, "", "ab") == [T.SAMPLE]
    assert T.system_head_ids(tok, None, None) == [T.SAMPLE]
    assert T.system_head_ids(tok, "x", "ab") == [T.SAMPLE, T.SYSTEM, 500 + ord("x") % 400,
                                                 T.END_SYSTEM]
    # prompt_ids with a resolved system is the head followed by the prompt part
    full = T.prompt_ids(tok, "q", T.resolve_system(None, "ab"))
    assert full[:len(head_default)] == head_default
    assert full[len(head_default):] == [T.PROMPT, T.TEXT, 500 + ord("q") % 400, T.END_TEXT,
                                        T.END_PROMPT]
