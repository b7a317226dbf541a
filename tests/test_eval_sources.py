"""Source references cannot collide with text (issue 12, item 7): a source id is one token of
its own (``tokens.source_token``), which no text of a train file produces, and renders as its
url (an id the model file does not define renders as nothing)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from poppins.corpus import tokens as T
from poppins.datastage import prepare_data
from poppins.engine.render import Renderer
from poppins.tokenizer import Tokenizer

EARLY = Path(__file__).parent / "data" / "early" / "train.xml"


def test_source_ids_are_tokens_of_their_own(tmp_path):
    res = prepare_data(EARLY, tmp_path / "out", log=None)
    tok = Tokenizer.from_file(tmp_path / "out")
    ids = {sid: tok.encode(T.source_token(sid), special=False).tolist()
           for sid in ("1", "2", "3")}
    assert all(len(v) == 1 for v in ids.values())
    src_ids = {v[0] for v in ids.values()}
    # text with the same characters never produces a source token
    for text in ("1", "12", "Bread flour with 12 percent protein, see 1 and 2.", "3 3 3"):
        assert not src_ids & set(tok.encode(text, special=False).tolist())
    # the corpus: <source> is always followed by one source token, then </source>
    corpus, _ = T.read_bins(tmp_path / "out", "train")
    corpus = np.asarray(corpus)
    at = np.flatnonzero(corpus == T.SOURCE)
    assert len(at) > 0
    assert all(int(corpus[i + 1]) in src_ids and corpus[i + 2] == T.END_SOURCE for i in at)
    assert res.manifest["tokenizer"]["requested_tokens"][-3:] == [T.source_token(s)
                                                                  for s in ("1", "2", "3")]
    # rendering: the token comes out as the url, never as the id
    sources = res.manifest["sources"]
    r = Renderer(tok, sources)
    for t in [T.AI, T.TEXT, *tok.encode("See", special=False).tolist(), T.END_TEXT, T.SOURCE,
              ids["1"][0], T.END_SOURCE, T.END_AI]:
        r.feed(t)
    assert r.text(final=True) == f"See (source: {sources['1']['url']})"


def test_source_id_helpers():
    assert T.source_id(T.source_token("so::a::b")) == "so::a::b"
    assert T.source_id(" so::a::b ") == "so::a::b"          # models from before the tokens
    assert T.source_id(T.SOURCE_MARK) == T.SOURCE_MARK
