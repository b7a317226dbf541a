"""The GGUF export against llama.cpp (the copy vendored in llama-cpp-python 0.3.36, built by
scripts/llama_cpp.sh into a cache outside the tree; CI builds it in a phase of its own).

Skips when that build is absent, unless POPPINS_REQUIRE_LLAMA_CPP=1 (CI), which turns the
skip into a failure.  On the example and on a d=256 model (TQ2_0 rows): the file loads,
llama.cpp's tokenizer gives our ids on multi-script text, greedy answer ids equal poppins'
on >= 95 % of the training prompts, and llama-server's chat endpoint with the embedded
template gives the trained answer.  Also re-checks the facts the export relies on in the
vendored sources (arcee = squared-ReLU sequential FFN, rope type NORM)."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from _peers import missing, need_module
from poppins.corpus import tokens as T
from poppins.special_tokens import SPECIAL_TOKENS
from poppins.export.compare import agreement, describe, poppins_greedy, training_prompts

need_module("llama_cpp", "gguf")

from test_export import MAX_NEW, trained  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "llama_cpp.sh"
VARIANT = os.environ.get("POPPINS_LLAMA_CPP_VARIANT", "native")
TEXTS = [
    "Hello, world! How are you today?",
    "Grüße aus München: Straße, Äpfel, naïve café.",
    "Привет, мир! Как дела?",
    "こんにちは世界。日本語のテキストです。",
    "你好，世界！这是中文。",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "Emoji 🙂👍🏽 and numbers 1234567 3.14159",
    "def f(x):\n    return x ** 2  # code\n\n\tindented",
    "  leading spaces,   runs   of spaces and trailing  ",
    "python -m poppins train <!DOCTYPE html> mixed <b>tags</b>",
]


def _bin_dir() -> Path:
    r = subprocess.run(["bash", str(SCRIPT), VARIANT, "--check"], capture_output=True, text=True)
    if r.returncode == 0:
        return Path(r.stdout.strip().splitlines()[-1])
    msg = (f"llama.cpp build absent ({r.stderr.strip()}); build it with "
           f"scripts/llama_cpp.sh {VARIANT}")
    missing("llama_cpp", msg)


@pytest.fixture(scope="module")
def llama_bin() -> Path:
    return _bin_dir()


@pytest.fixture(scope="module", params=["example", "d256"])
def exported(request, llama_bin, tmp_path_factory):
    from poppins.export.gguf import write_gguf
    out = trained(request.param)
    path = tmp_path_factory.mktemp("gguf") / f"{request.param}.gguf"
    t0 = time.perf_counter()
    rep = write_gguf(out, path)
    took = time.perf_counter() - t0
    print(f"\n{request.param}: {path.name} {rep['bytes']} bytes beside model.poppins "
          f"{(out / 'model.poppins').stat().st_size} bytes, exported in {took:.2f} s; types "
          f"{sorted(set(rep['types'].values()))}")
    assert took < 10
    if request.param == "d256":
        assert set(t for n, t in rep["types"].items() if n.startswith("blk.")
                   and not n.endswith("norm.weight")) == {"TQ2_0"}
    return request.param, out, path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url, body, timeout=120):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def server(exported, llama_bin):
    name, out, path = exported
    port = _free_port()
    from poppins.engine.config import ModelConfig
    from poppins.engine.modelfile import load_model_file
    ctx = ModelConfig.from_dict(load_model_file(out / "model.poppins").config).context_length
    log = open(path.with_suffix(".server.log"), "w")
    proc = subprocess.Popen([str(llama_bin / "llama-server"), "-m", str(path), "--host",
                             "127.0.0.1", "--port", str(port), "-c", str(ctx), "-np", "1",
                             "-t", "2", "--jinja"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                log.flush()
                pytest.fail(f"llama-server exited ({proc.returncode}): "
                            + path.with_suffix(".server.log").read_text()[-2000:])
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.time() > deadline:
                pytest.fail("llama-server did not become ready in 120 s")
            time.sleep(0.5)
        yield name, out, url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_vendored_arcee_facts(llama_bin):
    """The export's assumptions, re-checked in the vendored tree the binaries came from."""
    src = llama_bin.parent / "src"
    if not (src / "src").is_dir():
        pytest.skip("the cached build has no copy of the sources")
    arcee = (src / "src" / "models" / "arcee.cpp").read_text()
    assert "LLM_FFN_RELU_SQR, LLM_FFN_SEQ" in arcee          # up -> relu^2 -> down, no gate
    assert "LLM_NORM_RMS" in arcee and "TENSOR_DUPLICATED" in arcee   # RMSNorm, tied head
    assert "create_tensor_qkv" in arcee
    model = (src / "src" / "llama-model.cpp").read_text()
    # in llama_model_rope_type: the case list that ends in "return LLAMA_ROPE_TYPE_NORM"
    m = re.search(r"((?:\s*case LLM_ARCH_\w+:)+)\s*return LLAMA_ROPE_TYPE_NORM;", model)
    blocks = re.findall(r"((?:\s*case LLM_ARCH_\w+:)+)\s*return LLAMA_ROPE_TYPE_(\w+);", model)
    kinds = {c.strip(): kind for cases, kind in blocks for c in cases.split("\n") if c.strip()}
    assert m and kinds.get("case LLM_ARCH_ARCEE:") == "NORM"


