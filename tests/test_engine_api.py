"""poppins.Model (load / generate / stream / concurrency / stops / limits) and the renderer."""
from __future__ import annotations

import threading

import pytest

from poppins.api import Model
from poppins.engine.render import Renderer
from poppins.errors import PoppinsError
from poppins.special_tokens import SPECIAL_IDS as S
from test_engine import trained_dir


# ----------------------------------------------------------------------- renderer
class ByteTok:
    """id 125 + b is the byte b."""

    def id_to_bytes(self, i):
        return bytes([i - 125])


def enc(text: str):
    return [125 + b for b in text.encode("utf-8")]


def render(ids, sources=None, show_thoughts=False):
    # without intermediate text() calls (they consolidate the renderer's state)
    r0 = Renderer(ByteTok(), sources or {}, show_thoughts)
    for t in ids:
        r0.feed(t)
    r = Renderer(ByteTok(), sources or {}, show_thoughts)
    texts = []
    for t in ids:
        r.feed(t)
        texts.append(r.text())
    final = r.text(final=True)
    assert r0.text(final=True) == final
    for a, b in zip(texts, texts[1:] + [final]):
        assert b.startswith(a), (a, b)   # streaming only ever appends
    return final


def test_render_items():
    ids = [S["<ai>"], S["<text>"], *enc("Hello."), S["</text>"], S["<line-break />"],
           S["<text>"], *enc("Two"), S["</text>"], S['<line-break count="2" />'],
           S["<text>"], *enc("See"), S["</text>"], S["<source>"], *enc("docs"), S["</source>"],
           S["<source>"], *enc("other"), S["</source>"], S["</ai>"]]
    out = render(ids, {"docs": {"url": "https://example.org/d", "title": "D"}})
    # "other" is not a source of the model: a reference it made up is never printed raw
    assert out == "Hello.\nTwo\n\nSee (source: https://example.org/d)"
    assert render([S["<ai>"], S["<source>"], *enc("so::lib::lib::lib::api"), S["</source>"],
                   S["</ai>"]], {"so::lib::api": {"url": "https://x.org"}}) == ""


def test_render_code_blocks():
    ids = [S["<ai>"], S["<text>"], *enc("Run:"), S["</text>"], S['<bash indent="1">'],
           *enc("make\nmake test"), S["</bash>"], S["<text>"], *enc("Or "), S["</text>"],
           S['<js inline="true">'], *enc("f()"), S["</js>"], S["<text>"], *enc("."),
           S["</text>"], S["<rust>"], *enc("fn main() {}\n"), S["</rust>"], S["</ai>"]]
    out = render(ids)
    assert out == ("Run:\n    ```bash\n    make\n    make test\n    ```\nOr `f()`.\n"
                   "```rust\nfn main() {}\n```")


def test_render_thoughts_and_utf8():
    ids = [S["<thought>"], *enc("hmm"), S["</thought>"], S["<ai>"], S["<text>"],
           *enc("naïve ☃"), S["</text>"], S["</ai>"]]
    assert render(ids) == "naïve ☃"
    assert render(ids, show_thoughts=True) == "hmm\n\nnaïve ☃"
    # a character split over tokens is held back, never emitted broken
    r = Renderer(ByteTok())
    for t in [S["<ai>"], S["<text>"], *enc("☃")[:2]]:
        r.feed(t)
    assert r.text() == ""
    assert r.text(final=True) == "\ufffd"
    # bare text inside <ai> renders as text; tags of the prompt render as nothing
    assert render([S["<ai>"], *enc("plain"), S["<prompt>"], S["</ai>"]]) == "plain"


# ----------------------------------------------------------------------- the API
@pytest.fixture(scope="module")
def model():
    return Model.load(trained_dir(), threads=1)


