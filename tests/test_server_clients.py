"""Real OpenAI clients against the server: the official ``openai`` package, ``llm`` and
``langchain-openai`` (test extras; each test skips without its client, fails under POPPINS_REQUIRE_CLIENTS=1)."""
from __future__ import annotations

import pytest

from _peers import need_module
from poppins.server import serve
from test_server import ANSWERS, FIRST, SYSTEM, model, trained  # noqa: F401  (fixtures)


def _msgs(p):
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": p}]


@pytest.fixture(scope="module")
def server(model):
    srv = serve(model, port=0, api_key="sekret", max_tokens_cap=64)
    yield srv
    srv.shutdown()
    srv.server_close()


def test_openai_client_n_logprobs_usage_and_tools(server):
    openai = need_module("clients", "openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="sekret", max_retries=0)
    r = client.chat.completions.create(model="poppins", messages=_msgs(FIRST), temperature=0,
                                       n=2, logprobs=True, top_logprobs=3)
    assert [c.message.content for c in r.choices] == [ANSWERS[FIRST]] * 2
    lp = r.choices[1].logprobs.content
    assert "".join(t.token for t in lp) == ANSWERS[FIRST]
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in lp)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    chunks = list(client.chat.completions.create(
        model="poppins", messages=_msgs(FIRST), temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) \
        == ANSWERS[FIRST]
    assert chunks[-1].usage.completion_tokens * 2 == r.usage.completion_tokens
    c = client.completions.create(model="poppins", prompt=FIRST, temperature=0, logprobs=2)
    assert c.choices[0].text == ANSWERS[FIRST] and len(c.choices[0].logprobs.tokens) > 3
    tool = {"type": "function", "function": {"name": "add", "description": "add",
                                             "parameters": {"type": "object",
                                                            "properties": {}}}}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="poppins", messages=_msgs(FIRST), tools=[tool])
    assert "tools" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="poppins", messages=_msgs(FIRST),
                                       response_format={"type": "json_object"})
    assert "response_format" in str(e.value)
    # an error on a kept-alive connection does not spoil the next request (issue 14)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="poppins", input="hello")
    again = client.chat.completions.create(model="poppins", messages=_msgs(FIRST),
                                           temperature=0)
    assert again.choices[0].message.content == ANSWERS[FIRST]


def test_llm_gets_answers_usage_logprobs_and_tools(server, tmp_path, monkeypatch):
    llm = need_module("clients", "llm")
    (tmp_path / "extra-openai-models.yaml").write_text(
        f"- model_id: poppins-test\n  model_name: poppins\n  api_base: {server.url}/v1\n"
        f"  api_key_name: poppins\n  supports_tools: true\n"
        f"- model_id: poppins-test-completion\n  model_name: poppins\n"
        f"  api_base: {server.url}/v1\n  api_key_name: poppins\n  completion: true\n")
    monkeypatch.setenv("LLM_USER_PATH", str(tmp_path))
    monkeypatch.setenv("LLM_POPPINS_KEY", "sekret")
    m = llm.get_model("poppins-test")
    r = m.prompt(FIRST, system=SYSTEM, key="sekret", temperature=0)
    assert r.text() == ANSWERS[FIRST]
    u = r.usage()
    assert u.input > 0 and u.output > 0                  # streamed, with include_usage
    r = m.prompt(FIRST, system=SYSTEM, key="sekret", temperature=0, stream=False)
    assert r.text() == ANSWERS[FIRST] and r.usage().output == u.output
    # llm's tools reach the server as OpenAI `tools`: a clear 400 naming them, not plain text
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b
    openai = need_module("clients", "openai")
    with pytest.raises(openai.BadRequestError, match="tools"):
        m.prompt(FIRST, system=SYSTEM, key="sekret", tools=[add]).text()
    # llm's completion models take `logprobs`; they come back per token
    c = llm.get_model("poppins-test-completion")
    r = c.prompt(FIRST, key="sekret", temperature=0, logprobs=2, stream=False)
    assert r.text() == ANSWERS[FIRST]
    lp = r.json()["choices"][0]["logprobs"]
    assert "".join(lp["tokens"]) == ANSWERS[FIRST]
    assert all(len(t) == 2 for t in lp["top_logprobs"])


def test_langchain_chat_openai(server):
    lc = need_module("clients", "langchain_openai")
    openai = need_module("clients", "openai")
    from langchain_core.messages import HumanMessage, SystemMessage

    chat = lc.ChatOpenAI(base_url=server.url + "/v1", api_key="sekret", model="poppins",
                         temperature=0, max_retries=0)
    msgs = [SystemMessage(SYSTEM), HumanMessage(FIRST)]
    r = chat.invoke(msgs)
    assert r.content == ANSWERS[FIRST] and r.usage_metadata["output_tokens"] > 0
    streamed = lc.ChatOpenAI(base_url=server.url + "/v1", api_key="sekret", model="poppins",
                             temperature=0, max_retries=0, stream_usage=True)
    total = None
    for chunk in streamed.stream(msgs):
        total = chunk if total is None else total + chunk
    assert total.content == ANSWERS[FIRST]
    assert total.usage_metadata["output_tokens"] == r.usage_metadata["output_tokens"]
    two = lc.ChatOpenAI(base_url=server.url + "/v1", api_key="sekret", model="poppins",
                        temperature=0, max_retries=0, n=2, logprobs=True)
    gen = two.generate([msgs])
    assert [g.text for g in gen.generations[0]] == [ANSWERS[FIRST]] * 2
    assert gen.generations[0][0].generation_info["logprobs"]["content"]
    with pytest.raises(openai.BadRequestError, match="tools"):
        chat.bind_tools([{"type": "function", "function": {
            "name": "add", "description": "add two numbers",
            "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}}]
        ).invoke(msgs)
    with pytest.raises(openai.BadRequestError, match="response_format"):
        chat.with_structured_output({"title": "Answer", "type": "object",
                                     "properties": {"text": {"type": "string"}},
                                     "required": ["text"]}, method="json_schema").invoke(msgs)
