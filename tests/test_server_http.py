"""The HTTP battery (issue 14): a server on a free loopback port must hold up against
errors on kept-alive connections, malformed input, slow and half-sent requests, many
concurrent streaming clients and long runs; and speak OpenAI's n / logprobs / usage."""
from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time

import pytest

from poppins.server import ApiError, Gate, serve
from test_server import ANSWERS, FIRST, SYSTEM, model, trained  # noqa: F401  (fixtures)

CHAT = "/v1/chat/completions"


def _msgs(p):
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": p}]


@pytest.fixture
def open_server(model):
    srvs = []

    def start(**kw):
        kw.setdefault("max_body", 1 << 16)
        kw.setdefault("max_tokens_cap", 64)
        srv = serve(model if "model" not in kw else kw.pop("model"), port=0, **kw)
        srvs.append(srv)
        return srv
    yield start
    for s in srvs:
        s.shutdown()
        s.server_close()


@pytest.fixture(scope="module")
def shared(model):
    """One guarded server for the cases that need no special settings."""
    srv = serve(model, port=0, max_body=1 << 16, max_tokens_cap=64)
    yield srv
    srv.shutdown()
    srv.server_close()


def _read_response(f):
    """(status, headers dict (lower-case names), body bytes) of one response from ``f``."""
    line = f.readline()
    if not line:
        raise ConnectionError("closed before a response")
    status = int(line.split()[1])
    headers = {}
    while True:
        h = f.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        k, v = h.decode("latin-1").split(":", 1)
        headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "0"))
    body = f.read(n) if n else b""
    return status, headers, body


def _raw(srv, data: bytes, responses: int = 1, timeout: float = 30):
    host, port = srv.server_address[:2]
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(data)
        f = s.makefile("rb")
        return [_read_response(f) for _ in range(responses)]


def _post_bytes(path, body: bytes, extra: str = "", host="127.0.0.1"):
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body


def _is_error(status, body, lo=400, hi=499):
    assert lo <= status <= hi, (status, body)
    err = json.loads(body)["error"]
    assert err["message"] and "type" in err and "code" in err
    return err


# ----------------------------------------------------------------- kept-alive connections
def test_errors_leave_the_connection_usable(open_server):
    srv = open_server(api_key="sekret", max_body=4096)
    good = json.dumps({"messages": _msgs(FIRST), "temperature": 0}).encode()
    auth = {"Authorization": "Bearer sekret", "Content-Type": "application/json"}
    conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=60)
    cases = [("/v1/embeddings", {"model": "poppins", "input": "hello"}, auth, 404),
             (CHAT, {"messages": _msgs(FIRST)}, {"Authorization": "Bearer wrong"}, 401),
             (CHAT, {"messages": _msgs(FIRST)}, {}, 401),
             (CHAT, {"messages": "nope", "x": "y" * 100}, auth, 400),
             (CHAT, {"messages": _msgs(FIRST), "pad": "x" * 10000}, auth, 413)]
    for path, body, headers, expect in cases:
        conn.request("POST", path, body=json.dumps(body).encode(), headers=headers)
        r = conn.getresponse()
        _is_error(r.status, r.read())
        assert r.status == expect
        sock = conn.sock
        conn.request("POST", CHAT, body=good, headers=auth)
        r2 = conn.getresponse()
        assert r2.status == 200, r2.read()
        assert json.loads(r2.read())["choices"][0]["message"]["content"] == ANSWERS[FIRST]
        if expect != 413:        # the error's body was read: the same connection carried on
            assert sock is not None and conn.sock is sock
    conn.close()
    # pipelined on one socket: an error with an unread-looking body, then a request
    body = json.dumps({"model": "poppins", "input": "hello"}).encode()
    (s1, _, b1), (s2, _, b2) = _raw(srv, _post_bytes("/v1/embeddings", body)
                                    + b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 2)
    assert s1 == 404 and s2 == 200 and json.loads(b2) == {"status": "ok"}


