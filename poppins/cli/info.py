"""``python -m poppins info``: print which compiled kernels, SIMD paths and threads are active.

    python -m poppins info
"""
from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="show the active backends (compiled or reference, SIMD, threads)",
                       description=__doc__.split("\n\n")[0])
    p.set_defaults(run=run)


def run(args) -> int:
    from ..native import backend_info

    print(json.dumps(backend_info(), indent=2))
    return 0
