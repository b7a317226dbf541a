"""An OpenAI-compatible HTTP server for one loaded model, and a web chat page.

    python -m poppins serve -m .poppins --port 8080

Routes: ``GET /`` (the chat page), ``GET /health``, ``GET /v1/models``,
``POST /v1/completions``, ``POST /v1/chat/completions`` (streamed as server-sent events ending
in ``data: [DONE]``, or not), ``POST /tokenize`` and ``POST /detokenize``.

OpenAI request fields: messages, prompt, max_tokens (max_completion_tokens), temperature,
top_p, seed, stop, stream, stream_options.include_usage, n (several choices; with a seed,
choice i uses seed + i), logprobs / top_logprobs (log-probabilities under the model's raw
logits, for the answer's tokens; the layout's special tokens are left out), plus llama.cpp's top_k, min_p, repeat_penalty and repeat_last_n.  What the model
cannot do is refused with a 400 naming the parameter (tools, tool_choice, functions,
response_format other than text, logit_bias, echo, suffix, best_of > 1, audio, non-text
modalities, frequency/presence penalties), like llama-server; other unknown fields are
ignored.  ``/v1/completions`` is not raw text continuation: the prompt is asked as one user
turn with the model's default system prompt (as ``infer -p`` does), since the model only
knows the conversation layout it was trained on.  A chat request without a system message
gets the model's default system prompt, an empty system message none, any other its text
(poppins.corpus.tokens.resolve_system).  Every answer carries ``usage``.

HTTP: the standard library's threading server, made to hold: every response either reads
the whole request body or closes the connection; a listen backlog of 1024; an idle/header
deadline and a body deadline per request (slow or half-sent requests are closed); at most
``parallel`` generations at once (default: one per physical core) with up to ``queue`` more waiting
in arrival order, a 503 with Retry-After beyond that; a client that goes away stops its
generation; every malformed request gets an OpenAI error object with a 4xx status.

Safety: bound to 127.0.0.1 by default.  With an API key, ``Authorization: Bearer KEY`` is
required on every route but ``/`` and ``/health`` (compared in constant time).  Bound to
loopback without a key, only requests whose Host (and Origin, when sent) is a loopback name
or in ``allow_hosts`` are served (DNS rebinding: a web page elsewhere cannot drive the
server); ``"*"`` turns the check off.  CORS answers allowed origins with any request headers
they ask for (the OpenAI JS SDK's ``X-Stainless-*``).
"""
from __future__ import annotations

import collections
import hmac
import ipaddress
import json
import math
import select
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Callable, Dict, List, Optional, Sequence
from urllib.parse import urlsplit

from ._version import __version__
from .corpus.tokens import STOP_IDS
from .errors import PoppinsError
from .threads import physical_cores

DEFAULT_MAX_BODY = 1 << 20
DEFAULT_MAX_TOKENS_CAP = 2048
DEFAULT_QUEUE = 64
DEFAULT_HEADER_TIMEOUT = 15.0     # idle keep-alive wait + request line + headers
DEFAULT_BODY_TIMEOUT = 30.0       # the whole body
DEFAULT_WRITE_TIMEOUT = 60.0      # one blocked write to a client that does not read
MAX_CHOICES = 8
MAX_TOP_LOGPROBS = 20
_FINISH = {"end": "stop", "stop-string": "stop", "max-tokens": "length", "context": "length",
           "cancelled": "stop"}
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}
_I64 = 1 << 63
_NET_ERRORS = (ConnectionError, TimeoutError, socket.timeout)   # a client gone or too slow


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None,
                 headers: Optional[Dict[str, str]] = None, close: bool = False):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}
        self.close = close        # the request body was not read: the connection must close

    def body(self) -> Dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


class _Gone(Exception):
    """The client went away."""


