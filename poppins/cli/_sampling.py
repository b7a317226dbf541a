"""Generation flags shared by ``infer`` and ``chat`` (llama.cpp's names, decisions.md's defaults)."""
from __future__ import annotations


def add_sampling_args(p) -> None:
    p.add_argument("-m", "--model", default=".poppins",
                   help="model directory (holding model.poppins) or the file (default ./.poppins)")
    p.add_argument("-n", "--n-predict", type=int, default=-1,
                   help="at most this many tokens (-1: until the answer ends or the context is full)")
    p.add_argument("-c", "--ctx-size", type=int, default=0,
                   help="context size (0: the model's context length)")
    p.add_argument("-t", "--threads", type=int, default=None, help="threads (default: physical cores)")
    p.add_argument("-s", "--seed", type=int, default=-1, help="random seed (-1: random)")
    p.add_argument("--temp", type=float, default=0.8, help="temperature (0: greedy)")
    p.add_argument("--top-k", type=int, default=40, help="top-k sampling (0: off)")
    p.add_argument("--top-p", type=float, default=0.95, help="top-p sampling (1.0: off)")
    p.add_argument("--min-p", type=float, default=0.05, help="min-p sampling (0.0: off)")
    p.add_argument("--repeat-penalty", type=float, default=1.0,
                   help="penalize repeated tokens (1.0: off)")
    p.add_argument("--repeat-last-n", type=int, default=64,
                   help="tokens the repeat penalty looks back on (-1: the whole context)")
    p.add_argument("--system", default=None,
                   help="system prompt (default: the one most training samples used; \"\" for none)")
    p.add_argument("--show-thoughts", action="store_true", help="print the model's thoughts too")
    p.add_argument("--stop", action="append", default=[],
                   help="stop the answer at this string (repeatable)")


def sampling_kwargs(args) -> dict:
    return dict(temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                repeat_penalty=args.repeat_penalty, repeat_last_n=args.repeat_last_n,
                seed=args.seed, system=args.system, max_tokens=args.n_predict, stop=args.stop,
                show_thoughts=args.show_thoughts, context=args.ctx_size or None)