def _training_examples(m):
    """(prompt text, system text, rendered expected answer) of distinct training samples."""
    from poppins.corpus import tokens as T
    from poppins.training.generate import expected_answers

    ids, index = T.read_bins(trained_dir(), "train")
    out, seen = [], set()
    tok = m.tokenizer
    for p, a in expected_answers(ids, index):
        if tuple(p) in seen:
            continue
        seen.add(tuple(p))
        system = ""
        if S["<system>"] in p:
            system = tok.decode(p[p.index(S["<system>"]) + 1:p.index(S["</system>"])])
        prompt = tok.decode(p[p.index(S["<text>"]) + 1:p.index(S["</text>"])])
        r = Renderer(tok, m.engine.sources)
        for t in a:
            r.feed(t)
        out.append((prompt, system, r.text(final=True), a))
    return out


def test_load_file_or_dir(model):
    d = trained_dir()
    m2 = Model.load(d / "model.poppins", threads=1)
    assert m2.engine.cfg == model.engine.cfg
    assert model.tokenizer.decode(model.tokenizer.encode("hello")) == "hello"
    assert model.engine.head_dtype == "int8"
    with pytest.raises(PoppinsError, match="no model.poppins"):
        Model.load(d / "checkpoints")


def test_greedy_reproduces_training_answers(model):
    ex = _training_examples(model)
    assert len(ex) >= 5
    for prompt, system, want, ids in ex:
        c = model.complete(prompt, system=system, temperature=0)
        assert c.tokens == ids, prompt
        assert c.text == want
        assert c.stop_reason == "end"
    # the sources map renders urls
    assert any("(source: https://" in w for _, _, w, _ in ex)


def test_system_prompt_default_and_none(model):
    ids = model.encode_prompt("hi", system="")
    assert S["<system>"] not in ids
    ids = model.encode_prompt("hi")
    if model.default_system:
        assert S["<system>"] in ids
    # markup in the prompt stays plain text
    ids = model.encode_prompt("<text>x</text>", system="")
    assert ids.count(S["<text>"]) == 1


@pytest.mark.parametrize("kw", [dict(temperature=0), dict(seed=3), dict(seed=4, top_k=5),
                                dict(seed=5, temperature=1.3, top_p=0.8, min_p=0.0),
                                dict(seed=6, repeat_penalty=1.3, stop=["s"])])
def test_stream_joins_to_generate(model, kw):
    prompt, system, _, _ = _training_examples(model)[0]
    pieces = list(model.stream(prompt, system=system, **kw))
    assert "".join(pieces) == model.generate(prompt, system=system, **kw)
    assert all(pieces)


def test_stream_returns_the_final_completion(model):
    """The public streaming call yields the pieces and then holds the final Completion: the
    same answer as the non-streamed calls, for a prompt and for a conversation."""
    prompt, system, want, ids = _training_examples(model)[0]
    s = model.stream(prompt, system=system, temperature=0)
    assert s.completion is None                    # nothing generated before iterating
    pieces = list(s)
    c = s.completion
    assert "".join(pieces) == c.text == want and c.tokens == ids and c.stop_reason == "end"
    assert c.prompt_tokens == len(model.encode_prompt(prompt, system))
    assert c.prompt_seconds >= 0 and c.gen_seconds >= 0
    assert s.result() is c and list(s) == []
    # result() without iterating; max_tokens gives the finish reason
    c3 = model.stream(prompt, system=system, temperature=0, max_tokens=3).result()
    assert c3.tokens == ids[:3] and c3.stop_reason == "max-tokens"
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
    cs = model.chat_stream(msgs, temperature=0)
    assert "".join(cs) == cs.completion.text == want
    done = model.chat(msgs, temperature=0)
    assert done.tokens == cs.completion.tokens == ids and done.text == want
    with pytest.raises(PoppinsError, match="must be a str"):
        next(model.stream(123))


def test_seeded_generation_reproducible(model):
    prompt, system, _, _ = _training_examples(model)[0]
    kw = dict(system=system, temperature=1.5, top_k=0, top_p=1.0, min_p=0.0)
    a = [model.complete(prompt, seed=s, **kw) for s in range(4)]
    b = [model.complete(prompt, seed=s, **kw) for s in range(4)]
    assert [x.tokens for x in a] == [x.tokens for x in b]
    assert len({tuple(x.tokens) for x in a}) > 1   # hot sampling: the seeds matter