# ---------------------------------------------------------------------- request fields
def _num(body: Dict, key: str, kind, lo=None, hi=None):
    if key not in body or body[key] is None:
        return None
    v = body[key]
    what = "an integer" if kind is int else "a number"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ApiError(400, f"'{key}' must be {what}", param=key)
    if isinstance(v, float) and not math.isfinite(v):
        raise ApiError(400, f"'{key}' must be a finite number", param=key)
    if kind is int:
        if v != int(v):
            raise ApiError(400, f"'{key}' must be {what}", param=key)
        v = int(v)
    else:
        v = float(v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f"{lo if lo is not None else '...'}..{hi if hi is not None else '...'}"
        raise ApiError(400, f"'{key}' is out of range ({rng})", param=key)
    return v


def sampling_from(body: Dict, cap: int) -> Dict[str, Any]:
    """OpenAI (and llama.cpp) request fields -> poppins sampling keywords."""
    kw: Dict[str, Any] = {}
    max_tokens = _num(body, "max_tokens", int, 1, _I64 - 1)
    if max_tokens is None:
        max_tokens = _num(body, "max_completion_tokens", int, 1, _I64 - 1)
    kw["max_tokens"] = min(max_tokens or cap, cap)
    for key, kind, lo, hi in (("temperature", float, 0, 100),
                              ("top_p", float, 0, 1),
                              ("top_k", int, 0, (1 << 31) - 1),
                              ("min_p", float, 0, 1),
                              ("repeat_penalty", float, 1e-6, 100),
                              ("repeat_last_n", int, -1, (1 << 31) - 1),
                              ("seed", int, -_I64, (1 << 64) - 1)):
        v = _num(body, key, kind, lo, hi)
        if v is not None:
            kw[key] = v
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or len(stop) > 16 or \
                not all(isinstance(s, str) for s in stop):
            raise ApiError(400, "'stop' must be a string or a list of at most 16 strings",
                           param="stop")
        kw["stop"] = [s for s in stop if s]
    return kw


def refuse_unsupported(body: Dict, chat: bool) -> None:
    """A 400 naming the first parameter the model cannot honour (llama-server does the same)."""
    def bad(param, what):
        raise ApiError(400, f"'{param}' is not supported by this server: {what}", param=param,
                       code="unsupported_parameter")

    for key in ("tools", "functions"):
        if body.get(key):
            bad(key, "the model cannot call tools or functions")
    for key in ("tool_choice", "function_call"):
        if body.get(key) not in (None, "none"):
            bad(key, "the model cannot call tools or functions")
    rf = body.get("response_format")
    if rf is not None:
        if not isinstance(rf, dict) or rf.get("type") != "text":
            bad("response_format", "only {\"type\": \"text\"} (no JSON mode or JSON schema)")
    if body.get("logit_bias"):
        bad("logit_bias", "no logit biases")
    for key in ("frequency_penalty", "presence_penalty"):
        v = body.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v != 0):
            bad(key, "use repeat_penalty (llama.cpp's) instead")
    if body.get("audio"):
        bad("audio", "text only")
    mods = body.get("modalities")
    if mods is not None and mods != ["text"]:
        bad("modalities", "text only")
    if body.get("prediction"):
        bad("prediction", "no predicted outputs")
    if not chat:
        if body.get("echo"):
            bad("echo", "the prompt is asked as a user turn, not continued")
        if body.get("suffix"):
            bad("suffix", "no fill-in-the-middle")
        best_of = body.get("best_of")
        if best_of not in (None, 1) and best_of != body.get("n", 1):
            bad("best_of", "use n")
    for key in ("stream",):
        if body.get(key) is not None and not isinstance(body[key], bool):
            raise ApiError(400, f"'{key}' must be true or false", param=key)
    so = body.get("stream_options")
    if so is not None:
        if not isinstance(so, dict) or not isinstance(so.get("include_usage", False), bool):
            raise ApiError(400, "'stream_options' must be {\"include_usage\": true|false}",
                           param="stream_options")


