"""An OpenAI-compatible HTTP server for one loaded model, and a web chat page.

    python -m poppins serve -m .poppins --port 8080

Routes: ``GET /`` (the chat page), ``GET /health``, ``GET /v1/models``,
``POST /v1/completions``, ``POST /v1/chat/completions`` (streamed as server-sent events ending
in ``data: [DONE]``, or not), ``POST /tokenize`` and ``POST /detokenize``.  OpenAI request
fields (messages, prompt, max_tokens, temperature, top_p, seed, stop, stream) plus top_k,
min_p and repeat_penalty; unknown fields are ignored.  Errors are OpenAI error objects with
the usual status codes.  Bound to 127.0.0.1 by default; request bodies and max_tokens are
capped; with an API key set, ``Authorization: Bearer KEY`` is required on every route but
``/``, ``/health``.  Requests are served in parallel threads on the one loaded model.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Dict, List, Optional

from ._version import __version__
from .errors import PoppinsError

DEFAULT_MAX_BODY = 1 << 20
DEFAULT_MAX_TOKENS_CAP = 2048
_FINISH = {"end": "stop", "stop-string": "stop", "max-tokens": "length", "context": "length"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> Dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


def _num(body: Dict, key: str, kind, lo=None, hi=None):
    if key not in body or body[key] is None:
        return None
    v = body[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and v != int(v)):
        raise ApiError(400, f"'{key}' must be a{'n integer' if kind is int else ' number'}",
                       param=key)
    v = kind(v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ApiError(400, f"'{key}' is out of range", param=key)
    return v


def sampling_from(body: Dict, cap: int) -> Dict[str, Any]:
    """OpenAI (and llama.cpp) request fields -> poppins sampling keywords."""
    kw: Dict[str, Any] = {}
    max_tokens = _num(body, "max_tokens", int, 1)
    if max_tokens is None:
        max_tokens = _num(body, "max_completion_tokens", int, 1)
    kw["max_tokens"] = min(max_tokens or cap, cap)
    for key, name, kind, lo, hi in (("temperature", "temperature", float, 0, 100),
                                    ("top_p", "top_p", float, 0, 1),
                                    ("top_k", "top_k", int, 0, None),
                                    ("min_p", "min_p", float, 0, 1),
                                    ("repeat_penalty", "repeat_penalty", float, 0, None),
                                    ("seed", "seed", int, None, None)):
        v = _num(body, key, kind, lo, hi)
        if v is not None:
            kw[name] = v
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise ApiError(400, "'stop' must be a string or a list of strings", param="stop")
        kw["stop"] = [s for s in stop if s]
    return kw


def _messages(body: Dict) -> List[Dict[str, str]]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "'messages' must be a non-empty list", param="messages")
    out = []
    for m in msgs:
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user",
                                                            "assistant"):
            raise ApiError(400, "each message needs a role of system, user or assistant",
                           param="messages")
        content = m.get("content")
        if isinstance(content, list):   # [{"type": "text", "text": ...}, ...]
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise ApiError(400, "message content must be a string", param="messages")
        role = "system" if m["role"] == "developer" else m["role"]
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "user":
        raise ApiError(400, "the last message must be the user's", param="messages")
    return out


class PoppinsServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, model, *, model_name: str = "poppins", api_key: Optional[str] = None,
                 max_body: int = DEFAULT_MAX_BODY, max_tokens_cap: int = DEFAULT_MAX_TOKENS_CAP,
                 quiet: bool = True):
        super().__init__(addr, _Handler)
        self.model = model
        self.model_name = model_name
        self.api_key = api_key
        self.max_body = max_body
        self.max_tokens_cap = max_tokens_cap
        self.quiet = quiet
        self.created = int(time.time())

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class _Handler(BaseHTTPRequestHandler):
    server: PoppinsServer
    protocol_version = "HTTP/1.1"
    server_version = f"poppins/{__version__}"

    def log_message(self, fmt, *args):
        if not self.server.quiet:
            super().log_message(fmt, *args)

    # -- responses ---------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Access-Control-Allow-Origin", "*")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode("utf-8"))

    def _error(self, err: ApiError) -> None:
        self._json(err.status, err.body())

    # -- request plumbing --------------------------------------------------------------------
    def _auth(self) -> None:
        key = self.server.api_key
        if not key:
            return
        given = self.headers.get("Authorization", "")
        if given != f"Bearer {key}":
            raise ApiError(401, "missing or invalid API key (Authorization: Bearer ...)",
                           "invalid_request_error", code="invalid_api_key")

    def _body(self) -> Dict[str, Any]:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise ApiError(400, "invalid Content-Length") from None
        if length > self.server.max_body:
            self.close_connection = True
            raise ApiError(413, f"request body over the limit of {self.server.max_body} bytes",
                           code="request_too_large")
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw.decode("utf-8")) if raw else {}
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError(400, f"the request body is not valid JSON ({exc})") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return body

    def _check_model(self, body: Dict) -> None:
        name = body.get("model")
        if name is not None and name != self.server.model_name:
            raise ApiError(404, f"the model '{name}' does not exist; this server serves "
                                f"'{self.server.model_name}'", code="model_not_found",
                           param="model")

    # -- routes ------------------------------------------------------------------------------
    def do_OPTIONS(self):
        self.send_response(204)
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Allow-Headers", "Authorization, Content-Type")
        self.send_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        try:
            path = self.path.split("?", 1)[0]
            if path in ("/", "/index.html"):
                page = resources.files("poppins.web").joinpath("chat.html").read_bytes()
                return self._send(200, page, "text/html; charset=utf-8")
            if path == "/health":
                return self._json(200, {"status": "ok"})
            self._auth()
            if path == "/v1/models":
                return self._json(200, {"object": "list", "data": [{
                    "id": self.server.model_name, "object": "model",
                    "created": self.server.created, "owned_by": "poppins"}]})
            raise ApiError(404, f"no route GET {path}", code="not_found")
        except ApiError as err:
            self._error(err)

    def do_POST(self):
        try:
            path = self.path.split("?", 1)[0]
            routes = {"/v1/chat/completions": self._chat, "/v1/completions": self._completions,
                      "/tokenize": self._tokenize, "/detokenize": self._detokenize}
            if path not in routes:
                raise ApiError(404, f"no route POST {path}", code="not_found")
            self._auth()
            body = self._body()
            routes[path](body)
        except ApiError as err:
            self._error(err)
        except PoppinsError as exc:
            self._error(ApiError(400, str(exc)))
        except (BrokenPipeError, ConnectionResetError):
            pass

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
        if not isinstance(tokens, list) or not all(isinstance(t, int) and 0 <= t < vocab
                                                   for t in tokens):
            raise ApiError(400, f"'tokens' must be a list of ids in 0..{vocab - 1}",
                           param="tokens")
        self._json(200, {"content": self.server.model.tokenizer.decode(tokens)})

    def _completions(self, body):
        self._check_model(body)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ApiError(400, "'prompt' must be a string", param="prompt")
        kw = sampling_from(body, self.server.max_tokens_cap)
        self._answer(body, [{"role": "user", "content": prompt}], kw, chat=False)

    def _chat(self, body):
        self._check_model(body)
        msgs = _messages(body)
        kw = sampling_from(body, self.server.max_tokens_cap)
        self._answer(body, msgs, kw, chat=True)

    def _answer(self, body, messages, kw, chat: bool) -> None:
        """Answer ``messages`` through the public API: Model.chat (one compiled loop) or, for
        ``"stream": true``, Model.chat_stream as server-sent events."""
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        obj = "chat.completion" if chat else "text_completion"
        name = self.server.model_name
        model = self.server.model
        if not body.get("stream"):
            final = model.chat(messages, **kw)
            usage = {"prompt_tokens": final.prompt_tokens, "completion_tokens": len(final.tokens),
                     "total_tokens": final.prompt_tokens + len(final.tokens)}
            finish = _FINISH.get(final.stop_reason, "stop")
            choice = ({"index": 0, "message": {"role": "assistant", "content": final.text},
                       "finish_reason": finish} if chat else
                      {"index": 0, "text": final.text, "finish_reason": finish, "logprobs": None})
            return self._json(200, {"id": rid, "object": obj, "created": created, "model": name,
                                    "choices": [choice], "usage": usage})
        # server-sent events; the first event is sent only once generation has started, so a
        # bad request still gets a plain error response
        stream = model.chat_stream(messages, **kw)
        first = next(stream, None)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        chunk_obj = "chat.completion.chunk" if chat else "text_completion"

        def emit(choice: Dict) -> None:
            data = {"id": rid, "object": chunk_obj, "created": created, "model": name,
                    "choices": [choice]}
            self.wfile.write(b"data: " + json.dumps(data).encode("utf-8") + b"\n\n")
            self.wfile.flush()

        if chat:
            emit({"index": 0, "delta": {"role": "assistant", "content": ""},
                  "finish_reason": None})
        for piece in _chain(first, stream):
            emit({"index": 0, "delta": {"content": piece}, "finish_reason": None} if chat
                 else {"index": 0, "text": piece, "finish_reason": None, "logprobs": None})
        finish = _FINISH.get(stream.completion.stop_reason, "stop")
        emit({"index": 0, "delta": {}, "finish_reason": finish} if chat
             else {"index": 0, "text": "", "finish_reason": finish, "logprobs": None})
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