def test_tokenizer_gives_our_ids(server):
    from poppins.tokenizer import Tokenizer
    name, out, url = server
    tok = Tokenizer.from_file(out)
    for text in TEXTS:
        ours = tok.encode(text, special=False).tolist()
        r = _post(url + "/tokenize", {"content": text, "add_special": False,
                                      "parse_special": False})
        assert r["tokens"] == ours, text


def test_greedy_answers_equal_ours(server):
    from poppins.engine.runtime import Engine
    name, out, url = server
    engine = Engine.load(out / "model.poppins", threads=1)
    prompts = training_prompts(out)
    ours = [poppins_greedy(engine, p, MAX_NEW) for p in prompts]
    theirs = []
    for p, a in zip(prompts, ours):
        r = _post(url + "/completion", {"prompt": p, "n_predict": len(a), "temperature": 0,
                                        "top_k": 1, "return_tokens": True,
                                        "cache_prompt": False, "samplers": ["top_k"]})
        got = list(r["tokens"])
        # llama-server leaves the end-of-generation token out of "tokens"
        if r.get("stop_type") == "eos" and a and a[-1] in T.STOP_IDS and len(got) == len(a) - 1:
            got.append(a[-1])
        theirs.append(got)
    rep = agreement(ours, theirs)
    print("\n" + describe(rep, f"llama.cpp ({name})"))
    assert rep["share"] >= 0.95, describe(rep, "llama.cpp")


def test_chat_endpoint_uses_the_embedded_template(server):
    """The embedded chat template renders OpenAI-style messages (no system message, a system
    message, an empty one, a conversation) into exactly our token layout, and
    /v1/chat/completions answers with what llama.cpp's own greedy decoding of that layout gives,
    stopping at the end of the answer.  (Whether llama.cpp's greedy answers equal ours is
    test_greedy_answers_equal_ours' share: its per-256-block activation quantization can flip a
    near tie, so one exact answer is not a fair test of the template.)"""
    from poppins.api import Model
    name, out, url = server
    m = Model.load(out, threads=1)
    tok = m.tokenizer
    texts = []
    for p in training_prompts(out)[:6]:
        # the prompt text: between <prompt><text> and </text></prompt> of the stream
        i = p.index(T.PROMPT)
        texts.append(tok.decode(p[i + 2:-2]))
    conversations = [[{"role": "user", "content": t}] for t in texts]
    conversations += [
        [{"role": "system", "content": "You are a helpful assistant."},
         {"role": "user", "content": texts[0]}],
        [{"role": "system", "content": ""}, {"role": "user", "content": texts[1]}],
        [{"role": "user", "content": texts[0]}, {"role": "assistant", "content": "Fine."},
         {"role": "user", "content": texts[1]}],
    ]
    stopped = 0
    for msgs in conversations:
        rendered = _post(url + "/apply-template", {"messages": msgs})["prompt"]
        ids = _post(url + "/tokenize", {"content": rendered, "add_special": True,
                                        "parse_special": True})["tokens"]
        assert ids == m.encode_conversation(msgs), (msgs, rendered)
        r = _post(url + "/v1/chat/completions",
                  {"messages": msgs, "temperature": 0, "max_tokens": MAX_NEW,
                   "cache_prompt": False})
        got = r["choices"][0]["message"]["content"]
        ref = _post(url + "/completion", {"prompt": ids, "n_predict": MAX_NEW,
                                          "temperature": 0, "top_k": 1, "samplers": ["top_k"],
                                          "cache_prompt": False, "return_tokens": True})
        # llama.cpp prints no control token: the answer's text tokens (thoughts included)
        want = tok.decode([t for t in ref["tokens"] if t >= len(SPECIAL_TOKENS)])
        assert got == want, msgs
        if r["choices"][0]["finish_reason"] == "stop":
            assert ref.get("stop_type") == "eos", msgs
            stopped += 1
    assert stopped >= len(conversations) // 2       # answers end at </ai>, not at max_tokens