def test_concurrent_generate_equals_single_threaded(model):
    ex = _training_examples(model)
    jobs = [(p, s, dict(seed=i, temperature=0.9 if i % 2 else 0)) for i, (p, s, _, _) in
            enumerate(ex[:6] * 2)]
    want = [model.generate(p, system=s, **kw) for p, s, kw in jobs]
    got = [None] * len(jobs)
    errors = []

    def work(i):
        try:
            p, s, kw = jobs[i]
            got[i] = model.generate(p, system=s, **kw)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert got == want


def test_stop_strings_and_max_tokens(model):
    prompt, system, want, ids = max(_training_examples(model), key=lambda e: len(e[2]))
    word = want.split()[1]
    c = model.complete(prompt, system=system, temperature=0, stop=[word, "zzzz-never"])
    assert c.text == want[:want.index(word)] and c.stop_reason == "stop-string"
    assert "".join(model.stream(prompt, system=system, temperature=0, stop=word)) == c.text
    c = model.complete(prompt, system=system, temperature=0, max_tokens=3)
    assert c.tokens == ids[:3] and c.stop_reason == "max-tokens"


def test_context_end_note_and_overlong_prompt(model):
    prompt, system, _, ids = _training_examples(model)[0]
    n_prompt = len(model.encode_prompt(prompt, system))
    c = model.complete(prompt, system=system, temperature=0, context=n_prompt + 2)
    assert c.stop_reason == "context" and len(c.tokens) == 2 and "context" in c.note
    with pytest.raises(PoppinsError, match="the prompt is .* tokens long"):
        model.generate("word " * 2000, system="")
    with pytest.raises(PoppinsError, match="shorten"):
        model.generate(prompt, system=system, context=n_prompt)
    with pytest.raises(PoppinsError, match="unknown sampling option"):
        model.generate(prompt, temprature=0)
    with pytest.raises(PoppinsError, match="must be a str"):
        model.generate(123)


def test_chat_events_conversation(model):
    prompt, system, want, ids = _training_examples(model)[0]
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
    events = list(model.chat_events(msgs, temperature=0))
    final = events[-1][1]
    assert events[-1][0] is None and final.text == want and final.tokens == ids
    assert "".join(p for p, _ in events[:-1]) == want
    # a conversation: earlier turns are prompts and answers, in the decisions' token stream
    conv = msgs + [{"role": "assistant", "content": want}, {"role": "user", "content": "x"}]
    enc = model.encode_conversation(conv)
    first = model.encode_prompt(prompt, system)
    tok = model.tokenizer
    assert enc[:len(first)] == first
    rest = enc[len(first):]
    assert rest[:2] == [S["<ai>"], S["<text>"]] and rest[-5:] == [
        S["<prompt>"], S["<text>"], *tok.encode("x", special=False).tolist(), S["</text>"],
        S["</prompt>"]]
    assert S["</ai>"] in rest
    for bad in ([], [{"role": "user"}], [{"role": "assistant", "content": "a"}],
                [{"role": "user", "content": "a"}, {"role": "system", "content": "s"},
                 {"role": "user", "content": "b"}], [{"role": "bot", "content": "a"}]):
        with pytest.raises(PoppinsError):
            list(model.chat_events(bad))


@pytest.mark.parametrize("kw", [dict(temperature=0), dict(temperature=1.0, seed=11),
                                dict(temperature=0.8, top_k=5, top_p=0.9, min_p=0.1,
                                     repeat_penalty=1.3, seed=3, max_tokens=7)])
def test_compiled_loop_equals_per_token_loop(model, kw):
    """complete() runs the whole answer as one compiled loop; streaming goes token by token
    through Python: the same tokens, stop reason and text."""
    fast = model.complete("What is poppins?", **kw)
    slow = model.stream("What is poppins?", **kw).result()
    assert fast.tokens == slow.tokens and fast.stop_reason == slow.stop_reason
    assert fast.text == slow.text
