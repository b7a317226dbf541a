"""The Python API: load a trained model and ask it questions.

    import poppins
    m = poppins.Model.load(".poppins")                 # a model directory or model.poppins
    print(m.generate("What is poppins?", temperature=0))
    s = m.stream("What is poppins?", seed=1)           # a Stream: the pieces, then the result
    for piece in s:
        print(piece, end="", flush=True)
    c = s.completion                                   # text, tokens, stop_reason, timings
    c = m.chat([{"role": "user", "content": "Hi"}])    # a conversation, not streamed

Calls: ``generate`` (text), ``complete`` (a :class:`Completion`), ``stream`` (a
:class:`Stream` of text pieces whose ``.completion`` is the final Completion), and for a
conversation (a list of messages, see :meth:`Model.encode_conversation`) ``chat`` and
``chat_stream``; ``chat_events`` gives the same as (piece, None) ... (None, Completion)
events.  Non-streamed answers run the whole token loop in compiled code (no GIL); streamed
ones go token by token (the same tokens).

Sampling keywords (llama.cpp's meaning and defaults): ``temperature`` (or ``temp``) 0.8,
``top_k`` 40, ``top_p`` 0.95, ``min_p`` 0.05, ``repeat_penalty`` 1.0, ``repeat_last_n`` 64,
``seed`` -1 (random); ``temperature=0`` is greedy.  Other keywords: ``system`` (None: the
model's default system prompt, "" none; defined once in poppins.corpus.tokens.resolve_system),
``max_tokens`` (-1: until the answer ends or the context is full), ``stop`` (strings that end
the answer, not included), ``show_thoughts``,
``context`` (a shorter KV cache than the model's context length), ``logprobs`` (None: off;
an int k >= 0: record each generated token's log-probability under the model's raw logits
and its k likeliest alternatives, in :attr:`Completion.logprobs` and, while streaming,
:attr:`Stream.logprobs`; generation then goes token by token), ``cancel`` (a callable
polled between tokens -- every 16 tokens in the compiled loop --; when it returns true the
answer ends with stop_reason "cancelled", e.g. a server whose client went away).

One loaded Model may be used from several threads at once: the weights are shared read-only
and every call has its own KV cache and sampler.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence

import numpy as np

from .corpus.tokens import STOP_IDS, prompt_ids, resolve_system, system_head_ids, turn_ids
from .engine.render import Renderer
from .engine.runtime import Engine
from .engine.sampling import Sampler, SamplingParams, token_logprobs
from .errors import PoppinsError
from .memory import fit_recent_turns

#: the largest max_tokens accepted (the context bounds an answer long before it)
MAX_TOKENS_LIMIT = (1 << 31) - 1

_GEN_KEYS = ("system", "max_tokens", "stop", "show_thoughts", "context", "logprobs", "cancel")
_CANCEL_EVERY = 16   # tokens per compiled generate() call when a cancel hook is polled


@dataclass
class Completion:
    """One answer with what happened while producing it."""

    text: str
    tokens: List[int]
    prompt_tokens: int
    stop_reason: str            # "end" | "stop-string" | "max-tokens" | "context" | "cancelled"
    prompt_seconds: float
    gen_seconds: float
    seed: int
    note: Optional[str] = None
    #: with ``logprobs=k``: one entry per generated token, {"id", "logprob", "top": [(id,
    #: logprob), ...k]} (natural log, softmax of the raw logits); else None
    logprobs: Optional[List[dict]] = None
    #: threads the decode session was given, and how many of its steps ran on one thread all
    #: the same (faster at the time: a busy machine; see poppins.threads.TEAM_POLICIES)
    threads: int = 1
    one_thread_steps: int = 0

    @property
    def prompt_tok_s(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def gen_tok_s(self) -> float:
        n = len(self.tokens)
        return n / self.gen_seconds if self.gen_seconds > 0 else 0.0


def _session_done(sess) -> dict:
    """An answer's session is finished: hand its team choice to the engine's next sessions;
    the Completion fields of its thread use."""
    sess.keep_team_choice()
    return {"threads": sess.threads,
            "one_thread_steps": sess.thread_steps[1] if sess.threads > 1 else 0}


def _split_kwargs(kw):
    gen = {k: kw.pop(k) for k in list(kw) if k in _GEN_KEYS}
    return gen, SamplingParams.from_kwargs(**kw)


class Stream:
    """An answer being generated, as an iterator of its rendered text pieces
    (``"".join(stream)`` is the answer's text).  Once the pieces are exhausted,
    :attr:`completion` holds the final :class:`Completion` (text, token ids, ``stop_reason``
    -- the finish reason: "end", "stop-string", "max-tokens" or "context" --, prompt and
    generation timings, seed); :meth:`result` drains what is left and returns it.
    Generation starts with the first ``next()`` (errors such as a too-long prompt are raised
    there)."""

    def __init__(self, events: Iterator, logprobs: Optional[List[dict]] = None):
        self._events = events
        #: the final Completion, None until the last piece has been taken
        self.completion: Optional[Completion] = None
        #: with ``logprobs=k``: the entries of the tokens generated so far (grows while
        #: streaming; a piece's tokens are in it when the piece is yielded), else None
        self.logprobs = logprobs

    def close(self) -> None:
        """Stop generating (the rest of the answer is not produced)."""
        close = getattr(self._events, "close", None)
        if close is not None:
            close()

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> str:
        while True:
            piece, c = next(self._events)       # StopIteration ends the stream
            if c is not None:
                self.completion = c
            if piece:
                return piece

    def result(self) -> Completion:
        """The final Completion (generates what is left; the remaining pieces are dropped)."""
        for _piece in self:
            pass
        return self.completion


class _StopScan:
    """Finds the first user stop string in the rendered text; tells how much text is safe
    to emit (no stop string can start inside it)."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in (stops or ()) if s]

    def cut(self, text: str) -> Optional[int]:
        hits = [text.find(s) for s in self.stops]
        hits = [h for h in hits if h >= 0]
        return min(hits) if hits else None

    def safe(self, text: str) -> int:
        n = len(text)
        for s in self.stops:
            for k in range(min(len(s) - 1, n), 0, -1):
                if text.endswith(s[:k]):
                    n = min(n, len(text) - k)
                    break
        return n


class Model:
    """A loaded model.  ``Model.load(path)``; ``.generate()``, ``.stream()``, ``.tokenizer``."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.tokenizer = engine.tokenizer
        if not engine.cfg.quantize and engine.float_model is None:
            engine.attach_float_forward(_float_forward(engine))

    @classmethod
    def load(cls, path=".poppins", threads: Optional[int] = None,
             verify: bool = True) -> "Model":
        """``path``: a model directory (holding model.poppins) or the file itself."""
        return cls(Engine.load(path, threads=threads, verify=verify))

    @property
    def context_length(self) -> int:
        return self.engine.context_length

    @property
    def default_system(self) -> Optional[str]:
        return self.engine.default_system

    def encode_prompt(self, prompt: str, system: Optional[str] = None) -> List[int]:
        return prompt_ids(self.tokenizer, prompt,
                          resolve_system(system, self.engine.default_system))

    def encode_conversation(self, messages, system: Optional[str] = None,
                            budget: Optional[int] = None) -> List[int]:
        """``<sample> [<system>S</system>]`` then per turn ``<prompt><text>U</text></prompt>``
        and, for answered turns, ``<ai><text>A</text></ai>`` (decisions: conversations; the
        layout is poppins.corpus.tokens').
        ``messages``: [{"role": "system" | "user" | "assistant", "content": str}, ...] ending
        with a user message; a system message (first) overrides ``system``.  An assistant
        message may carry "tokens", the ids the model generated for it (chat's memory keeps
        them); they are replayed as they are, thoughts included.  With ``budget``
        (tokens), only the most recent earlier turns that fit are kept; older turns are
        dropped whole, never cut in the middle."""
        if not isinstance(messages, (list, tuple)) or not messages:
            raise PoppinsError("messages must be a non-empty list of {role, content} objects")
        tok = self.tokenizer
        msgs = list(messages)
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                    or not isinstance(m.get("content"), str):
                raise PoppinsError(f"message {i}: expected {{\"role\": \"system\" | \"user\" | "
                                   f"\"assistant\", \"content\": string}}")
        if msgs[0]["role"] == "system":
            system = msgs[0]["content"]
            msgs = msgs[1:]
        if any(m["role"] == "system" for m in msgs):
            raise PoppinsError("a system message may only come first")
        if not msgs or msgs[-1]["role"] != "user":
            raise PoppinsError("the last message must be the user's")
        head = system_head_ids(tok, system, self.engine.default_system)
        chunks = [turn_ids(tok, m["role"], m["content"], m.get("tokens")) for m in msgs]
        last, earlier = chunks[-1], chunks[:-1]
        if budget is not None:
            # whole earlier turns (a user message with its answer), most recent first
            turns, cur = [], []
            for m, c in zip(msgs[:-1], earlier):
                if m["role"] == "user" and cur:
                    turns.append(cur)
                    cur = []
                cur.append(c)
            if cur:
                turns.append(cur)
            room = budget - len(head) - len(last)
            kept = fit_recent_turns(turns, lambda t: sum(len(c) for c in t), max(room, 0))
            earlier = [c for t in kept for c in t]
        return head + [i for c in earlier for i in c] + last

    # ------------------------------------------------------------------ generation
    def chat_events(self, messages, stream: bool = True, **kw) -> Iterator:
        """Like :meth:`chat_stream`, as events: (piece, None) while generating, then
        (None, Completion).  With ``stream=False`` only the final event comes, from the
        compiled generation loop."""
        return self._run(None, kw, messages=messages, stream=stream)

    def chat_stream(self, messages, **kw) -> Stream:
        """The answer to a conversation (see :meth:`encode_conversation`) as a :class:`Stream`
        of text pieces; its ``.completion`` is the final Completion."""
        return self._stream(None, kw, messages=messages, stream=True)

    def chat(self, messages, **kw) -> Completion:
        """The answer to a conversation (see :meth:`encode_conversation`), not streamed (the
        compiled generation loop)."""
        return self._stream(None, kw, messages=messages, stream=False).result()

    def _stream(self, prompt, kw, messages=None, stream: bool = True) -> Stream:
        lp = [] if kw.get("logprobs") is not None else None
        return Stream(self._run(prompt, kw, messages=messages, stream=stream, lp=lp), lp)

    def _run(self, prompt: Optional[str], kw, messages=None, stream: bool = True,
             lp: Optional[List[dict]] = None) -> Iterator:
        """Yields (piece, None) while generating, then (None, Completion).  Without
        ``stream``, stop strings and logprobs, the whole answer is one compiled loop (no GIL;
        in steps of _CANCEL_EVERY tokens with a cancel hook) and only the final event comes.
        ``lp``: the list the logprob entries are appended to (``logprobs`` asked)."""
        if messages is None and not isinstance(prompt, str):
            raise PoppinsError(f"the prompt must be a str, got {type(prompt).__name__}")
        gen, params = _split_kwargs(dict(kw))
        top = gen.get("logprobs")
        if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 0):
            raise PoppinsError(f"logprobs must be None or an int >= 0, got {top!r}")
        if top is not None and lp is None:
            lp = []
        cancel = gen.get("cancel")
        if cancel is not None and not callable(cancel):
            raise PoppinsError("cancel must be a callable (returning true to stop) or None")
        system = gen.get("system")
        if system is not None and not isinstance(system, str):
            raise PoppinsError("system must be a str (\"\" for none) or None (the default)")
        max_tokens = gen.get("max_tokens")
        if max_tokens is None:
            max_tokens = -1
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, (int, np.integer)) \
                or not -1 <= max_tokens <= MAX_TOKENS_LIMIT:
            raise PoppinsError(f"max_tokens must be -1 (until the answer ends), 0 or a positive "
                               f"whole number up to {MAX_TOKENS_LIMIT}, got {max_tokens!r}")
        max_tokens = int(max_tokens)
        stops = gen.get("stop") or ()
        if isinstance(stops, str):
            stops = [stops]
        scan = _StopScan(list(stops))
        sess = self.engine.session(context=gen.get("context"))
        ctx = sess.context
        if messages is not None:
            # leave room for the answer: what max_tokens asks, else a quarter of the context
            reserve = max_tokens if 0 < max_tokens < ctx // 2 else ctx // 4
            ids = self.encode_conversation(messages, system, budget=ctx - reserve)
        else:
            ids = self.encode_prompt(prompt, system)
        if len(ids) >= ctx:
            raise PoppinsError(f"the prompt is {len(ids)} tokens long (with its system prompt "
                               f"and tags); the context holds {ctx} tokens, so at most "
                               f"{ctx - 1} fit with room for an answer; shorten the prompt"
                               + (" or the system prompt" if (system is None and
                                                              self.engine.default_system)
                                  or system else ""))
        sampler = Sampler(params)
        if max_tokens == 0:   # nothing asked for: no token is computed
            yield None, Completion(text="", tokens=[], prompt_tokens=len(ids),
                                   stop_reason="max-tokens", prompt_seconds=0.0,
                                   gen_seconds=0.0, seed=sampler.seed, logprobs=lp)
            return
        render = Renderer(self.tokenizer, self.engine.sources,
                          bool(gen.get("show_thoughts", False)))
        history = np.zeros(ctx, np.int32)
        history[:len(ids)] = ids
        nh = len(ids)
        out: List[int] = []
        t0 = time.perf_counter()
        logits = sess.forward(ids)
        t1 = time.perf_counter()
        t = sampler.sample(logits, history[:nh])
        emitted = 0
        reason, note = "end", None

        def record(logits, t):
            if lp is not None:
                chosen, alts = token_logprobs(logits, t, top)
                lp.append({"id": int(t), "logprob": chosen, "top": alts})

        if not stream and not stops and lp is None:
            out.append(t)
            history[nh] = t
            nh += 1
            cancelled = False
            while out[-1] not in STOP_IDS:
                room = ctx - nh
                if max_tokens >= 0:
                    room = min(room, max_tokens - len(out))
                if room <= 0:
                    break
                if cancel is not None:
                    if cancel():
                        cancelled = True
                        break
                    room = min(room, _CANCEL_EVERY)
                n = sess.generate(out[-1], sampler, history, nh, room, STOP_IDS)
                out += history[nh:nh + n].tolist()
                nh += n
                if cancel is None or n == 0:
                    break
            t2 = time.perf_counter()
            if cancelled:
                reason = "cancelled"
            elif out[-1] in STOP_IDS:
                reason = "end"
            elif 0 <= max_tokens <= len(out):
                reason = "max-tokens"
            else:
                reason = "context"
                note = (f"the answer reached the end of the context ({ctx} tokens) and may "
                        "be cut short")
            for tok in out:
                if tok not in STOP_IDS:
                    render.feed(tok)
            yield None, Completion(text=render.text(final=True), tokens=out,
                                   prompt_tokens=len(ids), stop_reason=reason,
                                   prompt_seconds=t1 - t0, gen_seconds=t2 - t1,
                                   seed=sampler.seed, note=note, **_session_done(sess))
            return
        record(logits, t)
        while True:
            out.append(t)
            history[nh] = t
            nh += 1
            if t in STOP_IDS:
                reason = "end"
                break
            render.feed(t)
            text = render.text()
            cut = scan.cut(text)
            if cut is not None:
                if cut > emitted:
                    yield text[emitted:cut], None
                emitted = cut
                reason = "stop-string"
                break
            safe = scan.safe(text)
            if safe > emitted:
                yield text[emitted:safe], None
                emitted = safe
            if 0 <= max_tokens <= len(out):
                reason = "max-tokens"
                break
            if nh >= ctx:
                reason = "context"
                note = (f"the answer reached the end of the context ({ctx} tokens) and may "
                        "be cut short")
                break
            if cancel is not None and cancel():
                reason = "cancelled"
                break
            if lp is None:
                t = sess.next_token(t, sampler, history, nh)
            else:     # the same tokens as next_token (forward, then the same sampler)
                logits = sess.forward([t])
                t = sampler.sample(logits, history[:nh])
                record(logits, t)
        t2 = time.perf_counter()
        if reason not in ("stop-string", "cancelled"):
            final = render.text(final=True)
            cut = scan.cut(final)
            if cut is not None:
                final, reason = final[:cut], "stop-string"
            if len(final) > emitted and final[:emitted] == render.text()[:emitted]:
                yield final[emitted:], None
                emitted = len(final)
            text = final
        else:
            text = render.text()[:emitted]
        yield None, Completion(text=text, tokens=out, prompt_tokens=len(ids),
                               stop_reason=reason, prompt_seconds=t1 - t0,
                               gen_seconds=t2 - t1, seed=sampler.seed, note=note,
                               logprobs=lp, **_session_done(sess))

    def complete(self, prompt: str, **kw) -> Completion:
        """The answer with its tokens, stop reason and timings (not streamed: the compiled
        generation loop)."""
        return self._stream(prompt, kw, stream=False).result()

    def generate(self, prompt: str, **kw) -> str:
        """The rendered answer to ``prompt`` (see the module docstring for the keywords)."""
        return self.complete(prompt, **kw).text

    def stream(self, prompt: str, **kw) -> Stream:
        """The answer as a :class:`Stream`: its text pieces as they are generated
        (``"".join`` gives generate()'s text), then ``.completion``, the final Completion."""
        return self._stream(prompt, kw, stream=True)

    def __repr__(self) -> str:
        c = self.engine.cfg
        return (f"poppins.Model({str(self.engine.path)!r}, {c.attention}, dim={c.dim}, "
                f"layers={c.layers}, context={c.context_length})")


def _float_forward(engine: Engine):
    """A float model's forward (``--float``: no ternary weights for the engine's kernels): the
    training model with the model file's f32 weights, so answers equal the training forward's
    (decisions: float models).  Imported here, not in the engine, which reads files only."""
    import numpy as np

    from .model import Model as TrainingModel

    m = TrainingModel(engine.cfg, threads=engine.threads, init=False)
    for name, p in m.params.items():
        if name not in engine.file:
            raise PoppinsError(f"corrupted model file: tensor {name!r} is missing",
                               file=str(engine.path))
        p[...] = np.asarray(engine.file[name], dtype=p.dtype)
    return m
