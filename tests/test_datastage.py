"""The data stage on files in both dialects: counts, order, imports, phrases, split, outputs."""
from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from lxml import etree

from poppins.datastage import prepare_data
from poppins.errors import PoppinsError
from poppins.samples import Item, build_samples
from poppins.trainxml import read_train_xml, schema

DATA = Path(__file__).parent / "data"
EARLY = DATA / "early" / "train.xml"
CURRENT = DATA / "current" / "train.xml"


def write(tmp_path: Path, text: str, name="train.xml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


# -- the early (seed) dialect ----------------------------------------------------------------

def test_early_dialect_counts_and_items():
    doc = read_train_xml(EARLY)
    assert doc.dialects == ["early"]
    sset = build_samples(doc, seed=1)
    # 3 originals; the phrase matches the two "What is ..." prompts, 2 variants each
    assert (sset.originals, sset.variants, sset.beyond_scope) == (3, 4, 0)
    assert [len(g) for g in sset.groups] == [3, 3, 1]
    assert sset.groups[1][0].prompt == "What is a computer?"
    assert (len(sset.train), len(sset.val)) == (5, 2)
    # document order: the <sample> written first comes first
    js = sset.groups[0][0]
    assert js.prompt == "What is JavaScript?"
    assert [i.kind for i in js.items] == ["text", "source", "line-break", "text", "source", "code"]
    assert js.items[5] == Item("code", "function example() {\n  console.log('hi world')\n}", lang="ts")
    assert [s.prompt for s in sset.groups[0]] == ["What is JavaScript?", "Define JavaScript.",
                                                 "Define: JavaScript."]
    ls = sset.groups[2][0]
    assert ls.items[1] == Item("line-break", count=2)
    assert ls.items[2] == Item("code", "ls -la", lang="bash", indent=1)
    c = {k: v.value for k, v in doc.constants.items()}
    assert c["learning-rate"] == pytest.approx(1e-3) and c["warmup-steps"] == 100
    assert c["bpe-requested-tokens"] == ["JavaScript", "console.log"]
    assert c["aim-infer-gb"] == pytest.approx(0.9)


def test_early_dialect_validates_against_our_xsd():
    assert schema().validate(etree.parse(str(EARLY)))


# -- the current dialect ----------------------------------------------------------------------

def test_current_dialect_counts():
    doc = read_train_xml(CURRENT)
    assert [f.display.split("/")[-1] for f in doc.files] == ["train.xml", "a.xml", "b.xml", "c.xml"]
    sset = build_samples(doc, seed=1337)
    # originals: main 2, a.xml 2, b.xml 1, c.xml 2; beyond-scope: 2 custom + sports 12 + pets 7,
    # "soccer" given twice -> 20 distinct prompts
    assert (sset.originals, sset.beyond_scope) == (7, 20)
    # phrase 1 has 3 variants after merging a.xml's (Define, Explain, Tell me about) and matches
    # 4 regular "What is" prompts + 15 beyond-scope "What is ..." prompts; phrase 2 matches one
    assert sset.variants == (4 + 15) * 3 + 1
    assert len(sset.groups) == 27
    # one validation member per group that has variants
    assert len(sset.val) == sum(1 for g in sset.groups if len(g) > 1) == 20
    assert len(sset.train) == 85 - 20


def test_current_dialect_system_injection_and_merge():
    doc = read_train_xml(CURRENT)
    sset = build_samples(doc)
    by_prompt = {g[0].prompt: g[0] for g in sset.groups}
    assert by_prompt["What is poppins?"].system == "You are a helpful assistant."
    assert by_prompt["What is poppins?"].thought == "This is about poppins itself."
    # a.xml is imported with system sy::a: its own <system> child is overridden
    assert by_prompt["What is an apple?"].system == "You answer questions about topic A."
    assert by_prompt["Why is the sky blue?"].system == "You answer questions about topic A."
    # b.xml is imported by a.xml without a system: the nearest import with one (sy::a) wins
    assert by_prompt["What is a banana?"].system == "You answer questions about topic A."
    # c.xml is imported by a.xml with its own system
    assert by_prompt["Where is C?"].system == "You answer questions about topic C."
    soccer = by_prompt["What is soccer?"]
    assert soccer.system == "Refuse anything off-topic." and soccer.thought == "This is off-topic, so I refuse."
    assert "What are dogs?" in by_prompt and "What is the olympics?" in by_prompt
    # constants: the main file wins, imports fill gaps
    c = {k: v.value for k, v in doc.constants.items()}
    assert c["learning-rate"] == pytest.approx(0.002) and c["warmup-steps"] == 7
    assert c["bpe-requested-tokens"] == ["python -m poppins", "<!DOCTYPE html>"]
    # inline code and a line break with the default count
    how = by_prompt["How do I train?"]
    assert how.items[1] == Item("line-break", count=1)
    assert how.items[2] == Item("code", "python -m poppins train", lang="bash", inline=True)
    # phrase variants keep the text outside the match and fill groups
    assert [s.prompt for s in sset.groups[1]] == ["How do I train?", "Show me how to train."]
    assert [s.prompt for s in sset.groups[2]] == ["What is an apple?", "Define apple.",
                                                  "Explain apple.", "Tell me about apple."]


def test_current_dialect_validates_against_our_xsd():
    for f in (CURRENT, DATA / "current" / "topics" / "a.xml", DATA / "current" / "c.xml"):
        assert schema().validate(etree.parse(str(f))), f


def test_val_fraction_holds_out_whole_groups():
    doc = read_train_xml(CURRENT)
    sset = build_samples(doc, seed=5, val_fraction=0.1)
    k = round(0.1 * 27)
    val_groups = [g for g in sset.groups if g[0] in sset.val]
    assert len(val_groups) == k
    assert sum(len(g) for g in val_groups) == len(sset.val)
    assert all(all(s in sset.val for s in g) for g in val_groups)
    assert len(build_samples(doc, seed=5, val_fraction=0.001).val) >= 1   # at least one group


def test_without_phrases_validation_is_empty_and_said(tmp_path, capsys):
    p = write(tmp_path, '<train><prompts><prompt id="p">Hi?</prompt></prompts><responses>'
                        '<response id="r">Hello.</response></responses><samples>'
                        '<sample-ids prompt="p" response="r"/></samples></train>')
    res = prepare_data(p, tmp_path / "out")
    assert len(res.samples.val) == 0
    assert "validation set is empty" in capsys.readouterr().out


# -- phrases -----------------------------------------------------------------------------------

PHRASE_DOC = """<train>
  <prompts><prompt id="p">Hi! What is a cat? Thanks</prompt></prompts>
  <responses><response id="r">An animal.</response></responses>
  <samples><sample-ids prompt="p" response="r"/></samples>
  <phrases>
    <phrase pattern="What is (?:a |an |the )?(.*?)\\?"><variant value="Define $1."/></phrase>
    <phrase pattern="(H)(i)(!)( )(W)(h)(a)(t)( )(i)(s)"><variant value="[$10$11$1]"/></phrase>
    <phrase pattern="Thanks(x)?"><variant value="Bye$1"/></phrase>
  </phrases>
</train>"""


def test_phrase_substitution_is_standard(tmp_path):
    sset = build_samples(read_train_xml(write(tmp_path, PHRASE_DOC)))
    prompts = [s.prompt for s in sset.groups[0]]
    assert prompts == ["Hi! What is a cat? Thanks",
                       "Hi! Define cat. Thanks",          # text outside the match is kept
                       "[isH] a cat? Thanks",             # $10 is group 10, not $1 then "0"
                       "Hi! What is a cat? Bye"]          # a non-participating group -> ""


# -- text handling -----------------------------------------------------------------------------

def test_text_trimming_and_cdata(tmp_path):
    p = write(tmp_path, """<train>
  <prompts><prompt id="p">
      What is   <![CDATA[ <html> ]]>   ?
  </prompt></prompts>
  <responses><response id="r">
     Line one
       indented line two
  </response></responses>
  <code-snippets><code id="c" lang="html"><![CDATA[
<html>&amp;</html>
]]></code></code-snippets>
  <samples><sample-ids prompt="p" response="r" code="c"/></samples>
</train>""")
    s = build_samples(read_train_xml(p)).groups[0][0]
    assert s.prompt == "What is    <html>    ?"
    assert s.items[0].text == "Line one\n       indented line two"
    assert s.items[1].text == "\n<html>&amp;</html>\n"      # CDATA verbatim, untrimmed


def test_sample_without_answer_is_skipped_with_warning(tmp_path, capsys):
    p = write(tmp_path, '<train><prompts><prompt id="p">Hi?</prompt><prompt id="q">Yo?</prompt>'
                        '</prompts><responses><response id="r">Hello.</response></responses>'
                        '<samples><sample-ids prompt="p" response="r"/>\n<sample-ids prompt="q"/>'
                        '</samples></train>')
    res = prepare_data(p, tmp_path / "out")
    assert res.samples.total == 1
    assert "train.xml:2: warning: sample has no answer" in capsys.readouterr().out


# -- outputs -----------------------------------------------------------------------------------

def test_outputs_are_byte_identical_for_a_seed_and_split_changes_with_it(tmp_path):
    outs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        prepare_data(CURRENT, tmp_path / name, seed=seed, log=None)
        outs[name] = {p.name: p.read_bytes() for p in (tmp_path / name).iterdir()}
    assert outs["a"] == outs["b"]
    assert outs["a"]["train_corpus.xml"] != outs["c"]["train_corpus.xml"]
    ma, mc = (json.loads(outs[k]["manifest.json"]) for k in ("a", "c"))
    # a different seed changes the split (and the seeded augmentation) only: the same file
    # samples, the same sizes
    own = lambda m: {k: v for k, v in m["samples"].items() if k != "augmented"}  # noqa: E731
    assert own(ma) == own(mc)
    assert ma["inputs"] == mc["inputs"] and ma["constants"] == mc["constants"]

    def all_samples(o):
        both = b"".join(o[f] for f in ("train_corpus.xml", "val_corpus.xml"))
        return Counter(etree.tostring(s, with_tail=False) for s in
                       etree.fromstring(b"<x>" + both.replace(b'<?xml version="1.0" encoding="UTF-8"?>', b"") + b"</x>").iter("sample")
                       if not s.get("variant", "").startswith("augment:"))
    assert all_samples(outs["a"]) == all_samples(outs["c"])


def test_corpus_dump_is_well_formed_and_escapes_text(tmp_path):
    p = write(tmp_path, """<train>
  <prompts><prompt id="p">Is &lt;html&gt; a tag? &amp; what about &lt;/sample&gt;?</prompt></prompts>
  <responses><response id="r">Yes: &lt;text&gt; stays text.</response></responses>
  <samples><sample-ids prompt="p" response="r"/></samples>
</train>""")
    res = prepare_data(p, tmp_path / "out", log=None)
    root = etree.parse(str(tmp_path / "out" / "train_corpus.xml")).getroot()
    sample = root.find("sample")
    assert sample.find("prompt/text").text == "Is <html> a tag? & what about </sample>?"
    assert sample.find("ai/text").text == "Yes: <text> stays text."
    assert len(list(sample.find("ai"))) == 1


def test_manifest_lists_files_with_hashes(tmp_path):
    res = prepare_data(CURRENT, tmp_path / "out", log=None)
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["format"] == "poppins-data" and m["format_version"] == 1
    import hashlib
    for name, info in m["files"].items():
        data = (tmp_path / "out" / name).read_bytes()
        assert info["bytes"] == len(data) and info["sha256"] == hashlib.sha256(data).hexdigest()
    assert m["sources"]["so::m::docs"]["url"] == "https://example.org/poppins"
    assert m["samples"]["train"] + m["samples"]["val"] == 85


def test_swap_keeps_checkpoints_and_model_and_removes_staging(tmp_path):
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "step1.ckpt").write_bytes(b"ckpt")
    (out / "model.poppins").write_bytes(b"model")
    prepare_data(CURRENT, out, log=None)
    assert (out / "checkpoints" / "step1.ckpt").read_bytes() == b"ckpt"
    assert (out / "model.poppins").read_bytes() == b"model"
    assert not list(out.glob(".staging-*"))


