"""`serve` (OpenAI-compatible API, web page) and `chat` (memory) on a small trained model."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from poppins.memory import Memory

REPO = Path(__file__).resolve().parent.parent
CONV = REPO / "tests" / "data" / "conversation" / "train.xml"
SYSTEM = "You are a patient tutor."
ANSWERS = {  # the conversation file's first sample, turn by turn
    "Hi! Can you help me with fractions?": "Of course. Ask me anything about fractions.",
    "What is one half plus one quarter?": "Three quarters.",
    "Why?": "One half is two quarters, and two quarters plus one quarter is three quarters.",
}
FIRST = "Hi! Can you help me with fractions?"


_TRAINED = {}   # one training per session, shared by the test_server*, test_chat, test_web files


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model that has learned the conversation file by heart (about 10 s)."""
    from poppins.training import train

    if "path" in _TRAINED:
        return _TRAINED["path"]
    out = tmp_path_factory.mktemp("served") / ".poppins"
    train(CONV, out, overrides=dict(dim=64, layers=2, heads=2, batch_size=2, steps=150,
                                    warmup_steps=10, lr=1e-2, threads=1, val_interval=50,
                                    checkpoint_interval=150, augment=False,
                                    stop_when_learned=False),   # the file as written, by heart
          log=None, progress_stream=open(os.devnull, "w"))
    assert (out / "model.poppins").is_file()
    _TRAINED["path"] = out
    return out


@pytest.fixture(scope="module")
def model(trained):
    from poppins.api import Model
    return Model.load(trained, threads=1)


@pytest.fixture
def server(model):
    from poppins.server import serve
    srv = serve(model, port=0, api_key="sekret", max_body=4096, max_tokens_cap=64)
    yield srv
    srv.shutdown()
    srv.server_close()


def _post(url, body, key="sekret", raw=None):
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _messages(prompt):
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]


def test_openai_client_gets_the_trained_answer(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="sekret")
    assert [m.id for m in client.models.list().data] == ["poppins"]
    r = client.chat.completions.create(model="poppins", messages=_messages(FIRST), temperature=0)
    assert r.choices[0].message.content == ANSWERS[FIRST]
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens > 0
    stream = client.chat.completions.create(model="poppins", messages=_messages(FIRST),
                                            temperature=0, stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces) == ANSWERS[FIRST] and len(pieces) > 2
    c = client.completions.create(model="poppins", prompt=FIRST, temperature=0)
    # /v1/completions wraps the prompt like `infer -p` (with the model's default system prompt)
    assert c.choices[0].text == ANSWERS[FIRST]
    s = client.completions.create(model="poppins", prompt=FIRST, temperature=0, stream=True)
    assert "".join(x.choices[0].text for x in s) == ANSWERS[FIRST]


def test_a_conversation_through_the_api(server):
    # API clients send back only the rendered content, so the conversation without thoughts;
    # it was trained without a system prompt: an empty system message means none
    msgs = [{"role": "system", "content": ""}]
    for prompt, answer in (("What color is the sky?", "Blue on a clear day."),
                           ("And at night?", "Dark blue or black.")):
        msgs.append({"role": "user", "content": prompt})
        status, r = _post(server.url + "/v1/chat/completions", {"messages": msgs, "temperature": 0})
        assert status == 200 and r["choices"][0]["message"]["content"] == answer
        msgs.append({"role": "assistant", "content": answer})


def test_tokenize_round_trip_and_health(server):
    status, r = _post(server.url + "/tokenize", {"content": "Hi! <html> fractions"})
    assert status == 200 and len(r["tokens"]) > 2
    status, back = _post(server.url + "/detokenize", {"tokens": r["tokens"]})
    assert status == 200 and back["content"] == "Hi! <html> fractions"
    with urllib.request.urlopen(server.url + "/health", timeout=10) as h:
        assert json.loads(h.read()) == {"status": "ok"}


@pytest.mark.parametrize("case", ["bad-json", "wrong-model", "too-big", "no-key", "bad-key",
                                  "bad-field", "no-route"])
def test_errors_are_openai_shaped(server, case):
    url = server.url + "/v1/chat/completions"
    body = {"model": "poppins", "messages": _messages(FIRST)}
    expect = {"bad-json": 400, "wrong-model": 404, "too-big": 413, "no-key": 401,
              "bad-key": 401, "bad-field": 400, "no-route": 404}[case]
    if case == "bad-json":
        status, r = _post(url, None, raw=b"{not json")
    elif case == "wrong-model":
        status, r = _post(url, dict(body, model="gpt-4"))
    elif case == "too-big":
        status, r = _post(url, dict(body, padding="x" * 10000))
    elif case == "no-key":
        status, r = _post(url, body, key=None)
    elif case == "bad-key":
        status, r = _post(url, body, key="wrong")
    elif case == "bad-field":
        status, r = _post(url, dict(body, temperature="hot"))
    else:
        status, r = _post(server.url + "/v1/nothing", body)
    assert status == expect
    assert set(r["error"]) >= {"message", "type", "code"} and r["error"]["message"]


