"""Tokenizer speed against Hugging Face ``tokenizers`` and ``tiktoken``, one thread unless said.

    python -m pytest bench/bench_tokenizer.py --benchmark-only -s

On tinyshakespeare (skipped when ../shared is absent):
* training: ``Tokenizer.train`` vs ``tokenizers``' BpeTrainer with the same pre-tokenizer
  (GPT-4 split + byte level), the same number of merges (4,000 and 10,000), no minimum
  frequency on either side;
* encoding MB/s: vs a ``tiktoken.Encoding`` built from our own vocabulary (mergeable ranks
  from our merges) and pattern, and vs ``tokenizers`` loading our tokenizer.json;
* batch encoding with 2 threads (paragraphs), vs one thread and vs tiktoken's batch.
Each test prints "ratio" = peer time / our time (> 1: we are faster) and stores it in
``benchmark.extra_info``.  Targets: training >= tokenizers, encoding >= tiktoken.
"""
from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one thread for tokenizers

import pytest  # noqa: E402

from poppins.special_tokens import SPECIAL_TOKENS  # noqa: E402
from poppins.tokenizer import PATTERN, Tokenizer  # noqa: E402

S = len(SPECIAL_TOKENS)


def _hf_train(text, merges):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import Regex, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=256 + merges, min_frequency=0, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text], trainer)
    return tok


@pytest.fixture(scope="module")
def trained(tinyshakespeare):
    return Tokenizer.train([tinyshakespeare], vocab_size=S + 256 + 10_000, min_frequency=0)


@pytest.mark.parametrize("merges", [4000, 10_000])
def test_train_vs_tokenizers(benchmark, tinyshakespeare, timer, ratio, merges):
    pytest.importorskip("tokenizers")
    import json

    def ours():
        return Tokenizer.train([tinyshakespeare], vocab_size=S + 256 + merges, min_frequency=0,
                               threads=1)

    tok = benchmark.pedantic(ours, rounds=3, iterations=1)
    hf = _hf_train(tinyshakespeare, merges)
    hf_merges = len(json.loads(hf.to_str())["model"]["merges"])
    assert tok.num_merges == merges == hf_merges
    r = ratio(f"train {merges} merges", benchmark.stats.stats.min, "tokenizers",
              timer(lambda: _hf_train(tinyshakespeare, merges)), merges=merges)
    benchmark.extra_info["target_met"] = r >= 1.0


def test_encode_vs_tiktoken(benchmark, tinyshakespeare, trained, timer, ratio):
    tiktoken = pytest.importorskip("tiktoken")
    ranks = {trained.id_to_bytes(i): i - S for i in range(S, trained.vocab_size)}
    enc = tiktoken.Encoding("poppins-bench", pat_str=PATTERN, mergeable_ranks=ranks,
                            special_tokens={})
    ids = benchmark.pedantic(lambda: trained.encode(tinyshakespeare, special=False),
                             rounds=5, iterations=1)
    same = [i + S for i in enc.encode_ordinary(tinyshakespeare)] == ids.tolist()
    ours_s = benchmark.stats.stats.min
    peer_s = timer(lambda: enc.encode_ordinary(tinyshakespeare), 5)
    mb = len(tinyshakespeare.encode("utf-8")) / 1e6
    r = ratio("encode", ours_s, "tiktoken", peer_s, ours_MBps=round(mb / ours_s, 1),
              tiktoken_MBps=round(mb / peer_s, 1), same_ids=same)
    benchmark.extra_info["target_met"] = r >= 1.0


def test_encode_vs_tokenizers(benchmark, tinyshakespeare, trained, timer, ratio, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    hf = tokenizers.Tokenizer.from_file(str(trained.save(tmp_path / "tok")))
    ids = benchmark.pedantic(lambda: trained.encode(tinyshakespeare), rounds=5, iterations=1)
    assert hf.encode(tinyshakespeare).ids == ids.tolist()
    ours_s = benchmark.stats.stats.min
    peer_s = timer(lambda: hf.encode(tinyshakespeare), 3)
    mb = len(tinyshakespeare.encode("utf-8")) / 1e6
    ratio("encode", ours_s, "tokenizers", peer_s, ours_MBps=round(mb / ours_s, 1),
          tokenizers_MBps=round(mb / peer_s, 1))


def test_encode_batch_2_threads(benchmark, tinyshakespeare, trained, timer, ratio):
    tiktoken = pytest.importorskip("tiktoken")
    parts = tinyshakespeare.split("\n\n")
    ranks = {trained.id_to_bytes(i): i - S for i in range(S, trained.vocab_size)}
    enc = tiktoken.Encoding("poppins-bench", pat_str=PATTERN, mergeable_ranks=ranks,
                            special_tokens={})
    benchmark.pedantic(lambda: trained.encode_batch(parts, special=False, threads=2),
                       rounds=5, iterations=1)
    ours_s = benchmark.stats.stats.min
    one_s = timer(lambda: trained.encode_batch(parts, special=False, threads=1), 5)
    peer_s = timer(lambda: enc.encode_ordinary_batch(parts, num_threads=2), 5)
    mb = len(tinyshakespeare.encode("utf-8")) / 1e6
    ratio("encode_batch 2 threads", ours_s, "tiktoken_2_threads", peer_s,
          ours_MBps=round(mb / ours_s, 1), ours_1_thread_MBps=round(mb / one_s, 1),
          speedup_2_vs_1_thread=round(one_s / ours_s, 2), texts=len(parts))
