"""``python -m poppins serve``: an OpenAI-compatible HTTP server and a web chat page.

    python -m poppins serve -m .poppins --port 8080

Then open http://127.0.0.1:8080/ or point an OpenAI client at http://127.0.0.1:8080/v1.
Routes: /health, /v1/models, /v1/completions, /v1/chat/completions (streaming or not),
/tokenize, /detokenize.  Bound to 127.0.0.1 unless --host says otherwise; with --api-key (or
POPPINS_API_KEY) every API route needs ``Authorization: Bearer KEY``.  On loopback without a
key only loopback Host/Origin names are served (--allow-host adds names, "*" turns the check
off).  At most --parallel answers are generated at once (default: one per core); up to
--queue more wait, further requests get a 503 with Retry-After.  See poppins.server.
"""
from __future__ import annotations

import os
import signal
import sys
import threading


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve the model over an OpenAI-compatible HTTP API",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("-m", "--model", default=".poppins", help="model directory or file")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    p.add_argument("--api-key", default=None,
                   help="require this API key (default: $POPPINS_API_KEY, else none)")
    p.add_argument("--alias", default="poppins", help="the model name clients use (default poppins)")
    p.add_argument("-t", "--threads", type=int, default=None,
                   help="threads per answer (default: the cores shared among --parallel answers)")
    p.add_argument("--max-body-kb", type=int, default=1024, help="request body limit in KiB")
    p.add_argument("--max-tokens", type=int, default=2048, help="cap on max_tokens per request")
    p.add_argument("--parallel", type=int, default=None,
                   help="answers generated at once (default: one per physical core)")
    p.add_argument("--queue", type=int, default=64,
                   help="requests that may wait for a slot (at least 64; more get a 503)")
    p.add_argument("--timeout", type=float, default=15.0,
                   help="seconds a client has for its request headers (and an idle "
                        "connection stays open); the body gets twice that")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also accept this Host/Origin name when bound to loopback without a "
                        "key (repeatable; \"*\": any)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every request")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..api import Model
    from ..server import PoppinsServer

    from ..errors import PoppinsError

    from ..threads import default_threads, max_threads, physical_cores

    for name, v, lo, hi in (("--port", args.port, 0, 65535),
                            ("--parallel", args.parallel, 1, max_threads()),
                            ("--queue", args.queue, 64, 1 << 20),
                            ("--max-tokens", args.max_tokens, 1, (1 << 31) - 1),
                            ("--max-body-kb", args.max_body_kb, 1, 1 << 20)):
        if v is not None and v < lo:
            raise PoppinsError(f"{name} must be at least {lo}, got {v}")
        if v is not None and v > hi:
            raise PoppinsError(f"{name} must be at most {hi}, got {v}")
    if not 0 < args.timeout <= 86400:   # also refuses nan
        raise PoppinsError(f"--timeout must be > 0 and at most 86400 seconds, got {args.timeout}")

    parallel = args.parallel or physical_cores()
    threads = args.threads or max(1, default_threads() // parallel)   # no oversubscription
    model = Model.load(args.model, threads=threads)
    key = args.api_key if args.api_key is not None else os.environ.get("POPPINS_API_KEY") or None
    try:
        srv = PoppinsServer((args.host, args.port), model, model_name=args.alias, api_key=key,
                            max_body=args.max_body_kb * 1024, max_tokens_cap=args.max_tokens,
                            quiet=not args.verbose, parallel=parallel, queue=args.queue,
                            header_timeout=args.timeout, body_timeout=2 * args.timeout,
                            allow_hosts=args.allow_host)
    except OSError as exc:
        raise PoppinsError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") \
            from None
    print(f"poppins: serving {args.model} as '{args.alias}' on {srv.url} "
          f"(web chat: {srv.url}/, API: {srv.url}/v1){' with an API key' if key else ''}",
          file=sys.stderr, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    srv.shutdown()
    srv.server_close()
    print("poppins: server stopped", file=sys.stderr)
    return 0
