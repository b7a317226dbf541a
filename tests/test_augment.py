"""Training augmentation (poppins.samples.augment) and stop-when-learned (the trainer)."""
from __future__ import annotations

import math
import os
import re

import numpy as np
from pathlib import Path

from poppins.datastage import prepare_data
from poppins.samples import build_samples
from poppins.samples import augment as A
from poppins.trainxml import read_train_xml

REPO = Path(__file__).resolve().parent.parent
CURRENT = REPO / "tests" / "data" / "current" / "train.xml"
CONV = REPO / "tests" / "data" / "conversation" / "train.xml"


def write(tmp_path, text, name="train.xml"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


SYSDEP = """<train>
  <system-prompts><system id="sy::a">You talk about apples.</system>
    <system id="sy::b">You talk about bananas.</system></system-prompts>
  <prompts><prompt id="p::color">What color is it?</prompt><prompt id="p::fruit">Is it a fruit?</prompt>
    <prompt id="p::n">How many seeds are there?</prompt></prompts>
  <responses><response id="r::red">Red.</response><response id="r::yellow">Yellow.</response>
    <response id="r::yes">Yes.</response><response id="r::many">Many.</response></responses>
  <samples>
    <sample-ids prompt="p::color" response="r::red" system="sy::a"/>
    <sample-ids prompt="p::color" response="r::yellow" system="sy::b"/>
    <sample-ids prompt="p::fruit" response="r::yes" system="sy::a"/>
    <sample-ids prompt="p::n" response="r::many" system="sy::a"/>
  </samples>
</train>"""


def _sset(path, seed=1337):
    return build_samples(read_train_xml(path), seed=seed)


def test_system_dependent_prompts_keep_their_own_system(tmp_path):
    sset = _sset(write(tmp_path, SYSDEP))
    extra, counts = A.augment(sset, 1337, surface_forms=3)
    assert A.system_dependent_prompts(sset.train) == {"what color is it"}
    color = [s for s in extra if A._key(s.prompt) == "what color is it"
             or s.items[0].text in ("Red.", "Yellow.")]
    assert color and all(s.system == {"Red.": "You talk about apples.",
                                      "Yellow.": "You talk about bananas."}[s.items[0].text]
                         for s in color)
    assert not any(s.turns and "Red." in [t.items[0].text for t in s.turns] for s in extra)
    fruit = [s.system for s in extra if s.prompt == "Is it a fruit?"]
    assert None in fruit and any(sy in A.GENERIC_SYSTEMS for sy in fruit)
    # the default system prompt is the most common one: sy::a, the sample's own already
    assert counts["system"] == 4   # two free prompts x (none, generic)


def test_surface_forms_default_scales_with_the_file(tmp_path):
    assert A.auto_surface_forms(51) == 12          # tests/data/eval/small
    assert A.auto_surface_forms(370) == A.SURFACE_MIN == 3   # the built-in example
    assert A.auto_surface_forms(1) == A.auto_surface_forms(0) == A.SURFACE_MAX
    assert A.auto_surface_forms(10_000) == A.SURFACE_MIN
    sset = _sset(CURRENT)
    n = A.auto_surface_forms(len(sset.train))
    assert A.augment(sset, 1337)[1] == A.augment(sset, 1337, surface_forms=n)[1]
    got = prepare_data(CURRENT, tmp_path / "d", seed=1337, log=None)
    assert got.manifest["surface_forms"] == n


def test_surface_variants_are_seeded_distinct_and_never_a_validation_prompt(tmp_path):
    v1 = A.surface_variants("What is the capital of France?", 6, 7)
    assert v1 == A.surface_variants("What is the capital of France?", 6, 7)
    assert v1 != A.surface_variants("What is the capital of France?", 6, 8)
    assert len(set(v1)) == len(v1) == 6 and "What is the capital of France?" not in v1
    sset = _sset(CURRENT)
    assert sset.val
    extra, counts = A.augment(sset, 1337, surface_forms=8)
    assert counts["surface"] > 0
    val_exact = {s.prompt for s in sset.val}
    own = {A._key(s.prompt) for s in sset.train}
    for s in extra:
        assert s.prompt not in val_exact or s.variant == "augment:conversation"
        if s.variant == "augment:surface":
            assert A._key(s.prompt) in own or A._key(s.prompt) not in \
                {A._key(v) for v in val_exact}
    assert not A.augment(sset, 1337, surface_forms=0)[1]["surface"]


def test_each_family_is_covered():
    r = __import__("random").Random(3)
    assert A._typo("Hello world", r) != "Hello world"
    assert A._contraction("What is poppins?", r) == "What's poppins?"
    assert A._contraction("What's poppins?", r) == "What is poppins?"
    assert A._punct("Hi?", __import__("random").Random(0)) in ("Hi", "Hi??")
    assert A._filler("Who are you?", r) != "Who are you?"
    assert A._spacing("Who are you?", r) != "Who are you?"


def test_conversations_chain_training_samples_and_keep_the_files_own(tmp_path):
    sset = _sset(CURRENT)
    extra, counts = A.augment(sset, 1337)
    chains = [s for s in extra if s.variant == "augment:conversation"]
    assert counts["chains"] == len(chains) > 0
    singles = {(s.prompt, s.items) for s in sset.train if not s.turns}
    for c in chains:
        assert 2 <= 1 + len(c.turns) <= A.MAX_CHAIN_TURNS
        assert (c.prompt, c.items) in singles
        assert all((t.prompt, t.items) in singles for t in c.turns)
    # the file's real conversations stay as written and are never links of a chain
    csset = _sset(CONV)
    cextra, _ = A.augment(csset, 1337)
    assert not [s for s in cextra if s.variant == "augment:conversation"]
    for s in cextra:
        orig = next(o for o in csset.train if o.items == s.items)
        assert s.turns == orig.turns


def test_replayed_conversations_hold_the_rendered_history_a_client_sends(tmp_path):
    render = lambda items, thought: "|".join(it.text for it in items) + f"#{thought}"
    sset = _sset(CURRENT)
    extra, counts = A.augment(sset, 1337, render=render)
    chains = [s for s in extra if s.variant == "augment:conversation"]
    links = [s for s in sset.train if not s.turns]
    by_prompt = {s.prompt: s for s in links}
    replayed = [c for c in chains if c.history]
    # a replayed chain per link (at least CHAIN_MIN), and half as many learned turn by turn
    n = max(len(links), A.CHAIN_MIN)
    assert len(replayed) == n
    assert len(chains) - len(replayed) == n // 2
    for c in replayed:
        assert 2 <= len(c.history) + 1 + len(c.turns) <= A.MAX_CHAIN_TURNS
        for user, assistant in c.history:
            s = by_prompt[user]
            assert assistant == render(s.items, s.thought)
    # the file's own conversations, continued from each later turn with the earlier replayed
    csset = _sset(CONV)
    cextra, _ = A.augment(csset, 1337, render=render)
    for s in csset.train:
        turns = [(s.prompt, s.items, s.thought)] + [(t.prompt, t.items, t.thought)
                                                    for t in s.turns]
        for j in range(1, len(turns)):
            want = tuple((p, render(i, t)) for p, i, t in turns[:j])
            got = [x for x in cextra if x.history == want]
            assert got and all((x.prompt, x.items, x.thought) == turns[j] and
                               len(x.turns) == len(turns) - j - 1 for x in got)
    # in the bins: the history is exactly what a client's messages become, before the
    # boundary (never learned), and the learned turn after it
    from poppins.corpus import tokens as T
    from poppins.engine.render import render_answer
    from poppins.tokenizer import Tokenizer
    res = prepare_data(CONV, tmp_path / "out", log=None)
    tok = Tokenizer.from_file(tmp_path / "out")
    ids, index = T.read_bins(tmp_path / "out", "train")
    samples = _dumped(tmp_path / "out" / "train_corpus.xml")
    own = res.manifest["samples"]["train"]
    seen = 0
    for k, (off, count, bound) in enumerate(index.tolist()):
        if k < own or not samples[k]["history"]:
            continue
        s = np.asarray(ids[off // 4: off // 4 + count]).tolist()
        head = T.system_head_ids(tok, samples[k]["system"], None)
        for user, assistant in samples[k]["history"]:
            head += T.turn_ids(tok, "user", user) + T.turn_ids(tok, "assistant", assistant)
        head += T.turn_ids(tok, "user", samples[k]["prompt"])
        assert s[:bound] == head
        seen += 1
    assert seen >= 3
    # the renderer the data stage uses is eval's: a source renders as its link
    from poppins.samples import Item
    items = (Item("text", "See"), Item("source", "so::x"), Item("line-break"))
    text, n = render_answer(tok, items, None, {"so::x": {"url": "https://example.org/x"}})
    assert text == "See (source: https://example.org/x)"
    assert n == len(T.answer_ids(tok, items)) and T.answer_ids(tok, items)[-1] == T.END_AI


def _dumped(path):
    """(system, history, first prompt) of every sample of a train_corpus.xml."""
    import xml.etree.ElementTree as ET
    out = []
    for el in ET.parse(path).getroot():
        sy = el.find("system")
        out.append({"system": sy.text if sy is not None else "",
                     "history": [(h.find("user").text, h.find("assistant").text)
                                 for h in el.findall("history")],
                     "prompt": el.find("prompt").find("text").text})
    return out


def test_off_topic_refusals_only_with_a_beyond_scope_block(tmp_path):
    sset = _sset(CURRENT)
    extra, counts = A.augment(sset, 1337)
    off = [s for s in extra if s.variant == "augment:off-topic"]
    assert counts["off_topic"] == len(off) >= A.OFF_TOPIC_MIN
    refusal = sset.groups[-1][0].items
    assert all(s.items == refusal and not s.turns for s in off)
    file_prompts = {s.prompt for g in sset.groups for s in g}
    assert not file_prompts & {s.prompt for s in off}
    assert A.off_topic_prompts(40, 1) == A.off_topic_prompts(40, 1)
    assert not [q for q in A.off_topic_prompts(200, 1, avoid=["Lisbon"]) if "Lisbon" in q]
    no_block = _sset(write(tmp_path, SYSDEP))
    assert A.augment(no_block, 1337)[1]["off_topic"] == 0
    # eval's probes (tests/data, written separately) are never trained on, nor anything close
    # to one: no generated question shares half its content words with a probe
    generated = [(q, set(A.content_words(q))) for q in A.off_topic_prompts(600, 1337)]
    for probe in REPO.glob("tests/data/**/*probe*"):
        if probe.is_file():
            text = probe.read_text(encoding="utf-8", errors="replace")
            assert not [q for q, _ in generated if q in text], probe
            for x in re.findall(r"<(?:question|paraphrase)[^>]*>([^<]+)<", text):
                a = set(A.content_words(x))
                near = [q for q, b in generated if a and len(a & b) >= 0.5 * len(a | b)]
                assert not near, (probe.name, x, near[:3])


def test_data_stage_stores_augmentation_after_the_files_samples(tmp_path, capsys):
    res = prepare_data(CURRENT, tmp_path / "a", seed=3)
    out = capsys.readouterr().out
    aug = res.manifest["samples"]["augmented"]
    assert f"augment  +{aug['total']} training samples" in out
    from poppins.corpus import tokens as T
    _, index = T.read_bins(tmp_path / "a", "train")
    assert len(index) == res.manifest["samples"]["train"] + aug["total"]
    prepare_data(CURRENT, tmp_path / "b", seed=3, log=None)
    for name in ("train_corpus.bin", "train_index.bin", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    off = prepare_data(CURRENT, tmp_path / "c", seed=3, log=None, surface_forms=0)
    assert off.manifest["samples"]["augmented"]["surface"] == 0
    assert off.manifest["surface_forms"] == 0
    plain = prepare_data(CURRENT, tmp_path / "d", seed=3, log=None, augment=False)
    assert plain.manifest["samples"]["augmented"]["total"] == 0
    _, index = T.read_bins(tmp_path / "d", "train")
    assert len(index) == plain.manifest["samples"]["train"]


SMALL = """<train>
  <prompts>
    <prompt id="p1">What is the boiling point of water?</prompt>
    <prompt id="p2">Which gas do plants take in?</prompt>
    <prompt id="p3">What is the largest planet?</prompt>
    <prompt id="p4">How many legs does a spider have?</prompt>
    <prompt id="p5">What is frozen water called?</prompt>
    <prompt id="p6">Which metal is liquid at room temperature?</prompt>
  </prompts>
  <responses>
    <response id="r1">100 degrees Celsius at sea level.</response>
    <response id="r2">Carbon dioxide.</response>
    <response id="r3">Jupiter.</response>
    <response id="r4">Eight.</response>
    <response id="r5">Ice.</response>
    <response id="r6">Mercury.</response>
  </responses>
  <samples>
    <sample-ids prompt="p1" response="r1"/><sample-ids prompt="p2" response="r2"/>
    <sample-ids prompt="p3" response="r3"/><sample-ids prompt="p4" response="r4"/>
    <sample-ids prompt="p5" response="r5"/><sample-ids prompt="p6" response="r6"/>
  </samples>
</train>"""


TINY = dict(dim=64, layers=2, heads=2, threads=1, val_interval=25, warmup_steps=10, lr=1e-2,
            surface_forms=1)


def test_a_small_file_trains_until_learned_and_greedy_agrees(tmp_path):
    from poppins.training import train
    from poppins.training.generate import exact_answer_rate
    from poppins.training.trainer import load_trained
    path = write(tmp_path, SMALL)
    r = train(path, tmp_path / "o", overrides=dict(TINY, steps=400, min_steps=1),
              log=None, progress_stream=open(os.devnull, "w"))
    assert r.total_steps >= 1 and r.learned_step is not None, r.learned
    assert r.stopped == "learned"
    assert r.steps == r.learned_step + math.ceil(0.25 * r.learned_step)
    assert r.learned == (6, 6)
    # teacher-forced argmax of every answer token == greedy reproduction
    model = load_trained(tmp_path / "o", threads=1)
    ids_rate, misses = exact_answer_rate(model, tmp_path / "o", limit=6)
    assert ids_rate == 1.0, misses


def test_min_steps_holds_after_an_early_learned_step(tmp_path):
    # a file learned before min-steps trains on to min-steps (the margin alone is shorter)
    from poppins.training import train
    r = train(write(tmp_path, SMALL), tmp_path / "o", overrides=dict(TINY, min_steps=400),
              log=None, progress_stream=open(os.devnull, "w"))
    assert r.stopped == "learned" and r.learned_step is not None
    assert r.learned_step + math.ceil(0.25 * r.learned_step) < 400, r.learned_step
    assert r.steps == 400 and r.learned == (6, 6)


def test_training_augmentation_is_disjoint_from_evals_held_out_cases():
    from poppins import evaluation as E
    assert not set(A.GENERIC_SYSTEMS) & set(E.CLIENT_SYSTEM_PROMPTS)
    greetings, thanks = ("hi, ", "hello! ", "hey there, "), (" Thanks!", " thank you", " Thanks.")
    assert not [p for p in A._PREFIXES if p in greetings]
    assert not [x for x in A._SUFFIXES if x.strip(" ,").lower().startswith("thank")]


def test_new_surface_families_stay_disjoint_from_evals():
    from poppins import evaluation as E
    # eval's greeting and thanks words never appear in training's filler or asides
    words = " ".join(A._PREFIXES + A._SUFFIXES + A._ASIDES).casefold()
    assert not [w for w in ("thank", "hello", "hi,", "hey") if w in words]
    assert set(A.FAMILIES).isdisjoint(E.EVAL_FAMILIES)
    r = __import__("random").Random(3)
    assert A._deletion("How do I get a library card?", r) != "How do I get a library card?"
    assert A._synonym("Can I print at the library?", r) != "Can I print at the library?"
    assert A._aside("Is there wifi?", r) != "Is there wifi?"


def test_keyword_forms_only_where_a_word_belongs_to_one_answer():
    from poppins.samples import Sample
    a = Sample(prompt="How do I renew a book?", items=(("text", "Online."),))
    b = Sample(prompt="How do I return a book?", items=(("text", "At the desk."),))
    c = Sample(prompt="Where do I return a book?", items=(("text", "At the desk."),))
    kf = A.keyword_forms([a, b, c], 1)
    assert "renew book" in kf[a.prompt] and "return book" in kf[b.prompt]
    d = Sample(prompt="What is a book?", items=(("text", "Pages."),))
    assert d.prompt not in A.keyword_forms([a, d], 1)   # 'book' belongs to both answers
    assert A.keyword_forms([a, b, c], 1) == kf


def test_detail_forms_ask_about_a_word_only_that_answer_has():
    from poppins.samples import Item, Sample
    t = lambda s: (Item("text", s),)
    wifi = Sample(prompt="Is there free wifi?", items=t("Yes, the network needs no password."))
    park = Sample(prompt="Is there parking?", items=t("Yes, twenty spaces behind the building."))
    card = Sample(prompt="Is the card free?", items=t("Yes, the card needs a photo."))
    df = A.detail_forms([wifi, park, card], 3, 1)
    # 'needs' is in two answers and 'free' in two prompts: neither makes a detail question;
    # the prompt's word is its most telling one ('wifi', not 'free')
    assert len(df[wifi.prompt]) == 2
    assert {re.search(r"wifi (network|password)\b", q).group(1) for q in df[wifi.prompt]} \
        == {"network", "password"}
    assert len(df[card.prompt]) == 1 and "card photo" in df[card.prompt][0]
    assert len(df[park.prompt]) == 3 and all("parking " in q for q in df[park.prompt])
    assert not any("needs" in q or "free" in q for qs in df.values() for q in qs)
    assert df == A.detail_forms([wifi, park, card], 3, 1)            # seeded
    assert all(len(v) == 1 for v in A.detail_forms([wifi, park, card], 1, 1).values())


def test_detail_forms_are_added_for_in_scope_prompts_not_the_refusal():
    sset = _sset(REPO / "tests" / "data" / "eval" / "small" / "train.xml")
    extra, _ = A.augment(sset, 1337)
    everything = [s for g in sset.groups for s in g]
    refusal = sset.groups[-1][0].items
    details = A.detail_forms(everything, 99, 1337)
    asked = {s.prompt for s in extra if s.variant == "augment:surface"}
    surface_details = [q for p, qs in details.items() for q in qs if q in asked]
    assert surface_details
    assert not [s for s in extra if s.variant == "augment:surface" and s.items == refusal
                and s.prompt in surface_details]


def test_lexicon_groups_are_distinct_lowercase_and_apart_from_the_function_phrases():
    from poppins.samples.lexicon import GROUPS, lookup_index
    entries = [w for g in GROUPS for w in g]
    assert 300 <= len(GROUPS) <= 500
    assert len(entries) == len(set(entries))            # no entry in two groups
    for g in GROUPS:
        assert 2 <= len(set(g)) == len(g) <= 5, g
        assert all(w == w.lower() == " ".join(w.split()) and 1 <= len(w.split()) <= 3
                   for w in g), g
    assert not set(entries) & {w for g in A._SYNONYMS for w in g}   # one definition each
    index = lookup_index()
    assert index["kids"] == ("kids", "children") and index is lookup_index()
    assert set(index) == set(entries)


def test_lexicon_swaps_content_words_longest_first_in_the_same_case():
    import random
    got = {A._lexicon("Are kids allowed in?", random.Random(k)) for k in range(30)}
    assert got == {"Are children allowed in?"}
    for k in range(5):   # seeded: the same prompt and Random state give the same variant
        assert A._lexicon("Where do kids play?", random.Random(k)) == \
            A._lexicon("Where do kids play?", random.Random(k))
    assert {A._lexicon("Kids welcome?", random.Random(k)) for k in range(5)} \
        == {"Children welcome?"}
    assert {A._lexicon("KIDS WELCOME?", random.Random(k)) for k in range(5)} \
        == {"CHILDREN WELCOME?"}
    # longest match first: "opening hours" and "car park" are phrases of their own, never
    # "opening <a synonym of hours>" nor "vehicle park"
    hours = {A._lexicon("Opening hours?", random.Random(k)) for k in range(30)}
    assert hours == {"Hours?", "Opening times?", "Business hours?", "Working hours?"}
    parks = {A._lexicon("Where is the car park?", random.Random(k)) for k in range(30)}
    assert "Where is the parking lot?" in parks and not [p for p in parks if "vehicle" in p]
    assert A._lexicon("Zebras xylophone qwerty.", random.Random(1)) == \
        "Zebras xylophone qwerty."


def test_the_lexicon_family_is_drawn_only_for_files_with_many_surface_forms():
    few, many = A.LEXICON_MIN_FORMS - 1, A.LEXICON_MIN_FORMS
    assert "lexicon" not in A.surface_families(few)
    assert A.surface_families(many) == sorted(A.FAMILIES)
    prompt = "Are kids allowed in the car park on weekends?"
    lexical = {"children", "parking lot", "parking garage", "saturdays"}
    assert not [v for v in A.surface_variants(prompt, few, 7)
                if any(w in v.lower() for w in lexical)]
    assert [v for v in A.surface_variants(prompt, 24, 7) if any(w in v.lower() for w in lexical)]