MALFORMED = {
    "max_tokens NaN": b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": NaN}',
    "max_tokens Infinity":
        b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": Infinity}',
    "max_tokens 1e400": b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1e400}',
    "top_k NaN": b'{"messages": [{"role": "user", "content": "hi"}], "top_k": NaN}',
    "top_k 2^63": b'{"messages": [{"role": "user", "content": "hi"}], "top_k": 9223372036854775808}',
    "seed 2^70": b'{"messages": [{"role": "user", "content": "hi"}], "seed": 1180591620717411303424}',
    "temperature -1": b'{"messages": [{"role": "user", "content": "hi"}], "temperature": -1}',
    "non-string part": b'{"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}',
    "image part": b'{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}',
    "number content": b'{"messages": [{"role": "user", "content": 5}]}',
    "5000 digits": b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": ' + b"9" * 5000 + b"}",
    "deep nesting": b'{"messages": ' + b"[" * 100000 + b"]" * 100000 + b"}",
    "not utf-8": b'{"messages": "\xff\xfe"}',
    "not an object": b"[1, 2, 3]",
    "not json": b"{nope",
    "empty messages": b'{"messages": []}',
    "assistant last": b'{"messages": [{"role": "assistant", "content": "x"}]}',
    "stream not bool": b'{"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}',
    "n 0": b'{"messages": [{"role": "user", "content": "hi"}], "n": 0}',
    "n 1000": b'{"messages": [{"role": "user", "content": "hi"}], "n": 1000}',
    "stop list of ints": b'{"messages": [{"role": "user", "content": "hi"}], "stop": [1]}',
    "tokens not ids": None,
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_every_malformed_body_gets_a_4xx_json_error(shared, case, capfd):
    srv = shared
    if case == "tokens not ids":
        req = _post_bytes("/detokenize", b'{"tokens": [1e308, -1, true]}')
    else:
        req = _post_bytes(CHAT, MALFORMED[case])
    [(status, _, body)] = _raw(srv, req)
    _is_error(status, body)
    assert "Traceback" not in capfd.readouterr().err


HEADER_CASES = {
    "negative length": b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                       b"Content-Length: -5\r\n\r\n",
    "length not a number": b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           b"Content-Length: 12abc\r\n\r\n",
    "two lengths": b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "chunked": b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "huge length": b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   b"Content-Length: 99999999999999999999999\r\n\r\n",
    "garbage request line": b"HELLO\r\n\r\n",
    "bad version": b"GET / HTTP/9.x\r\nHost: 127.0.0.1\r\n\r\n",
    "header line too long": b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX: " + b"a" * 70000
                           + b"\r\n\r\n",
    "PUT": b"PUT /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n",
}


@pytest.mark.parametrize("case", sorted(HEADER_CASES))
def test_malformed_requests_get_a_4xx_json_error(shared, case, capfd):
    srv = shared
    [(status, headers, body)] = _raw(srv, HEADER_CASES[case])
    _is_error(status, body)
    assert "Traceback" not in capfd.readouterr().err


# ----------------------------------------------------------------- OpenAI semantics
def _post(srv, path, body, headers=None):
    conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=60)
    conn.request("POST", path, body=json.dumps(body).encode(),
                 headers={"Content-Type": "application/json", **(headers or {})})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, dict((k.lower(), v) for k, v in r.getheaders()), data


def _events(data: bytes):
    out = []
    for block in data.decode().split("\n\n"):
        if block.startswith("data: ") and block != "data: [DONE]":
            out.append(json.loads(block[6:]))
    assert data.decode().rstrip().endswith("data: [DONE]")
    return out


@pytest.mark.parametrize("param, value", [
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
    ("tool_choice", "required"), ("functions", [{"name": "f"}]),
    ("response_format", {"type": "json_object"}),
    ("response_format", {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}),
    ("logit_bias", {"5": 10}), ("presence_penalty", 0.5), ("modalities", ["audio"]),
    ("top_logprobs", 3)])
def test_unsupported_parameters_are_a_400_naming_them(shared, param, value):
    srv = shared
    status, _, body = _post(srv, CHAT, {"messages": _msgs(FIRST), param: value})
    err = _is_error(status, body)
    assert status == 400 and err["param"] == param and param in err["message"]


