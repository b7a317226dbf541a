"""``poppins eval`` / poppins.evaluation (issue 12, item 6): the rows, the probes format, the
surface families, --json and --min-recall."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from poppins import evaluation as E
from poppins.errors import PoppinsError
from test_engine import TRAIN_XML, trained_dir

ROOT = Path(__file__).resolve().parents[1]
EVAL_DATA = Path(__file__).parent / "data" / "eval"


def write(tmp_path, text, name="probes.xml"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


# ------------------------------------------------------------------ probes files
def test_committed_probes_are_valid_and_large_enough():
    from lxml import etree

    schema = etree.XMLSchema(etree.parse(str(E.PROBES_SCHEMA_PATH)))
    for name in ("example", "small", "medium"):
        path = EVAL_DATA / name / "probes.xml"
        assert schema.validate(etree.parse(str(path))), name
        pr = E.read_probes(path)
        assert len(pr.paraphrases) >= 40 and len(pr.off_topic) >= 30, name
    assert len(E.CLIENT_SYSTEM_PROMPTS) == 10 == len(set(E.CLIENT_SYSTEM_PROMPTS))


def test_eval_train_files_resolve(tmp_path):
    """Every paraphrase of the committed probes names a prompt of its train file."""
    from poppins.samples import build_samples
    from poppins.trainxml import read_train_xml

    files = {"example": ROOT / "poppins" / "bootstrap" / "data" / "train.xml",
             "small": EVAL_DATA / "small" / "train.xml",
             "medium": EVAL_DATA / "medium" / "train.xml"}
    sizes = {}
    for name, xml in files.items():
        doc = read_train_xml(xml)
        firsts = {g[0].prompt for g in build_samples(doc).groups}
        for p in E.read_probes(EVAL_DATA / name / "probes.xml").paraphrases:
            assert doc.text("prompt", p.expect) in firsts, (name, p.expect)
        sizes[name] = len(doc.samples)
    assert 15 <= sizes["small"] <= 30 and 900 <= sizes["medium"] <= 1100
    assert (EVAL_DATA / "medium" / "train.xml").stat().st_size < 300_000


@pytest.mark.parametrize("text, line, words", [
    ("<probes>\n<paraphrases>\n<paraphrase>x</paraphrase>\n</paraphrases>\n</probes>", 3,
     "missing the required attribute 'expect'"),
    ("<probes>\n<paraphrases>\n<paraphrase expect='pr::a'></paraphrase>\n</paraphrases>\n"
     "</probes>", 3, "is empty"),
    ("<probes>\n\n<offtopic/>\n</probes>", 3, "unknown element <offtopic>"),
    ("<probes>\n<off-topic>\n<question sytem='x'>q</question>\n</off-topic>\n</probes>", 3,
     "unknown attribute 'sytem'"),
    ("<probes>\n<off-topic>\n<question>q</question>\n</off-topic>", 4, "malformed XML"),
    ("<train/>", 1, "root element must be <probes>"),
    ('<!DOCTYPE probes [<!ENTITY x "y">]>\n<probes/>', 1, "DOCTYPE"),
    ("<probes>\n<off-topic>\n<question>" + "x" * (E.MAX_PROBE_CHARS + 1)
     + "</question>\n</off-topic>\n</probes>", 3, "at most"),
])
def test_probes_errors_name_file_and_line(tmp_path, text, line, words):
    p = write(tmp_path, text)
    with pytest.raises(PoppinsError) as exc:
        E.read_probes(p)
    first = exc.value.problems[0]
    assert first.file == str(p) and first.line == line and words in first.message, str(first)


def test_probes_read(tmp_path):
    p = write(tmp_path, "<probes>\n<paraphrases>\n<paraphrase expect='pr::m::what' "
                        "system='Be nice.'> what's poppins </paraphrase>\n</paraphrases>\n"
                        "<off-topic><question><![CDATA[ <b>soccer</b> ]]></question>"
                        "</off-topic>\n</probes>")
    pr = E.read_probes(p)
    assert pr.paraphrases == [E.Paraphrase("what's poppins", "pr::m::what", "Be nice.",
                                           f"{p}:3")]
    assert [q.text for q in pr.off_topic] == [" <b>soccer</b> "]


# ------------------------------------------------------------------ surface families
def test_surface_variants_are_seeded_and_change_the_prompt():
    prompt = "What is the Oxford comma?"
    for fam in E.EVAL_FAMILIES:
        a = E.surface_variant(prompt, fam, random.Random(E.EVAL_SEED))
        b = E.surface_variant(prompt, fam, random.Random(E.EVAL_SEED))
        assert a == b and a != prompt, fam
    v = E.surface_variant(prompt, "neighbour-key", random.Random(1))
    diff = [(x, y) for x, y in zip(prompt, v) if x != y]
    assert len(v) == len(prompt) and len(diff) == 1
    assert diff[0][1].lower() in E._NEIGHBOURS[diff[0][0].lower()]
    with pytest.raises(ValueError):
        E.surface_variant(prompt, "typos", random.Random(1))


# ------------------------------------------------------------------ a trained model
@pytest.fixture(scope="module")
def model_dir():
    return trained_dir()


def test_evaluate_rows_match_direct_generation(model_dir, tmp_path):
    from poppins.api import Model
    from poppins.samples import build_samples
    from poppins.trainxml import read_train_xml

    probes = write(tmp_path, "<probes><paraphrases>"
                             "<paraphrase expect='pr::m::what'>what is poppins</paraphrase>"
                             "</paraphrases><off-topic><question>Who won the 1998 World "
                             "Cup?</question><question>How do I bake bread?</question>"
                             "</off-topic></probes>")
    model = Model.load(model_dir, threads=1)
    rep = E.evaluate(model_dir, TRAIN_XML, probes=probes, max_cases=None, model=model)
    keys = [r.key for r in rep.rows]
    assert keys[:3] == ["train-none", "train-empty", "train-own"]
    assert [k for k in keys if k.startswith("client-")] == [f"client-{i}" for i in range(1, 11)]
    for k in ("val", "surface", "paraphrase", "chains", "off-topic", "refused"):
        assert k in keys
    assert rep.row("paraphrase").cases == 1 and rep.row("off-topic").cases == 2
    # an independent count: single-turn training samples asked with their own system prompt
    # through Model.generate (the CLI's path) and rendered answers compared exactly
    from poppins.engine.render import Renderer
    from poppins.corpus import tokens as T

    sset = build_samples(read_train_xml(TRAIN_XML), seed=1337)
    tok = model.tokenizer
    hits = n = 0
    for s in sset.train:
        if s.turns:
            continue
        ids, index = T.encode_samples([s], tok)
        ans = [int(i) for i in ids[int(index[0]["boundary"]):]]
        ans = ans[:ans.index(T.END_AI) + 1]
        r = Renderer(tok, model.engine.sources)
        for t in ans:
            r.feed(t)
        got = model.generate(s.prompt, temperature=0, system=s.system or "",
                             max_tokens=len(ans) + E.ANSWER_MARGIN)
        hits += got.strip() == r.text(final=True).strip()
        n += 1
    own = rep.row("train-own")
    single_misses = [m for m in own.misses]
    assert own.cases >= n
    assert own.hits - (own.cases - n) <= hits <= own.hits
    assert len(single_misses) == own.cases - own.hits
    js = rep.to_json()
    assert json.loads(json.dumps(js))["rows"][0]["key"] == "train-none"
    assert "training prompts, no system message" in rep.table()


def test_no_beyond_scope_is_said(model_dir, tmp_path):
    xml = tmp_path / "t.xml"
    xml.write_text("<train><prompts><prompt id='pr::a'>What is poppins?</prompt></prompts>"
                   "<responses><response id='re::a'>A tool.</response></responses><samples>"
                   "<sample-ids prompt='pr::a' response='re::a'/></samples></train>")
    probes = write(tmp_path, "<probes><off-topic><question>Who won?</question></off-topic>"
                             "</probes>")
    rep = E.evaluate(model_dir, xml, probes=probes, max_cases=5)
    off = rep.row("off-topic")
    assert off.cases == 0 and off.rate is None and "no <beyond-scope>" in off.note
    assert any("differs from the file" in n for n in rep.notes)


def test_bad_paraphrase_id(model_dir, tmp_path):
    probes = write(tmp_path, "<probes>\n<paraphrases>\n<paraphrase expect='pr::nope'>x"
                             "</paraphrase>\n</paraphrases>\n</probes>")
    with pytest.raises(PoppinsError, match=r"probes.xml:3: expect='pr::nope'"):
        E.evaluate(model_dir, TRAIN_XML, probes=probes, max_cases=2)


def test_cli_json_and_min_recall(model_dir):
    base = [sys.executable, "-m", "poppins", "eval", "-m", str(model_dir), "-i", str(TRAIN_XML),
            "-t", "1", "--max-cases", "4"]
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    r = subprocess.run(base + ["--json", "--min-recall", "0"], capture_output=True, text=True,
                       cwd=ROOT, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    rates = [row["rate"] for row in data["rows"]
             if row["rate"] is not None and not row["lower_is_better"]]
    assert rates
    r = subprocess.run(base + ["--min-recall", "1"], capture_output=True, text=True, cwd=ROOT,
                       env=env, timeout=600)
    assert r.returncode == (1 if min(rates) < 1 else 0), r.stderr
    assert "training prompts, no system message" in r.stdout
    r = subprocess.run(base + ["--min-recall", "2"], capture_output=True, text=True, cwd=ROOT,
                       env=env, timeout=600)
    assert r.returncode == 2 and "--min-recall must be" in r.stderr


def test_eval_through_a_server_equals_in_process(model_dir, tmp_path):
    """``--url``: the same cases asked through ``serve``'s /v1/chat/completions give the same
    answers, row by row, as the model in-process; a wrong key or a dead server stops with a
    clear error instead of counting misses."""
    from poppins.api import Model
    from poppins.server import serve

    probes = write(tmp_path, "<probes><paraphrases>"
                             "<paraphrase expect='pr::m::what'>what is poppins</paraphrase>"
                             "</paraphrases><off-topic><question>Who won the 1998 World "
                             "Cup?</question></off-topic></probes>")
    model = Model.load(model_dir, threads=1)
    local = E.evaluate(model_dir, TRAIN_XML, probes=probes, max_cases=6, model=model)
    srv = serve(model, port=0, api_key="k3y")
    try:
        remote = E.evaluate(model_dir, TRAIN_XML, probes=probes, max_cases=6, model=model,
                            url=srv.url + "/v1", api_key="k3y")
        with pytest.raises(PoppinsError, match=r"/v1/chat/completions: HTTP 401"):
            E.evaluate(model_dir, TRAIN_XML, probes=probes, max_cases=2, model=model,
                       url=srv.url, api_key="wrong")
    finally:
        srv.shutdown()
        srv.server_close()
    assert [r.key for r in remote.rows] == [r.key for r in local.rows]
    for a, b in zip(local.rows, remote.rows):
        assert (a.cases, a.hits, a.misses) == (b.cases, b.hits, b.misses), a.key
    assert sum(r.cases for r in remote.rows) > 50
    with pytest.raises(PoppinsError, match="127.0.0.1:9/v1/chat/completions"):
        E.evaluate(model_dir, TRAIN_XML, max_cases=1, model=model, url="http://127.0.0.1:9/v1")
    with pytest.raises(PoppinsError, match="--url must be an http"):
        E.evaluate(model_dir, TRAIN_XML, max_cases=1, model=model, url="ftp://x")