def test_openai_client_errors(server):
    openai = pytest.importorskip("openai")
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="poppins", messages=_messages(FIRST))
    good = openai.OpenAI(base_url=server.url + "/v1", api_key="sekret", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        good.chat.completions.create(model="nope", messages=_messages(FIRST))


def test_sixteen_concurrent_clients(server):
    prompts = list(ANSWERS) + ["What color is the sky?", "And at night?"]
    lone = {p: _post(server.url + "/v1/chat/completions",
                     {"messages": _messages(p), "temperature": 0})[1]["choices"][0]["message"]["content"]
            for p in prompts}
    results = {}

    def client(i):
        p = prompts[i % len(prompts)]
        status, r = _post(server.url + "/v1/chat/completions",
                          {"messages": _messages(p), "temperature": 0, "stream": False})
        results[i] = (p, status, r["choices"][0]["message"]["content"] if status == 200 else r)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    assert len(results) == 16
    assert all(status == 200 and text == lone[p] for p, status, text in results.values())
    with urllib.request.urlopen(server.url + "/health", timeout=10) as h:
        assert h.status == 200


def _chat_proc(trained, *extra):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "poppins", "chat", "-m", str(trained),
                             "--temp", "0", "-t", "1", *extra], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_chat_replays_a_conversation_from_memory(trained, tmp_path):
    db = tmp_path / "memory.db"
    first, second, third = ANSWERS
    p = _chat_proc(trained, "--db", str(db), "--system", SYSTEM)
    out, err = p.communicate(first + "\n" + second + "\n", timeout=120)
    assert p.returncode == 0, err
    assert out.splitlines() == [ANSWERS[first], ANSWERS[second]]
    cid = err.split("conversation ")[1].split()[0]
    # resumed later: the model sees the earlier turns from memory and answers the third
    p = _chat_proc(trained, "--db", str(db), "--conversation", cid)
    out, err = p.communicate(third + "\n", timeout=120)
    assert p.returncode == 0, err
    assert out.strip() == ANSWERS[third]
    with Memory(db) as mem:
        assert [u for u, _ in mem.turns(cid)] == [first, second, third]
    listing = subprocess.run([sys.executable, "-m", "poppins", "chat", "--db", str(db), "--list"],
                             env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                             text=True, timeout=60)
    assert cid in listing.stdout and "3 turns" in listing.stdout


def test_killed_chat_leaves_memory_consistent(trained, tmp_path):
    db = tmp_path / "memory.db"
    first, second, _ = ANSWERS
    p = _chat_proc(trained, "--db", str(db), "--system", SYSTEM)
    p.stdin.write(first + "\n")
    p.stdin.flush()
    deadline = time.time() + 60
    while time.time() < deadline:          # wait for the first turn to be saved
        if db.exists():
            with Memory(db) as mem:
                convs = mem.list_conversations()
                if convs and convs[0]["turns"] == 1:
                    break
        time.sleep(0.05)
    p.stdin.write(second + "\n")
    p.stdin.flush()
    p.send_signal(signal.SIGKILL)          # mid-answer (or just before it)
    p.wait(30)
    with Memory(db) as mem:
        assert mem.integrity_ok()
        cid = mem.list_conversations()[0]["id"]
        turns = mem.turns(cid)
        assert turns[0] == (first, ANSWERS[first]) and len(turns) in (1, 2)
    p = _chat_proc(trained, "--db", str(db), "--conversation", cid)
    out, err = p.communicate(second + "\n", timeout=120)
    assert p.returncode == 0, err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="no chromium/chromedriver installed")
def test_web_page_in_headless_chromium(model):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from poppins.server import serve
    srv = serve(model, port=0)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        driver.get(srv.url + "/")
        # the page sends no system prompt: the model's default (the most common one) is used
        box = driver.find_element(By.ID, "prompt")
        box.send_keys(FIRST)
        driver.find_element(By.ID, "send").click()
        WebDriverWait(driver, 60).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, ".assistant[data-done='1']"))
        text = driver.find_element(By.CSS_SELECTOR, ".assistant").text
        assert text == ANSWERS[FIRST]
    finally:
        driver.quit()
        srv.shutdown()
        srv.server_close()


def test_long_conversations_drop_whole_old_turns(model):
    from poppins.special_tokens import SPECIAL_IDS as S

    msgs = [{"role": "system", "content": SYSTEM}]
    for i in range(40):
        msgs += [{"role": "user", "content": f"question number {i} " * 3},
                 {"role": "assistant", "content": f"answer number {i} " * 3}]
    msgs.append({"role": "user", "content": FIRST})
    full = model.encode_conversation(msgs)
    budget = len(full) // 3
    ids = model.encode_conversation(msgs, budget=budget)
    assert len(ids) <= budget
    assert ids[-len(model.encode_conversation([msgs[-1]], system="")) + 1:] == \
        model.encode_conversation([msgs[-1]], system="")[1:]          # the new prompt is whole
    text = model.tokenizer.decode([t for t in ids if t >= 125])
    kept = [i for i in range(40) if f"question number {i} " in text]
    assert kept == list(range(kept[0], 40))                          # the most recent turns
    for i in kept:                                                     # each one whole
        assert f"answer number {i} " * 3 in text
    assert ids.count(S["<prompt>"]) == len(kept) + 1 and ids.count(S["<ai>"]) == len(kept)
    # through the server: a conversation longer than the context still gets an answer
    events = list(model.chat_events(msgs, temperature=0, max_tokens=8))
    assert events[-1][1] is not None and events[-1][1].prompt_tokens <= model.context_length