def _messages(body: Dict) -> List[Dict[str, str]]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "'messages' must be a non-empty list", param="messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise ApiError(400, f"messages[{i}] must be an object", param="messages")
        role = m.get("role")
        if role in ("tool", "function"):
            raise ApiError(400, f"messages[{i}]: '{role}' messages are not supported: the "
                                "model cannot call tools", param="messages",
                           code="unsupported_parameter")
        if role not in ("system", "developer", "user", "assistant"):
            raise ApiError(400, f"messages[{i}] needs a role of system, user or assistant",
                           param="messages")
        if m.get("tool_calls"):
            raise ApiError(400, f"messages[{i}]: tool_calls are not supported",
                           param="messages", code="unsupported_parameter")
        content = m.get("content")
        if content is None and role == "assistant":
            content = ""
        if isinstance(content, list):   # [{"type": "text", "text": ...}, ...]
            parts = []
            for j, p in enumerate(content):
                if not isinstance(p, dict) or p.get("type") != "text" \
                        or not isinstance(p.get("text"), str):
                    raise ApiError(400, f"messages[{i}].content[{j}] must be "
                                        "{\"type\": \"text\", \"text\": string} (text only)",
                                   param="messages")
                parts.append(p["text"])
            content = "".join(parts)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string or a list of text "
                                "parts", param="messages")
        out.append({"role": "system" if role == "developer" else role, "content": content})
    if any(m["role"] == "system" for m in out[1:]):
        raise ApiError(400, "a system message may only come first", param="messages")
    if out[-1]["role"] != "user":
        raise ApiError(400, "the last message must be the user's", param="messages")
    return out


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def parse_json(raw: bytes) -> Dict[str, Any]:
    """The request body as a JSON object, or an ApiError(400)."""
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant) if raw else {}
    except RecursionError:
        raise ApiError(400, "the request body is nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, huge ints, NaN
        raise ApiError(400, f"the request body is not valid JSON ({str(exc)[:200]})") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


# ---------------------------------------------------------------------- admission
class Gate:
    """At most ``slots`` holders at once; up to ``queue`` more wait, served in arrival order;
    beyond that enter() raises a 503 with Retry-After."""

    def __init__(self, slots: int, queue: int):
        self.slots, self.queue = max(1, int(slots)), max(0, int(queue))
        self._lock = threading.Lock()
        self._running = 0
        self._waiting: collections.deque = collections.deque()

    def enter(self, gone: Callable[[], bool]) -> None:
        with self._lock:
            if self._running < self.slots and not self._waiting:
                self._running += 1
                return
            if len(self._waiting) >= self.queue:
                raise ApiError(503, "the server is busy (all generation slots and the queue "
                                    "are full); retry shortly", "server_error",
                               code="server_busy", headers={"Retry-After": "2"})
            ev = threading.Event()
            self._waiting.append(ev)
        while not ev.wait(0.25):
            if gone():
                with self._lock:
                    if not ev.is_set():
                        self._waiting.remove(ev)
                        raise _Gone()
                self.leave()          # the slot was handed over meanwhile: give it back
                raise _Gone()

    def leave(self) -> None:
        with self._lock:
            if self._waiting:
                self._waiting.popleft().set()     # the slot passes to the next in line
            else:
                self._running -= 1

    @property
    def busy(self) -> Dict[str, int]:
        with self._lock:
            return {"running": self._running, "waiting": len(self._waiting)}


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _hostname(value: str) -> str:
    """The host name of a Host header value (port and IPv6 brackets stripped), lower case."""
    v = value.strip().lower()
    if v.startswith("["):
        return v[1:v.find("]")] if "]" in v else v
    return v.rsplit(":", 1)[0] if v.count(":") == 1 else v


class PoppinsServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024          # the listen backlog (socketserver's default is 5)

    def __init__(self, addr, model, *, model_name: str = "poppins", api_key: Optional[str] = None,
                 max_body: int = DEFAULT_MAX_BODY, max_tokens_cap: int = DEFAULT_MAX_TOKENS_CAP,
                 quiet: bool = True, parallel: Optional[int] = None, queue: int = DEFAULT_QUEUE,
                 header_timeout: float = DEFAULT_HEADER_TIMEOUT,
                 body_timeout: float = DEFAULT_BODY_TIMEOUT,
                 write_timeout: float = DEFAULT_WRITE_TIMEOUT,
                 allow_hosts: Sequence[str] = ()):
        if queue < DEFAULT_QUEUE:
            raise PoppinsError(f"the queue holds at least {DEFAULT_QUEUE} waiting requests")
        super().__init__(addr, _Handler)
        self.model = model
        self.model_name = model_name
        self.api_key = api_key or None
        self.max_body = max_body
        self.max_tokens_cap = max_tokens_cap
        self.quiet = quiet
        self.created = int(time.time())
        self.gate = Gate(parallel or physical_cores(), queue)
        self.special_ids = frozenset(int(i) for i in model.tokenizer.special_ids) | set(STOP_IDS)
        self.header_timeout, self.body_timeout = header_timeout, body_timeout
        self.write_timeout = write_timeout
        allow = {h.strip().lower() for h in allow_hosts if h.strip()}
        self.allow_any_host = "*" in allow
        self.allowed_hosts = _LOOPBACK_NAMES | {_hostname(h) if "://" not in h else
                                                (urlsplit(h).hostname or "") for h in allow}
        # the Host/Origin check: bound to loopback with no key (else the operator chose)
        self.guard = (not self.api_key and not self.allow_any_host
                      and _is_loopback(self.server_address[0]))

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, _NET_ERRORS):
            return                      # a client that went away is not a server error
        print(f"poppins: error serving {client_address[0]}: {type(exc).__name__}: {exc}",
              file=sys.stderr)