def test_n_logprobs_and_usage(open_server, model):
    srv = open_server()
    base = {"messages": _msgs(FIRST), "temperature": 0}
    status, _, body = _post(srv, CHAT, dict(base, n=2, logprobs=True, top_logprobs=2))
    assert status == 200
    r = json.loads(body)
    assert [c["index"] for c in r["choices"]] == [0, 1]
    assert all(c["message"]["content"] == ANSWERS[FIRST] for c in r["choices"])
    content = r["choices"][0]["logprobs"]["content"]
    assert "".join(t["token"] for t in content) == ANSWERS[FIRST]
    assert all(t["logprob"] <= 0 and len(t["top_logprobs"]) == 2 for t in content)
    assert all(t["top_logprobs"][0]["token"] == t["token"] for t in content)   # greedy
    u = r["usage"]
    lone = model.chat(_msgs(FIRST), temperature=0, max_tokens=64)
    assert u["completion_tokens"] == 2 * len(lone.tokens)
    assert u["prompt_tokens"] == lone.prompt_tokens
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    # streamed: n=2, logprobs and the usage chunk
    status, headers, body = _post(srv, CHAT, dict(base, n=2, logprobs=True, stream=True,
                                                  stream_options={"include_usage": True}))
    assert status == 200 and headers["content-type"] == "text/event-stream"
    ev = _events(body)
    text = {0: "", 1: ""}
    toks = {0: "", 1: ""}
    for e in ev[:-1]:
        for c in e["choices"]:
            text[c["index"]] += c["delta"].get("content") or ""
            toks[c["index"]] += "".join(t["token"] for t in (c["logprobs"] or {}).get(
                "content", []))
    assert text == toks == {0: ANSWERS[FIRST], 1: ANSWERS[FIRST]}
    assert ev[-1]["choices"] == [] and ev[-1]["usage"] == u
    # completions: logprobs as an int, several prompts
    status, _, body = _post(srv, "/v1/completions",
                            {"prompt": [FIRST, "Why?"], "temperature": 0, "logprobs": 1,
                             "n": 2})
    r = json.loads(body)
    assert status == 200 and [c["index"] for c in r["choices"]] == [0, 1, 2, 3]
    assert r["choices"][0]["text"] == ANSWERS[FIRST]
    lp = r["choices"][0]["logprobs"]
    assert "".join(lp["tokens"]) == ANSWERS[FIRST] and lp["text_offset"][0] == 0
    assert all(len(t) == 1 for t in lp["top_logprobs"])


# ----------------------------------------------------------------- safety
def test_host_origin_guard_and_cors(open_server):
    srv = open_server()                        # loopback, no key: guarded
    port = srv.server_address[1]
    [(s, _, b)] = _raw(srv, b"GET /v1/models HTTP/1.1\r\nHost: evil.example:80\r\n\r\n")
    assert s == 403 and _is_error(s, b)["code"] == "host_not_allowed"
    [(s, _, _)] = _raw(srv, b"GET /v1/models HTTP/1.1\r\nHost: localhost:%d\r\n"
                            b"Origin: http://evil.example\r\n\r\n" % port)
    assert s == 403
    [(s, h, _)] = _raw(srv, b"GET /v1/models HTTP/1.1\r\nHost: localhost:%d\r\n"
                            b"Origin: http://localhost:%d\r\n\r\n" % (port, port))
    assert s == 200 and h["access-control-allow-origin"] == f"http://localhost:{port}"
    # the OpenAI JS SDK's preflight: its X-Stainless-* headers are allowed
    asked = b"authorization, content-type, x-stainless-os, x-stainless-retry-count"
    [(s, h, _)] = _raw(srv, b"OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                            b"Origin: http://127.0.0.1:%d\r\nAccess-Control-Request-Method: POST"
                            b"\r\nAccess-Control-Request-Headers: %s\r\n\r\n" % (port, port, asked))
    assert s == 204 and h["access-control-allow-headers"] == asked.decode()
    assert "POST" in h["access-control-allow-methods"]
    allowed = open_server(allow_hosts=["box.lan"])
    [(s, _, _)] = _raw(allowed, b"GET /v1/models HTTP/1.1\r\nHost: box.lan:8080\r\n\r\n")
    assert s == 200
    keyed = open_server(api_key="k")           # with a key the key is the guard
    [(s, _, _)] = _raw(keyed, b"GET /v1/models HTTP/1.1\r\nHost: box.lan\r\n"
                              b"Authorization: Bearer k\r\nOrigin: http://app.example\r\n\r\n")
    assert s == 200


# ----------------------------------------------------------------- load and time
def test_gate_queues_in_order_and_refuses_when_full():
    g = Gate(1, 64)
    g.enter(lambda: False)
    order, threads = [], []
    for i in range(64):
        def waiter(i=i):
            g.enter(lambda: False)
            order.append(i)
            g.leave()
        threads.append(threading.Thread(target=waiter))
        threads[-1].start()
        while g.busy["waiting"] < i + 1:
            time.sleep(0.001)
    with pytest.raises(ApiError) as e:
        g.enter(lambda: False)
    assert e.value.status == 503 and e.value.headers["Retry-After"]
    g.leave()
    [t.join(10) for t in threads]
    assert order == list(range(64)) and g.busy == {"running": 0, "waiting": 0}
    g.enter(lambda: False)
    gone = threading.Event()
    t = threading.Thread(target=lambda: pytest.raises(Exception, g.enter, gone.is_set))
    t.start()
    while g.busy["waiting"] < 1:
        time.sleep(0.001)
    gone.set()                               # a waiting client leaves: its place is freed
    t.join(5)
    assert g.busy == {"running": 1, "waiting": 0}


