"""The Hugging Face export against transformers (CPU torch, the oracle of CI): the folder
loads as ArceeForCausalLM, its greedy answers equal poppins' on >= 95 % of the training
prompts, and ``apply_chat_template`` gives our token layout."""
from __future__ import annotations

import json
import time

import pytest

from poppins.corpus import tokens as T
from poppins.export.template import chat_template
from poppins.export.compare import agreement, describe, poppins_greedy, training_prompts

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from test_export import MAX_NEW, trained  # noqa: E402


@pytest.fixture(scope="module", params=["example", "d256"])
def exported(request, tmp_path_factory):
    from poppins.export.hf import export_hf
    out = trained(request.param)
    hf = tmp_path_factory.mktemp("hf") / request.param
    t0 = time.perf_counter()
    export_hf(out, hf)
    assert time.perf_counter() - t0 < 10
    return request.param, out, hf


def test_transformers_greedy_answers_equal_ours(exported):
    from poppins.engine.runtime import Engine
    name, out, hf = exported
    model = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    assert type(model).__name__ == "ArceeForCausalLM"
    model.eval()
    engine = Engine.load(out / "model.poppins", threads=1)
    prompts = training_prompts(out)
    ours = [poppins_greedy(engine, p, MAX_NEW) for p in prompts]
    theirs = []
    torch.set_num_threads(1)
    with torch.no_grad():
        for p, a in zip(prompts, ours):
            # one teacher-forced pass: transformers' greedy answer equals ours exactly up to
            # the first position where its argmax (given our prefix) differs from our token
            logits = model(torch.tensor([p + a[:-1]])).logits[0, len(p) - 1:]
            pick = logits.argmax(-1).tolist()
            n = next((i for i, (x, y) in enumerate(zip(pick, a)) if x != y), len(a))
            theirs.append(a[:n] + pick[n:n + 1])
    rep = agreement(ours, theirs)
    print("\n" + describe(rep, f"transformers ({name})"))
    assert rep["share"] >= 0.95, describe(rep, "transformers")


def test_apply_chat_template_gives_our_layout(exported):
    from poppins.api import Model
    _name, out, hf = exported
    tok = transformers.AutoTokenizer.from_pretrained(hf)
    m = Model.load(out, threads=1)
    convs = [
        [{"role": "user", "content": "Hello there, what is 2+2?"}],
        [{"role": "system", "content": "Be brief. Très bref, 简短."},
         {"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."},
         {"role": "user", "content": "Why?  Ça va?\n\tok"}],
        [{"role": "system", "content": ""}, {"role": "user", "content": "No system."}],
    ]
    for msgs in convs:
        ids = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        assert list(ids) == m.encode_conversation(msgs), msgs
    cfg = json.loads((hf / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == chat_template(m.default_system)
    # the tokenizer_config.json written by train carries the template too
    assert "chat_template" in json.loads((out / "tokenizer_config.json").read_text())
