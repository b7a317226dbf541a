"""The trainer: schedules, packing, determinism, checkpoints, resume after SIGKILL/SIGTERM."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from poppins.corpus import tokens as T
from poppins.errors import PoppinsError
from poppins.training import TrainConfig, train
from poppins.training.checkpoint import checkpoint_path, load_checkpoint
from poppins.training.data import EpochStream, PackedSamples
from poppins.training.schedule import lr_wd_at

REPO = Path(__file__).resolve().parent.parent
CURRENT = REPO / "tests" / "data" / "current" / "train.xml"
TINY = dict(dim=32, layers=1, heads=2, batch_size=4, steps=12, val_interval=4,
            checkpoint_interval=4, warmup_steps=2, lr=3e-3, threads=1)


def test_schedules():
    cfg = TrainConfig(lr=1.0, min_lr_ratio=0.1, warmup_steps=10)
    lrs = [lr_wd_at(s, 110, cfg)[0] for s in range(110)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    two = TrainConfig(lr=1.0, warmup_steps=0, schedule="two-stage", weight_decay=0.1)
    first, second = lr_wd_at(10, 100, two), lr_wd_at(60, 100, two)
    assert first[1] == 0.1 and second[1] == 0.0 and second[0] < 0.4 + 1e-9 < first[0]


def test_config_validation_and_constants():
    with pytest.raises(PoppinsError, match="multiple of heads"):
        TrainConfig(dim=30, heads=4).validate()
    cfg = TrainConfig().with_constants({"learning-rate": 0.01, "embedding-dim": 64,
                                        "loss-scale-source": 0.5, "mixed-precision": True})
    assert (cfg.lr, cfg.dim, cfg.loss_scale_source) == (0.01, 64, 0.5)


def _packed(tmp_path, context=64):
    from poppins.datastage import prepare_data
    prepare_data(CURRENT, tmp_path / "d", log=None)
    ids, index = T.read_bins(tmp_path / "d", "train")
    return PackedSamples(ids, index, context, scales=(1.0, 0.5, 2.0)), ids, index


def test_packing_masks_targets_and_segments(tmp_path):
    packed, ids, index = _packed(tmp_path)
    rows = packed.rows(np.arange(len(packed)))
    assert sorted(int(s) for r in rows for s in r) == list(range(len(packed)))
    assert all(int(packed.counts[r].sum()) <= 64 for r in rows)
    b = packed.fill(rows[:3])
    for r, row in enumerate(rows[:3]):
        o = 0
        for k, s in enumerate(row.tolist()):
            n, st, bd = int(packed.counts[s]), int(packed.starts[s]), int(packed.bounds[s])
            seq = np.asarray(ids[st:st + n])
            assert (b.tokens[r, o:o + n] == seq).all() and (b.segments[r, o:o + n] == k).all()
            assert (b.targets[r, o:o + n - 1] == seq[1:]).all() and b.targets[r, o + n - 1] == -1
            # learned targets: from the boundary to </sample> inclusive
            assert b.mask[r, o:o + n].sum() == n - bd
            assert b.mask[r, o + bd - 2] == 0 and b.mask[r, o + bd - 1] == 1
            o += n
        assert (b.mask[r, o:] == 0).all() and (b.segments[r, o:] == len(row)).all()
    assert set(np.unique(b.weights[b.mask > 0])) <= {1.0, 0.5, 2.0}


def test_epoch_stream_is_seeded_and_continues_across_epochs(tmp_path):
    packed, _, _ = _packed(tmp_path)
    a, b = EpochStream(packed, 3), EpochStream(packed, 3)
    n0 = len(a.epoch_rows(0))
    rows, epoch, row = a.take(0, n0 - 1, 3)
    assert (epoch, row) == (1, 2) and len(rows) == 3
    assert [r.tolist() for r in a.epoch_rows(1)] == [r.tolist() for r in b.epoch_rows(1)]
    assert [r.tolist() for r in a.epoch_rows(0)] != [r.tolist() for r in a.epoch_rows(1)]


@pytest.mark.parametrize("threads", [1, 2])
def test_same_seed_same_loss_curve_and_checkpoint(tmp_path, threads):
    tiny = dict(TINY, threads=threads)
    r1 = train(CURRENT, tmp_path / "a", overrides=tiny, log=None, progress_stream=open(os.devnull, "w"))
    r2 = train(CURRENT, tmp_path / "b", overrides=tiny, log=None, progress_stream=open(os.devnull, "w"))
    assert r1.history == r2.history and len(r1.history) == 12
    assert r1.history[-1][1] < r1.history[0][1]
    _, a1 = load_checkpoint(checkpoint_path(tmp_path / "a"))
    _, a2 = load_checkpoint(checkpoint_path(tmp_path / "b"))
    assert np.array_equal(a1["params"], a2["params"])
    r3 = train(CURRENT, tmp_path / "c", seed=2, overrides=tiny, log=None,
               progress_stream=open(os.devnull, "w"))
    assert r3.history != r1.history


def test_resume_refuses_changed_data(tmp_path):
    train(CURRENT, tmp_path / "a", overrides=dict(TINY, steps=4), log=None,
          progress_stream=open(os.devnull, "w"))
    with pytest.raises(PoppinsError, match="data changed"):
        train(CURRENT, tmp_path / "a", seed=99, resume=True, overrides=TINY, log=None)
    with pytest.raises(PoppinsError, match="no checkpoint"):
        train(CURRENT, tmp_path / "fresh", resume=True, overrides=TINY, log=None)


def test_resume_refuses_changed_options_but_takes_threads(tmp_path):
    train(CURRENT, tmp_path / "a", overrides=dict(TINY, steps=4), log=None,
          progress_stream=open(os.devnull, "w"))
    with pytest.raises(PoppinsError, match=r"cannot change steps 5 \(the checkpoint's run has 4\)"):
        train(CURRENT, tmp_path / "a", resume=True, overrides=dict(TINY, steps=5), log=None)
    r = train(CURRENT, tmp_path / "a", resume=True, overrides=dict(TINY, steps=4, threads=2),
              log=None, progress_stream=open(os.devnull, "w"))
    assert len(r.history) == 4


def test_corrupt_checkpoint_is_refused(tmp_path):
    train(CURRENT, tmp_path / "a", overrides=dict(TINY, steps=4), log=None,
          progress_stream=open(os.devnull, "w"))
    p = checkpoint_path(tmp_path / "a")
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(PoppinsError, match="checksum"):
        train(CURRENT, tmp_path / "a", resume=True, overrides=TINY, log=None)


def _cli(out: Path, *extra: str) -> subprocess.Popen:
    flags = ["--dim", "32", "--layers", "1", "--heads", "2", "--batch-size", "4", "--steps", "40",
             "--checkpoint-interval", "5", "--val-interval", "10", "--warmup-steps", "2",
             "-t", "1"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "poppins", "train", "-i", str(CURRENT),
                             "-o", str(out), *flags, *extra], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(out: Path, proc, min_step: int, timeout=120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        p = checkpoint_path(out)
        if p.exists():
            try:
                if load_checkpoint(p)[0]["step"] >= min_step:
                    return
            except PoppinsError:
                pass
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("no checkpoint in time")


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    full = _cli(tmp_path / "full")
    assert full.wait(timeout=300) == 0, full.stderr.read()
    killed = _cli(tmp_path / "killed")
    _wait_for_checkpoint(tmp_path / "killed", killed, 10)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    step_at_kill = load_checkpoint(checkpoint_path(tmp_path / "killed"))[0]["step"]
    assert step_at_kill < 40
    resumed = _cli(tmp_path / "killed", "--resume")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"resume   from step {step_at_kill}" in out
    h_full, a_full = load_checkpoint(checkpoint_path(tmp_path / "full"))
    h_res, a_res = load_checkpoint(checkpoint_path(tmp_path / "killed"))
    assert h_res["step"] == h_full["step"] == 40
    assert np.array_equal(a_full["params"], a_res["params"])
    assert np.array_equal(a_full["adam_v"], a_res["adam_v"])
    assert h_full["history"] == h_res["history"]


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_ctrl_c_leave_a_usable_checkpoint(tmp_path, sig, code):
    proc = _cli(tmp_path / "o", "--steps", "100000")
    _wait_for_checkpoint(tmp_path / "o", proc, 5)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err and "continue with --resume" in out
    header, _ = load_checkpoint(checkpoint_path(tmp_path / "o"))
    assert 5 <= header["step"] < 100000


def test_progress_lines_plain_and_tty():
    import io
    from poppins.training.progress import Progress

    plain = io.StringIO()
    p = Progress(20, stream=plain, log_interval=10, tty=False)
    for step in range(1, 21):
        p.update(step, 1.0 / step, 0.5 if step == 15 else None, 1e-3, 100, keep=step == 15)
    lines = plain.getvalue().splitlines()
    assert [l.split(" |")[0] for l in lines] == ["step 10/20", "step 15/20", "step 20/20"]
    assert all(k in lines[1] for k in ("loss", "val 0.5000", "lr 1.00e-03", "ms/step", "tok/s", "ETA"))
    tty = io.StringIO()
    p = Progress(3, stream=tty, tty=True)
    for step in (1, 2, 3):
        p.update(step, 1.0, None, 1e-3, 10)
    p.message("done")
    out = tty.getvalue()
    assert out.count("\r") == 3 and out.endswith("\ndone\n")


def test_a_conversation_trains_and_each_turn_gets_its_answer(tmp_path):
    from poppins.training.generate import exact_answer_rate
    from poppins.training.trainer import load_trained

    conv = REPO / "tests" / "data" / "conversation" / "train.xml"
    train(conv, tmp_path / "c", overrides=dict(dim=64, layers=2, heads=2, batch_size=2,
                                               steps=400, warmup_steps=10, lr=1e-2, threads=1,
                                               val_interval=50, checkpoint_interval=400),
          log=None, progress_stream=open(os.devnull, "w"))
    model = load_trained(tmp_path / "c", threads=1)
    rate, misses = exact_answer_rate(model, tmp_path / "c", all_turns=True)
    assert rate == 1.0, misses