def test_slowloris_connections_are_cut_and_health_keeps_answering(open_server):
    srv = open_server(header_timeout=2.0, body_timeout=2.0)
    host, port = srv.server_address[:2]
    socks = []
    for i in range(400):
        s = socket.create_connection((host, port), timeout=10)
        if i % 2:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        else:                                   # headers done, the body never finishes
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Content-Length: 100\r\n\r\n{\"mess")
        socks.append(s)
    t0 = time.monotonic()
    [(status, _, body)] = _raw(srv, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                               timeout=5)
    assert status == 200 and time.monotonic() - t0 < 2
    time.sleep(2.5)
    closed = 0
    for s in socks:
        s.settimeout(5)
        try:
            while s.recv(65536):                # a 408 or nothing, then the end
                pass
            closed += 1
        except ConnectionResetError:
            closed += 1
        finally:
            s.close()
    assert closed == 400


class _SlowModel:
    """The real model, slowed down to a few tokens a second (through the cancel hook the
    server passes), recording how each answer ended."""

    def __init__(self, model, delay=0.02):
        self.model, self.delay, self.ended, self.polls = model, delay, [], 0
        self.tokenizer = model.tokenizer

    def _slow(self, cancel):
        def hook():
            self.polls += 1
            time.sleep(self.delay)
            return cancel()
        return hook

    def chat(self, messages, cancel, **kw):
        c = self.model.chat(messages, cancel=self._slow(cancel), **kw)
        self.ended.append(c)
        return c

    def chat_stream(self, messages, cancel, **kw):
        s = self.model.chat_stream(messages, cancel=self._slow(cancel), **kw)
        self.ended.append(s)
        return s


def test_a_full_queue_answers_503_with_retry_after(open_server, model):
    slow = _SlowModel(model, delay=0.5)
    srv = open_server(model=slow, parallel=1, queue=64)
    body = _post_bytes(CHAT, json.dumps({"messages": _msgs(FIRST), "temperature": 0,
                                         "max_tokens": 64}).encode())
    socks = []
    try:
        for _ in range(65):                       # one generating, 64 waiting
            s = socket.create_connection(srv.server_address[:2], timeout=30)
            s.sendall(body)
            socks.append(s)
        _until_waiting = time.monotonic() + 20
        while srv.gate.busy != {"running": 1, "waiting": 64}:
            assert time.monotonic() < _until_waiting, srv.gate.busy
            time.sleep(0.05)
        [(status, headers, data)] = _raw(srv, body)
        assert status == 503 and int(headers["retry-after"]) > 0
        assert _is_error(status, data, 503, 503)["code"] == "server_busy"
    finally:
        for s in socks:
            s.close()
    end = time.monotonic() + 20                   # the clients left: their places are freed
    while srv.gate.busy != {"running": 0, "waiting": 0}:
        assert time.monotonic() < end, srv.gate.busy
        time.sleep(0.05)


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_leaves_stops_its_generation(open_server, model, stream, capfd):
    slow = _SlowModel(model, delay=0.02 if stream else 0.2)
    srv = open_server(model=slow, parallel=1, max_tokens_cap=256)
    kw = dict(temperature=3.0, top_k=0, top_p=1.0, min_p=0.0, max_tokens=256)
    seed = next(s for s in range(40)            # a seed whose answer rambles on
                if len(model.chat(_msgs("tell me everything"), seed=s, **kw).tokens) > 100)
    body = json.dumps({"messages": _msgs("tell me everything"), "seed": seed, "stream": stream,
                       **kw}).encode()
    s = socket.create_connection(srv.server_address[:2], timeout=30)
    s.sendall(_post_bytes(CHAT, body))
    if stream:
        got = b""
        while got.count(b"data: ") < 5:           # a few pieces, then the client leaves
            got += s.recv(4096)
        assert got.startswith(b"HTTP/1.1 200")
    else:
        time.sleep(0.5)
    s.close()
    deadline = time.monotonic() + 20
    polls = -1
    while time.monotonic() < deadline and polls != slow.polls:   # until generation stops
        polls = slow.polls
        time.sleep(1.0)
    assert polls == slow.polls and 0 < polls < 100 / (1 if stream else 16)
    end = slow.ended[0]
    c = end.completion if stream else end
    # a streamed answer ends at the failed write (closed) or at the hook (cancelled)
    assert (c is None and stream) or c.stop_reason == "cancelled"
    # the slot is free again: the next request is served at once
    status, _, body = _post(srv, CHAT, {"messages": _msgs(FIRST), "temperature": 0})
    assert status == 200
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipe" not in err


