"""``python -m poppins eval``: measure a trained model the way clients ask it.

    python -m poppins eval -m .poppins -i train.xml --probes probes.xml [--json]
    python -m poppins eval -m .poppins -i train.xml --url http://127.0.0.1:8080/v1  # a server

Greedy answers through the chat path (as infer, chat and serve), compared exactly with the
expected answers: training prompts with no, an empty, their own and 10 common client system
prompts; validation variants; unseen surface variants; hand-written paraphrases and off-topic
questions from a probes file (format: poppins/probes.xsd); conversation chains.  See
poppins.evaluation.  ``--min-recall X`` exits with 1 when a recall row is below X (for CI).
"""
from __future__ import annotations

import json
import sys

from ..errors import PoppinsError


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not 0.0 <= v <= 1.0:
        raise PoppinsError(f"--min-recall must be a number from 0 to 1, got {text!r}")
    return v


def _cases(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = -1
    if v < 0:
        raise PoppinsError(f"--max-cases must be an integer >= 0 (0: all), got {text!r}")
    return v


def add_parser(sub) -> None:
    from ..evaluation import DEFAULT_MAX_CASES

    p = sub.add_parser("eval", help="measure a trained model as clients ask it",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("-m", "--model", default=".poppins",
                   help="the model folder (holding model.poppins) (default: ./.poppins)")
    p.add_argument("-i", "--input", default="train.xml",
                   help="the train file the model was trained on (default: ./train.xml)")
    p.add_argument("--probes", default=None,
                   help="a probes file: your paraphrases and off-topic questions (probes.xsd)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--min-recall", default=None, metavar="X",
                   help="exit with 1 when a recall row measures below X (0..1)")
    p.add_argument("--max-cases", default=str(DEFAULT_MAX_CASES), metavar="N",
                   help=f"cases per row, a seeded sample (0: all; default: {DEFAULT_MAX_CASES})")
    p.add_argument("--url", default=None,
                   help="ask this OpenAI-compatible server (e.g. http://127.0.0.1:8080/v1, a "
                        "running `poppins serve`) instead of the model in-process")
    p.add_argument("--api-key", default=None, help="the server's API key (with --url)")
    p.add_argument("-t", "--threads", type=int, default=None,
                   help="threads (default: the physical cores)")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..evaluation import evaluate

    min_recall = _fraction(args.min_recall) if args.min_recall is not None else None
    n = _cases(args.max_cases)
    report = evaluate(args.model, args.input, probes=args.probes, threads=args.threads,
                      max_cases=n or None, url=args.url, api_key=args.api_key,
                      log=None if args.json else (lambda m: print(m, file=sys.stderr)))
    if args.json:
        print(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        print(report.table())
    if min_recall is not None:
        low = report.failing(min_recall)
        if low:
            print("poppins: below --min-recall " f"{min_recall}: "
                  + ", ".join(f"{r.name} ({100 * r.rate:.1f}%)" for r in low), file=sys.stderr)
            return 1
    return 0