class _DeadlineReader:
    """The request stream with a deadline: each read may block only until ``deadline``
    (a slow or half-sent request is cut off when its time is up)."""

    def __init__(self, inner, sock):
        self.inner, self.sock = inner, sock
        self.deadline = math.inf

    def _arm(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request deadline passed")
        self.sock.settimeout(left)

    def readline(self, limit: int = -1) -> bytes:
        self._arm()
        return self.inner.readline(limit)

    def read1(self, n: int) -> bytes:
        self._arm()
        return self.inner.read1(n)

    def read(self, n: int = -1) -> bytes:
        self._arm()
        return self.inner.read(n)

    def close(self) -> None:
        self.inner.close()


class _Handler(BaseHTTPRequestHandler):
    server: PoppinsServer
    protocol_version = "HTTP/1.1"
    server_version = f"poppins/{__version__}"
    disable_nagle_algorithm = True      # small responses go out at once (no 40 ms stalls)

    def setup(self):
        super().setup()
        self.rfile = _DeadlineReader(self.rfile, self.connection)

    def handle_one_request(self):
        self.rfile.deadline = time.monotonic() + self.server.header_timeout
        self._body_left: Optional[int] = None      # body bytes not read yet (None: unknown)
        self._cors: Optional[str] = None
        self._sent = False                          # response headers already out
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError, OSError):
            self.close_connection = True

    def log_message(self, fmt, *args):
        if not self.server.quiet:
            super().log_message(fmt, *args)

    def send_error(self, code, message=None, explain=None):
        """The standard library's own errors (bad request line, headers too long...) as
        OpenAI error objects; the connection closes (the request was not understood)."""
        self.close_connection = True
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = "HTTP/1.0"     # answer with a status line and headers
        try:
            self._error(ApiError(code, message or "bad request", close=True))
        except OSError:
            pass

    # -- responses ---------------------------------------------------------------------------
    def _headers(self, status: int, ctype: str, length: Optional[int],
                 extra: Optional[Dict[str, str]] = None) -> None:
        self._sent = True
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if length is not None:
            self.send_header("Content-Length", str(length))
        if self._cors:
            self.send_header("Access-Control-Allow-Origin", self._cors)
            self.send_header("Vary", "Origin")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        if self._body_left:                # an unread body: the connection cannot be reused
            self.close_connection = True
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()

    def _send(self, status: int, body: bytes, ctype: str = "application/json",
              extra: Optional[Dict[str, str]] = None) -> None:
        self._headers(status, ctype, len(body), extra)
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode("utf-8"))

    def _error(self, err: ApiError) -> None:
        if err.close:
            self.close_connection = True
        self._send(err.status, json.dumps(err.body()).encode("utf-8"), extra=err.headers)

    # -- request plumbing --------------------------------------------------------------------
    def _check_origin(self) -> None:
        """Host/Origin (DNS rebinding) check and the CORS origin to answer with."""
        srv = self.server
        origin = self.headers.get("Origin")
        if srv.guard:
            host = _hostname(self.headers.get("Host", ""))
            if host not in srv.allowed_hosts:
                raise ApiError(403, f"Host '{host}' is not allowed (the server is bound to "
                                    "loopback without an API key; see --allow-host)",
                               code="host_not_allowed")
            if origin is not None:
                o = urlsplit(origin)
                if o.scheme not in ("http", "https") or \
                        (o.hostname or "").lower() not in srv.allowed_hosts:
                    raise ApiError(403, f"Origin '{origin}' is not allowed (see --allow-host)",
                                   code="origin_not_allowed")
        self._cors = origin if origin else "*"

    def _auth(self) -> None:
        key = self.server.api_key
        if not key:
            return
        given = self.headers.get("Authorization", "").encode("utf-8", "replace")
        if not hmac.compare_digest(given, f"Bearer {key}".encode("utf-8")):
            raise ApiError(401, "missing or invalid API key (Authorization: Bearer ...)",
                           "invalid_request_error", code="invalid_api_key")

    def _length(self) -> None:
        """Sets _body_left from the headers, or raises an error that closes the connection."""
        if self.headers.get("Transfer-Encoding"):
            raise ApiError(411, "chunked request bodies are not supported; send "
                                "Content-Length", code="length_required", close=True)
        values = self.headers.get_all("Content-Length") or []
        if len(set(values)) > 1:
            raise ApiError(400, "conflicting Content-Length headers", close=True)
        raw = values[0].strip() if values else "0"
        if not raw.isdigit() or len(raw) > 18:
            raise ApiError(400, f"invalid Content-Length {raw[:40]!r}", close=True)
        self._body_left = int(raw)

    def _read_body(self) -> bytes:
        """The whole body within the body deadline (or a 413 that closes the connection)."""
        n = self._body_left or 0
        if n > self.server.max_body:
            raise ApiError(413, f"request body over the limit of {self.server.max_body} bytes",
                           code="request_too_large", close=True)
        self.rfile.deadline = time.monotonic() + self.server.body_timeout
        chunks = []
        while n > 0:
            c = self.rfile.read1(min(n, 65536))
            if not c:
                raise ConnectionResetError("the client closed mid-body")
            chunks.append(c)
            n -= len(c)
            self._body_left = n
        self.connection.settimeout(self.server.write_timeout)
        return b"".join(chunks)

    def _discard_body(self) -> None:
        """After an early error: read the rest of a small body so the connection can be
        reused; a large or slow one closes the connection instead."""
        if self._body_left and self._body_left <= self.server.max_body:
            try:
                self._read_body()
            except (OSError, ApiError):
                self.close_connection = True

    def _gone(self) -> bool:
        """True once the client has closed its end (EOF or reset on the socket)."""
        sock = self.connection
        try:
            r, _, _ = select.select([sock], [], [], 0)
            if not r:
                return False
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except (OSError, ValueError):
            return True

    def _check_model(self, body: Dict) -> None:
        name = body.get("model")
        if name is not None and name != self.server.model_name:
            raise ApiError(404, f"the model '{name}' does not exist; this server serves "
                                f"'{self.server.model_name}'", code="model_not_found",
                           param="model")

    def _dispatch(self, fn: Callable[[], None]) -> None:
        """Runs a route; every failure becomes an error response (or a closed connection)."""
        try:
            fn()
        except Exception:
            if self._sent:                 # mid-response: all that is left is to hang up
                self.close_connection = True
                if not isinstance(sys.exc_info()[1], (_Gone,) + _NET_ERRORS):
                    print(f"poppins: error in a response to {self.command} {self.path}: "
                          f"{sys.exc_info()[1]}", file=sys.stderr)
                return
            self._dispatch_error()

    def _dispatch_error(self) -> None:
        try:
            raise
        except ApiError as err:
            self._discard_body()
            self._error(err)
        except PoppinsError as exc:
            self._discard_body()
            self._error(ApiError(400, str(exc)))
        except (_Gone,) + _NET_ERRORS:
            self.close_connection = True
        except Exception as exc:  # a bug: answer 500 and keep serving
            self.close_connection = True
            print(f"poppins: internal error on {self.command} {self.path}: "
                  f"{type(exc).__name__}: {exc}", file=sys.stderr)
            try:
                self._error(ApiError(500, "internal server error", "server_error",
                                     code="internal_error"))
            except OSError:
                pass

    # -- routes ------------------------------------------------------------------------------
    def do_OPTIONS(self):
        def run():
            self._length()
            self._check_origin()
            self._read_body()
            asked = self.headers.get("Access-Control-Request-Headers")
            self._headers(204, "text/plain", 0, {
                "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                "Access-Control-Allow-Headers": asked or "Authorization, Content-Type",
                "Access-Control-Max-Age": "600"})
        self._dispatch(run)

    def do_GET(self):
        def run():
            self._length()
            self._check_origin()
            self._read_body()
            path = self.path.split("?", 1)[0]
            if path in ("/", "/index.html"):
                page = resources.files("poppins.web").joinpath("chat.html").read_bytes()
                return self._send(200, page, "text/html; charset=utf-8",
                                  {"Cache-Control": "no-cache"})
            if path == "/health":
                return self._json(200, {"status": "ok"})
            self._auth()
            if path == "/v1/models":
                return self._json(200, {"object": "list", "data": [{
                    "id": self.server.model_name, "object": "model",
                    "created": self.server.created, "owned_by": "poppins"}]})
            raise ApiError(404, f"no route GET {path}", code="not_found")
        self._dispatch(run)

    do_HEAD = do_GET

    def do_POST(self):
        def run():
            self._length()
            self._check_origin()
            path = self.path.split("?", 1)[0]
            routes = {"/v1/chat/completions": self._chat, "/v1/completions": self._completions,
                      "/tokenize": self._tokenize, "/detokenize": self._detokenize}
            if path not in routes:
                raise ApiError(404, f"no route POST {path}", code="not_found")
            self._auth()
            routes[path](parse_json(self._read_body()))
        self._dispatch(run)

    def _not_allowed(self):
        self._dispatch(lambda: (_ for _ in ()).throw(
            ApiError(405, f"method {self.command} is not allowed", code="method_not_allowed")))

    do_PUT = do_DELETE = do_PATCH = _not_allowed

    def _tokenize(self, body):
        content = body.get("content")
        if not isinstance(content, str):
            raise ApiError(400, "'content' must be a string", param="content")
        ids = self.server.model.tokenizer.encode(content, special=bool(body.get("add_special",
                                                                               False)))
        self._json(200, {"tokens": [int(i) for i in ids]})

    def _detokenize(self, body):
        tokens = body.get("tokens")
        vocab = self.server.model.tokenizer.vocab_size
        if not isinstance(tokens, list) or not all(
                isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab
                for t in tokens):
            raise ApiError(400, f"'tokens' must be a list of ids in 0..{vocab - 1}",
                           param="tokens")
        self._json(200, {"content": self.server.model.tokenizer.decode(tokens)})

    def _completions(self, body):
        self._check_model(body)
        refuse_unsupported(body, chat=False)
        prompt = body.get("prompt")
        prompts = prompt if isinstance(prompt, list) else [prompt]
        if not prompts or len(prompts) > MAX_CHOICES or \
                not all(isinstance(p, str) for p in prompts):
            raise ApiError(400, f"'prompt' must be a string or a list of at most {MAX_CHOICES} "
                                "strings (token arrays are not supported)", param="prompt")
        top = _num(body, "logprobs", int, 0, 5)
        self._answer(body, [[{"role": "user", "content": p}] for p in prompts], top, chat=False)

    def _chat(self, body):
        self._check_model(body)
        refuse_unsupported(body, chat=True)
        msgs = _messages(body)
        lp = body.get("logprobs")
        if lp is not None and not isinstance(lp, bool):
            raise ApiError(400, "'logprobs' must be true or false", param="logprobs")
        top = _num(body, "top_logprobs", int, 0, MAX_TOP_LOGPROBS)
        if top is not None and not lp:
            raise ApiError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
        self._answer(body, [msgs], (top or 0) if lp else None, chat=True)

    # -- answers -----------------------------------------------------------------------------
    def _logprobs(self, entries: List[dict], chat: bool, offset: int = 0) -> Optional[dict]:
        """OpenAI's logprobs object for ``entries`` (poppins' Completion.logprobs items)."""
        tok = self.server.model.tokenizer
        hidden = self.server.special_ids
        entries = [e for e in entries if e["id"] not in hidden]    # the layout's tags

        def text(i):
            return tok.decode([i])

        if chat:
            def item(i, lp):
                return {"token": text(i), "logprob": lp, "bytes": list(tok.decode_bytes([i]))}
            return {"content": [dict(item(e["id"], e["logprob"]),
                                     top_logprobs=[item(i, lp) for i, lp in e["top"]])
                                for e in entries], "refusal": None}
        offsets, pos = [], offset
        for e in entries:
            offsets.append(pos)
            pos += len(text(e["id"]))
        return {"tokens": [text(e["id"]) for e in entries],
                "token_logprobs": [e["logprob"] for e in entries],
                "top_logprobs": [{text(i): lp for i, lp in e["top"]} for e in entries],
                "text_offset": offsets}

    def _answer(self, body, conversations: List[List[Dict]], top: Optional[int],
                chat: bool) -> None:
        """Answers each conversation ``n`` times (choice index = conversation * n + i)
        through the public API (Model.chat / Model.chat_stream), inside one generation slot."""
        srv = self.server
        n = _num(body, "n", int, 1, MAX_CHOICES) or 1
        if n * len(conversations) > MAX_CHOICES:
            raise ApiError(400, f"at most {MAX_CHOICES} choices per request", param="n")
        kw = sampling_from(body, srv.max_tokens_cap)
        so = body.get("stream_options") or {}
        streamed = bool(body.get("stream"))
        if so and not streamed:
            raise ApiError(400, "'stream_options' needs 'stream': true", param="stream_options")
        seed = kw.pop("seed", None)
        if top is not None:
            kw["logprobs"] = top
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        model = srv.model
        jobs = [(ci * n + i, msgs, None if seed is None else seed + i)
                for ci, msgs in enumerate(conversations) for i in range(n)]
        srv.gate.enter(self._gone)
        try:
            if streamed:
                self._answer_stream(jobs, n, kw, top, chat, rid, created,
                                    bool(so.get("include_usage")))
                return
            choices, prompt_tokens, completion_tokens = [], 0, 0
            for ci, (index, msgs, s) in enumerate(jobs):
                c = model.chat(msgs, cancel=self._gone, **kw,
                               **({} if s is None else {"seed": s}))
                if c.stop_reason == "cancelled":
                    raise _Gone()
                if ci % n == 0:
                    prompt_tokens += c.prompt_tokens
                completion_tokens += len(c.tokens)
                finish = _FINISH.get(c.stop_reason, "stop")
                lp = None if top is None else self._logprobs(c.logprobs or [], chat)
                choices.append({"index": index, "message": {"role": "assistant",
                                                            "content": c.text},
                                "logprobs": lp, "finish_reason": finish} if chat else
                               {"index": index, "text": c.text, "logprobs": lp,
                                "finish_reason": finish})
        finally:
            srv.gate.leave()
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        self._json(200, {"id": rid, "object": "chat.completion" if chat else "text_completion",
                         "created": created, "model": srv.model_name, "choices": choices,
                         "usage": usage, "system_fingerprint": f"poppins-{__version__}"})

    def _answer_stream(self, jobs, n, kw, top, chat, rid, created, include_usage) -> None:
        """Server-sent events; the headers go out with the first piece, so an error before
        it (a too-long prompt) is still a plain error response."""
        model = self.server.model
        chunk_obj = "chat.completion.chunk" if chat else "text_completion"
        started = False
        prompt_tokens = completion_tokens = 0

        def emit(choices: List[Dict], **extra) -> None:
            nonlocal started
            if not started:
                self.close_connection = True
                self._headers(200, "text/event-stream", None, {"Cache-Control": "no-cache",
                                                                 "X-Accel-Buffering": "no"})
                started = True
            data = {"id": rid, "object": chunk_obj, "created": created,
                    "model": self.server.model_name, "choices": choices, **extra}
            if include_usage and "usage" not in extra:
                data["usage"] = None
            self.wfile.write(b"data: " + json.dumps(data).encode("utf-8") + b"\n\n")
            self.wfile.flush()

        def lp_of(entries, offset):
            return None if top is None else self._logprobs(entries, chat, offset)

        for ci, (index, msgs, s) in enumerate(jobs):
            stream = model.chat_stream(msgs, cancel=self._gone, **kw,
                                       **({} if s is None else {"seed": s}))
            try:
                done_lp, offset = 0, 0
                if chat:
                    first = next(stream, None)
                    emit([{"index": index, "delta": {"role": "assistant", "content": ""},
                           "logprobs": None, "finish_reason": None}])
                    pieces = _chain(first, stream)
                else:
                    pieces = stream
                for piece in pieces:
                    entries = (stream.logprobs or [])[done_lp:]
                    done_lp += len(entries)
                    lp = lp_of(entries, offset)
                    offset += len(piece)
                    emit([{"index": index, "delta": {"content": piece}, "logprobs": lp,
                           "finish_reason": None} if chat else
                          {"index": index, "text": piece, "logprobs": lp,
                           "finish_reason": None}])
            finally:
                stream.close()
            c = stream.completion
            if c is None or c.stop_reason == "cancelled":
                raise _Gone()
            if ci % n == 0:
                prompt_tokens += c.prompt_tokens
            completion_tokens += len(c.tokens)
            finish = _FINISH.get(c.stop_reason, "stop")
            lp = lp_of((c.logprobs or [])[done_lp:], offset)
            emit([{"index": index, "delta": {}, "logprobs": lp, "finish_reason": finish}
                  if chat else {"index": index, "text": "", "logprobs": lp,
                                "finish_reason": finish}])
        if include_usage:
            emit([], usage={"prompt_tokens": prompt_tokens,
                            "completion_tokens": completion_tokens,
                            "total_tokens": prompt_tokens + completion_tokens})
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def _chain(first, rest):
    if first is not None:
        yield first
    yield from rest


def serve(model, host: str = "127.0.0.1", port: int = 8080, **options) -> PoppinsServer:
    """A started server (in a background thread); ``.shutdown()`` stops it."""
    srv = PoppinsServer((host, port), model, **options)
    threading.Thread(target=srv.serve_forever, name="poppins-server", daemon=True).start()
    return srv