def _stream_once(addr, prompt):
    conn = http.client.HTTPConnection(*addr, timeout=120)
    conn.request("POST", CHAT, body=json.dumps({"messages": _msgs(prompt), "temperature": 0,
                                                "stream": True}).encode(),
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    if r.status != 200:
        raise AssertionError(f"status {r.status}: {data[:200]!r}")
    return "".join(c["delta"].get("content") or "" for e in _events(data)
                   for c in e["choices"])


def _many_streaming_clients(srv, clients: int, seconds: float):
    addr = srv.server_address[:2]
    prompts = list(ANSWERS) + ["What color is the sky?", "And at night?"]
    lone = {p: _stream_once(addr, p) for p in prompts}
    assert lone[FIRST] == ANSWERS[FIRST]
    stop = time.monotonic() + seconds
    counts, errors = [0] * clients, []

    def client(i):
        k = 0
        while time.monotonic() < stop:
            p = prompts[(i + k) % len(prompts)]
            k += 1
            try:
                got = _stream_once(addr, p)
            except Exception as exc:  # resets, refusals, timeouts: all count
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            if got != lone[p]:
                errors.append(f"answer to {p!r} differs: {got!r}")
            counts[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    [t.start() for t in threads]
    [t.join(seconds + 120) for t in threads]
    assert not errors, (len(errors), errors[:5])
    assert all(c > 0 for c in counts), counts
    [(status, _, _)] = _raw(srv, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert status == 200
    return sum(counts)


def test_64_streaming_clients(open_server):
    srv = open_server()
    assert _many_streaming_clients(srv, 64, 15) >= 64


@pytest.mark.slow
def test_64_streaming_clients_for_a_minute(open_server):
    srv = open_server()
    assert _many_streaming_clients(srv, 64, 60) >= 64


def _rss_kb() -> int:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_rss_stays_flat_over_2000_requests(open_server):
    srv = open_server()
    conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=60)
    bodies = [("POST", CHAT, {"messages": _msgs(FIRST), "temperature": 0, "max_tokens": 8}),
              ("POST", "/v1/embeddings", {"input": "x"}),
              ("POST", CHAT, {"messages": _msgs("Why?"), "max_tokens": 8, "logprobs": True,
                              "top_logprobs": 2}),
              ("GET", "/health", None),
              ("POST", CHAT, {"messages": [], "x": "y" * 1000})]

    def run(n):
        for i in range(n):
            method, path, body = bodies[i % len(bodies)]
            conn.request(method, path, body=None if body is None else json.dumps(body).encode(),
                         headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            assert r.status in (200, 400, 404)

    run(300)                                   # warm up caches and allocator pools
    before = _rss_kb()
    run(2000)
    grown = (_rss_kb() - before) / 1024
    conn.close()
    assert grown < 20, f"RSS grew by {grown:.1f} MB over 2,000 requests"


def test_serve_command(trained):
    import signal
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    p = subprocess.Popen([sys.executable, "-m", "poppins", "serve", "-m", str(trained),
                          "--port", "0", "--parallel", "2"],
                         env=dict(os.environ, PYTHONPATH=str(repo)), stderr=subprocess.PIPE,
                         text=True)
    try:
        line = p.stderr.readline()
        url = line.split(" on ")[1].split()[0]
        host, port = url.split("//")[1].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        conn.request("POST", CHAT, body=json.dumps({"messages": _msgs(FIRST),
                                                    "temperature": 0}).encode(),
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        assert r.status == 200
        assert json.loads(r.read())["choices"][0]["message"]["content"] == ANSWERS[FIRST]
        conn.close()
    finally:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
    assert p.returncode == 0 and "Traceback" not in err
    bad = subprocess.run([sys.executable, "-m", "poppins", "serve", "-m", str(trained),
                          "--queue", "3"], env=dict(os.environ, PYTHONPATH=str(repo)),
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "--queue must be at least 64" in bad.stderr
    assert "Traceback" not in bad.stderr