def test_output_path_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(PoppinsError, match="not a folder"):
        prepare_data(CURRENT, tmp_path / "f", log=None)


# -- token streams -------------------------------------------------------------------------------

from poppins.corpus import tokens as T
from poppins.special_tokens import SPECIAL_IDS, SPECIAL_TOKENS


def test_bins_index_and_boundary(tmp_path):
    p = write(tmp_path, """<train>
  <prompts><prompt id="p">Is &lt;html&gt; a tag, and &lt;/sample&gt; too?</prompt></prompts>
  <responses><response id="r">Yes: &lt;text&gt; stays text.</response></responses>
  <sources><source id="s" url="https://example.org"/></sources>
  <code-snippets><code id="c" lang="html"><![CDATA[<html></html>]]></code></code-snippets>
  <samples>
    <sample><prompt id="p"/><response id="r"/><source id="s"/><line-break count="2"/><code id="c" indent="2"/></sample>
  </samples>
  <thoughts><thought id="t">Think.</thought></thoughts>
  <system-prompts><system id="y">Be brief.</system></system-prompts>
</train>""")
    text = p.read_text().replace('<sample><prompt id="p"/>', '<sample><system id="y"/><prompt id="p"/><thought id="t"/>')
    p.write_text(text)
    res = prepare_data(p, tmp_path / "out", log=None)
    ids, index = T.read_bins(tmp_path / "out", "train")
    # the file's own sample first; augmented copies follow it
    assert res.manifest["samples"]["train"] == 1 and not ids.flags.writeable
    off, count, boundary = (int(x) for x in index[0])
    s = np.asarray(ids[off // 4: off // 4 + count])
    names = [SPECIAL_TOKENS[i] if i < len(SPECIAL_TOKENS) else None for i in s.tolist()]
    assert names[0] == "<sample>" and names[1] == "<system>"
    assert names[boundary - 1] == "</prompt>" and names[boundary] == "<thought>"
    assert names[-2:] == ["</ai>", "</sample>"]
    structural = [n for n in names if n is not None]
    assert structural == ["<sample>", "<system>", "</system>", "<prompt>", "<text>", "</text>",
                          "</prompt>", "<thought>", "</thought>", "<ai>", "<text>", "</text>",
                          "<source>", "</source>", '<line-break count="2" />', '<html indent="2">',
                          "</html>", "</ai>", "</sample>"]
    # user text with tag-like strings stayed text; it decodes back exactly
    from poppins.tokenizer import Tokenizer
    tok = Tokenizer.from_file(tmp_path / "out")
    start = names.index("<prompt>") + 2
    first_text = s[start:names.index("</text>", start)]
    assert tok.decode(first_text) == "Is <html> a tag, and </sample> too?"
    labels = T.segment_labels(s)
    src = names.index("<source>")
    assert labels[src] == T.SEG_RESPONSE and labels[src + 1] == T.SEG_SOURCE
    code = names.index('<html indent="2">')
    assert (labels[code:code + (names.index("</html>") - code) + 1] == T.SEG_CODE).all()
    assert labels[-1] == T.SEG_RESPONSE
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["tokens"]["train"]["tokens"] == len(ids)


def test_requested_tokens_are_one_id_in_the_bins(tmp_path):
    res = prepare_data(CURRENT, tmp_path / "out", log=None)
    from poppins.tokenizer import Tokenizer
    tok = Tokenizer.from_file(tmp_path / "out")
    rid = tok.token_to_id("python -m poppins")
    ids, _ = T.read_bins(tmp_path / "out", "train")
    assert rid is not None and int((np.asarray(ids) == rid).sum()) >= 1


def test_truncated_bins_are_refused(tmp_path):
    prepare_data(CURRENT, tmp_path / "out", log=None)
    f = tmp_path / "out" / "train_corpus.bin"
    f.write_bytes(f.read_bytes()[:-2])
    with pytest.raises(PoppinsError, match="not whole records"):
        T.read_bins(tmp_path / "out", "train")


# -- conversations -------------------------------------------------------------------------------

CONVERSATION = DATA / "conversation" / "train.xml"


def test_conversation_turns():
    from poppins.samples import Turn

    sset = build_samples(read_train_xml(CONVERSATION))
    first = sset.groups[0][0]
    assert first.prompt == "Hi! Can you help me with fractions?" and first.system == "You are a patient tutor."
    assert first.items == (Item("text", "Of course. Ask me anything about fractions."),)
    assert first.turns == (
        Turn("What is one half plus one quarter?", (Item("text", "Three quarters."),),
             "Use a common denominator."),
        Turn("Why?", (Item("text", "One half is two quarters, and two quarters plus one quarter "
                               "is three quarters."),)))
    assert len(sset.groups[1][0].turns) == 1


def test_conversation_stream_mask_and_dump(tmp_path):
    from poppins.training.data import PackedSamples

    prepare_data(CONVERSATION, tmp_path / "out", log=None)
    ids, index = T.read_bins(tmp_path / "out", "train")
    off, count, bound = (int(x) for x in index[0])
    s = np.asarray(ids[off // 4: off // 4 + count])
    names = [SPECIAL_TOKENS[i] if i < len(SPECIAL_TOKENS) else "." for i in s.tolist()]
    structure = [n for n in names if n != "."]
    assert structure == ["<sample>", "<system>", "</system>",
                         "<prompt>", "<text>", "</text>", "</prompt>", "<ai>", "<text>", "</text>", "</ai>",
                         "<prompt>", "<text>", "</text>", "</prompt>", "<thought>", "</thought>",
                         "<ai>", "<text>", "</text>", "</ai>",
                         "<prompt>", "<text>", "</text>", "</prompt>", "<ai>", "<text>", "</text>", "</ai>",
                         "</sample>"]
    assert names[bound - 1] == "</prompt>" and names[bound] == "<ai>"
    # every answer is learned; the later prompts (the user's words) are not
    packed = PackedSamples(ids, index, 256)
    b = packed.fill([np.array([0])])
    learned = {j + 1 for j in np.flatnonzero(b.mask[0])}   # target positions
    prompt_spans = [i for i, n in enumerate(names) if n in ("<prompt>", "</prompt>")]
    later = set()
    for a, z in zip(prompt_spans[2::2], prompt_spans[3::2]):
        later |= set(range(a, z + 1))
    answers = set(range(bound, count)) - later
    assert learned == answers
    root = etree.parse(str(tmp_path / "out" / "train_corpus.xml")).getroot()
    assert [p.text for p in root.find("sample").iter("text")][:3] == [
        "Hi! Can you help me with fractions?", "Of course. Ask me anything about fractions.",
        "What is one half plus one quarter?"]


def test_conversation_items_before_first_prompt_are_an_error(tmp_path):
    p = write(tmp_path, CONVERSATION.read_text().replace(
        '<sample>\n      <prompt id="pr::color"/>', '<sample>\n      <response id="re::color"/>\n      <prompt id="pr::color"/>'))
    with pytest.raises(PoppinsError, match="comes before the first <prompt> of a conversation"):
        read_train_xml(p)


def test_conversation_turn_without_answer_is_skipped(tmp_path, capsys):
    p = write(tmp_path, CONVERSATION.read_text().replace(
        '<prompt id="pr::night"/>\n      <response id="re::night"/>', '<prompt id="pr::night"/>'))
    res = prepare_data(p, tmp_path / "out")
    assert res.samples.total == 1
    assert "turn 2 of the conversation has no answer" in capsys.readouterr().out
