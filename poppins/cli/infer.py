"""``python -m poppins infer``: answer a prompt with a trained model (llama.cpp's flag names).

    python -m poppins infer -m .poppins -p "What is poppins?" --temp 0

The answer goes to stdout, the timings (prompt and generation tokens/s) to stderr.  Without
``-p``/``-f`` and with a terminal on stdin, an interactive loop asks for prompts (an empty line
or end of input quits).  Defaults (decisions.md): ``-m ./.poppins``, ``-n -1`` (until the
answer ends or the context is full), ``-c`` the model's context length, ``--temp 0.8``,
``--top-k 40``, ``--top-p 0.95``, ``--min-p 0.05``, ``--repeat-penalty 1.0``, ``-s -1``
(random seed), ``-t`` the physical cores; ``--temp 0`` is greedy.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import PoppinsError
from ._sampling import add_sampling_args, sampling_kwargs


def add_parser(sub) -> None:
    p = sub.add_parser("infer", help="answer a prompt with a trained model",
                       description=__doc__.split("\n\n")[0])
    add_sampling_args(p)
    p.add_argument("-p", "--prompt", default=None, help="the prompt")
    p.add_argument("-f", "--file", default=None, help="read the prompt from this file")
    p.set_defaults(run=run)


def _read_prompt(path: str) -> str:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise PoppinsError(f"cannot read the prompt file: {exc.strerror}", file=path) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise PoppinsError("the prompt file is not valid UTF-8", file=path, line=line) from None
    return text.rstrip("\n")


def _solo(c) -> str:
    if not c.one_thread_steps:
        return ""
    return (f" ({c.one_thread_steps} decode steps on one thread: faster at the time, "
            "see POPPINS_TEAM)")


def _answer(model, prompt: str, args, kw) -> int:
    out = sys.stdout
    stream = model.stream(prompt, **kw)
    for piece in stream:
        out.write(piece)
        out.flush()
    out.write("\n")
    out.flush()
    c = stream.completion
    if c.note:
        print(f"poppins: note: {c.note}", file=sys.stderr)
    print(f"prompt: {c.prompt_tokens} tokens in {c.prompt_seconds * 1000:.1f} ms "
          f"({c.prompt_tok_s:.1f} tok/s); generation: {len(c.tokens)} tokens in "
          f"{c.gen_seconds * 1000:.1f} ms ({c.gen_tok_s:.1f} tok/s); {c.threads} thread"
          f"{'s' if c.threads > 1 else ''}{_solo(c)}; seed {c.seed}; stop: {c.stop_reason}",
          file=sys.stderr)
    return 0


def run(args) -> int:
    from ..api import Model

    if args.prompt is not None and args.file is not None:
        raise PoppinsError("give the prompt with -p or -f, not both")
    prompt = args.prompt
    if args.file is not None:
        prompt = _read_prompt(args.file)
    model = Model.load(args.model, threads=args.threads)
    kw = sampling_kwargs(args)
    if prompt is not None:
        return _answer(model, prompt, args, kw)
    if not sys.stdin.isatty():
        prompt = sys.stdin.read().rstrip("\n")
        if not prompt:
            raise PoppinsError("no prompt: give one with -p PROMPT, -f FILE or on stdin")
        return _answer(model, prompt, args, kw)
    print(f"poppins: {model!r}; an empty line or Ctrl-D quits", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        if not line.strip():
            return 0
        try:
            _answer(model, line, args, kw)
        except PoppinsError as exc:
            for problem in exc.problems:
                print(f"poppins: {problem}", file=sys.stderr)
