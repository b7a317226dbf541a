"""Seeded fuzzing of poppins' binary formats and tokenizer.json (scripts/fuzz.py's cases).

Every mutated model file, checkpoint and tokenizer.json must load and run or raise a
PoppinsError naming the file, within 10 s, leaving the file as it was.  ``make fuzz`` runs
the same generators over 10^5 cases."""
from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent.parent / "scripts" / "fuzz.py"


def load_fuzz():
    spec = importlib.util.spec_from_file_location("poppins_fuzz", FUZZ)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


fuzz = load_fuzz()


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return fuzz.make_fixture(tmp_path_factory.mktemp("fuzz-fixture"))


def run_kind(kind: str, fx, work: Path, n: int, seed: int = 1) -> dict:
    counts = {"ok": 0, "error": 0, "fail": 0}
    failures = []
    for i in range(n):
        case = fuzz.gen_case(kind, fx, random.Random(f"{seed}:{kind}:{i}"))
        outcome, detail = fuzz.run_case(kind, case, fx, work)
        counts[outcome] += 1
        if outcome == "fail":
            failures.append(f"case {i}: {detail}")
    assert not failures, f"{len(failures)} of {n} {kind} cases failed:\n" + "\n".join(failures[:3])
    # the generators reach both sides: valid variants and refused ones
    assert counts["ok"] > 0 and counts["error"] > 0, counts
    return counts


@pytest.mark.parametrize("kind,n", [("model", 1500), ("checkpoint", 1500), ("tokenizer", 1000)])
def test_fuzz(kind, n, fx, tmp_path):
    run_kind(kind, fx, tmp_path, n)


def test_the_harness_catches_a_traceback(fx, tmp_path, monkeypatch):
    """A case that ends in another exception, or a PoppinsError not naming the file, fails."""
    case = fuzz.gen_case("tokenizer", fx, random.Random(0))

    def boom(path, text):
        raise KeyError("params")
    monkeypatch.setattr(fuzz, "_use_tokenizer", boom)
    assert fuzz.run_case("tokenizer", case, fx, tmp_path)[0] == "fail"

    def anonymous(path, text):
        from poppins.errors import PoppinsError
        raise PoppinsError("something is wrong")
    monkeypatch.setattr(fuzz, "_use_tokenizer", anonymous)
    assert fuzz.run_case("tokenizer", case, fx, tmp_path)[0] == "fail"


def test_the_harness_catches_a_hang(fx, tmp_path, monkeypatch):
    import time

    case = fuzz.gen_case("tokenizer", fx, random.Random(0))
    monkeypatch.setattr(fuzz, "_use_tokenizer", lambda path, text: time.sleep(5))
    outcome, detail = fuzz.run_case("tokenizer", case, fx, tmp_path, timeout=0.2)
    assert outcome == "fail" and "hang" in detail


# ---------------------------------------------------------------- hand-made tokenizer.json cases

def _tok_obj(fx):
    import json

    return json.loads(fx.tokenizer_json)


def _load_tok(tmp_path, data):
    from poppins.tokenizer import Tokenizer

    p = tmp_path / "tokenizer.json"
    p.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass"))
    return p, lambda: Tokenizer.from_file(p)


def test_one_huge_vocab_id_is_refused_quickly(fx, tmp_path):
    import json
    import time

    from poppins.errors import PoppinsError

    obj = _tok_obj(fx)
    key = next(iter(obj["model"]["vocab"]))
    obj["model"]["vocab"][key] = 10 ** 8
    p, load = _load_tok(tmp_path, json.dumps(obj))
    t0 = time.monotonic()
    with pytest.raises(PoppinsError, match=r"tokenizer\.json: field model\.vocab.*id 100000000"):
        load()
    assert time.monotonic() - t0 < 2


@pytest.mark.parametrize("mutate,field", [
    (lambda o: o["model"].update(vocab=[1, 2]), "model.vocab"),
    (lambda o: o["model"].update(merges="a b"), "model.merges"),
    (lambda o: o["model"]["merges"].append("zz qq"), "model.merges["),
    (lambda o: o["model"]["merges"].append(["a"]), "model.merges["),
    (lambda o: o["model"]["merges"].append(5), "model.merges["),
    (lambda o: o.update(added_tokens={"a": 1}), "added_tokens"),
    (lambda o: o["added_tokens"][0].update(id="1"), "added_tokens[0].id"),
    (lambda o: o["added_tokens"][0].update(content=7), "added_tokens[0].content"),
    (lambda o: o["added_tokens"][0].update(special="yes"), "added_tokens[0].special"),
    (lambda o: o["added_tokens"].append(dict(o["added_tokens"][0])), "added_tokens"),
    (lambda o: o.update(model=[]), "field model"),
    (lambda o: o.update(pre_tokenizer={"type": "Sequence", "pretokenizers": [1, 2]}), "pre_tokenizer"),
    (lambda o: o["model"]["vocab"].update(extra=True), "model.vocab['extra']"),
    (lambda o: o["model"]["vocab"].pop("a"), "ids without a token"),
])
def test_wrong_json_types_name_the_field(fx, tmp_path, mutate, field):
    import json

    from poppins.errors import PoppinsError

    obj = _tok_obj(fx)
    mutate(obj)
    p, load = _load_tok(tmp_path, json.dumps(obj))
    with pytest.raises(PoppinsError) as e:
        load()
    assert str(p) in str(e.value) and field in str(e.value), str(e.value)


def test_invalid_utf8_and_deep_nesting(fx, tmp_path):
    from poppins.errors import PoppinsError

    p, load = _load_tok(tmp_path, fx.tokenizer_json.encode()[:100] + b"\xff\xfe" +
                        fx.tokenizer_json.encode()[100:])
    with pytest.raises(PoppinsError, match=r"tokenizer\.json: not UTF-8"):
        load()
    p, load = _load_tok(tmp_path, "[" * 200_000)
    with pytest.raises(PoppinsError, match=r"tokenizer\.json.*not valid JSON"):
        load()


def test_lone_surrogate_in_text_is_an_error(fx, tmp_path):
    from poppins.errors import PoppinsError
    from poppins.tokenizer import Tokenizer

    tok = Tokenizer.from_json_str(fx.tokenizer_json)
    with pytest.raises(PoppinsError, match="lone surrogate"):
        tok.encode("a\udc80b")
    assert tok.decode(tok.encode("a\U0001F600b")) == "a\U0001F600b"
