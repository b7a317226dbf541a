"""The training loop: data stage, then AdamW on packed batches, checkpoints, resume.

    python -m poppins train -i train.xml -o .poppins

Deterministic: the same seed and thread count give the same loss curve, bit for bit, and a
run resumed from a checkpoint (``--resume``) ends with the same weights as one that was never
interrupted.  Ctrl+C or SIGTERM finish the current step, write a checkpoint and stop.

Under ``mpirun -n N`` the run is data-parallel (poppins.training.distributed): the same
result as one process at ``--grad-accum N`` times as many micro-batches.
"""
from __future__ import annotations

import hashlib
import json
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from .._version import __version__
from ..corpus import tokens as T
from ..datastage import MANIFEST, MIN_CONTEXT, prepare_data
from ..errors import PoppinsError
from ..fileio import atomic_write_text
from ..model import AdamW, Model, ModelConfig
from ..threads import rank_default_threads, resolve_threads
from . import distributed as D
from .checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import EpochStream, PackedSamples, batches_in_order
from .export import export_model
from .progress import Progress, fmt_duration
from .schedule import lr_wd_at


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    total_steps: int
    seconds: float
    train_loss: float
    val_loss: Optional[float]
    stopped: str                      # "done" | "learned" | "aim-loss" | "SIGINT" | "SIGTERM"
    checkpoint: Path
    model_file: Optional[Path]
    config: TrainConfig
    model_config: ModelConfig
    history: List[list] = field(default_factory=list)   # [step, loss, val or None]
    learned_step: Optional[int] = None   # first check at which every training answer was right
    learned: Optional[tuple] = None      # (answers reproduced, answers) at the last check


class _StopFlag:
    """Ctrl+C / SIGTERM -> finish the step, checkpoint, stop.  A second Ctrl+C aborts."""

    def __init__(self):
        self.signame: Optional[str] = None
        self._old = {}

    def _handler(self, signum, _frame):
        if self.signame is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signame = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


_NORM_CHUNK = 1 << 16   # float64 elements per chunk: 512 KiB, stays in L2


def grad_norm(g):
    """The L2 norm of the flat float32 gradient, summed in float64.

    Chunked so no float64 copy of the whole gradient is made: at d 512 with 8 layers a
    full copy is two 216 MB allocations per step, and on a VM their page faults sometimes
    cost 5-15x the ~70 ms of the sum itself; chunked, the sum takes a tenth of that. The
    norm differs from a one-shot float64 dot only in summation order (~1e-15 relative)."""
    total = 0.0
    for i in range(0, g.size, _NORM_CHUNK):
        c = g[i:i + _NORM_CHUNK].astype(np.float64)
        total += float(np.dot(c, c))
    return math.sqrt(total)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _round_up(n: int, k: int) -> int:
    return (n + k - 1) // k * k


def evaluate(model: Model, packed: PackedSamples, batch_size: int,
             group=D.SOLO) -> Optional[float]:
    """Mask-weighted mean loss over every sample of ``packed`` (None when it is empty).
    Under MPI batch i is evaluated by rank i % N and the sums are taken in batch order."""
    parts = []
    for i, b in enumerate(batches_in_order(packed, batch_size)):
        if i % group.size != group.rank:
            continue
        m = float(b.mask.sum())
        if m == 0:
            continue
        parts.append((i, model.forward(b.tokens, b.targets, mask=b.mask, weights=b.weights,
                                       segments=b.segments) * m, m))
    model.release_buffers()
    if group.size > 1:
        parts = sorted(p for ps in group.allgather(parts) for p in ps)
    total, weight = 0.0, 0.0
    for _i, lm, m in parts:
        total += lm
        weight += m
    return total / weight if weight else None


def answers_reproduced(model: Model, packed: PackedSamples, batch_size: int):
    """(answers reproduced, answers): an answer is reproduced when the argmax of the
    teacher-forced logits equals the target at every answer token, exactly what greedy
    decoding from its prompt gives.  Samples with the same prompt stream (system and prompt)
    count as one answer, reproduced when one of them is (greedy can give only one)."""
    from ..model import kernels as K
    head = model._head_matrix()
    rows = packed.rows(np.arange(len(packed), dtype=np.int64))
    ok = np.zeros(len(packed), dtype=bool)
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        b = packed.fill(chunk)
        B, Tn = b.tokens.shape
        with K.blas_context(model.threads):
            bf = model._trunk(model._check_tokens(b.tokens), b.segments)
            hf = np.empty_like(bf.x[-1])
            rs = np.empty(bf.N, dtype=model.dtype)
            K.rmsnorm_quant_fwd(bf.x[-1], model.params["final_norm"], hf, rs,
                                model.cfg.norm_eps, False, model.threads)
            pred = np.empty(bf.N, dtype=np.int64)
            for j in range(0, bf.N, 512):          # logits a slice at a time (vocab-wide)
                pred[j:j + 512] = np.argmax(hf[j:j + 512] @ head.T, axis=1)
        wrong = (pred.reshape(B, Tn) != b.targets) & (b.mask > 0)
        for r, row in enumerate(chunk):
            bad = set(b.segments[r][wrong[r]].tolist())
            for k, sample in enumerate(row.tolist()):
                ok[sample] = k not in bad
    model.release_buffers()
    by_prompt: Dict[bytes, bool] = {}
    for sample in range(len(packed)):
        st = int(packed.starts[sample])
        key = np.asarray(packed.ids[st:st + int(packed.bounds[sample])]).tobytes()
        by_prompt[key] = by_prompt.get(key, False) or bool(ok[sample])
    return sum(by_prompt.values()), len(by_prompt)


def _lr_wd(step: int, total: int, cfg, learned_at: Optional[int]):
    """The schedule; once learned (at ``learned_at``), the rate falls linearly from its value
    there to the floor at ``total`` (the learned step plus the margin)."""
    if learned_at is None or step < learned_at:
        return lr_wd_at(step, total, cfg)
    lr0, wd = lr_wd_at(learned_at, total, cfg)
    floor = min(lr0, cfg.lr * cfg.min_lr_ratio)
    frac = (step - learned_at + 1) / max(1, total - learned_at)
    return lr0 + (floor - lr0) * min(frac, 1.0), wd


def model_config_for(cfg: TrainConfig, vocab_size: int, context: int) -> ModelConfig:
    return ModelConfig(vocab_size=vocab_size, dim=cfg.dim, layers=cfg.layers, heads=cfg.heads,
                       kv_heads=cfg.kv_heads, attention=cfg.attention, context_length=context,
                       quantize=cfg.quantize)


def train(train_xml="train.xml", out_dir=".poppins", *, seed: int = 1337,
          val_fraction: Optional[float] = None, max_xml_mb: float = 256, resume: bool = False,
          overrides: Optional[Dict] = None, allow_outside_imports: bool = True,
          log: Optional[Callable[[str], None]] = print, progress_stream=None) -> TrainResult:
    """Run the data stage, then train.  ``overrides`` are TrainConfig fields (the CLI flags).
    Under an MPI launcher every rank calls this (data-parallel; see training.distributed)."""
    overrides = TrainConfig.check_overrides(overrides)   # unknown keys, bad values: before any work
    group = D.current_group()
    if not group.is_root:
        log = None
    say = log or (lambda _m: None)
    out_dir = Path(out_dir)

    def setup():
        return _setup(train_xml, out_dir, seed, val_fraction, max_xml_mb, resume, overrides,
                      log, group.size, allow_outside_imports)

    cfg, manifest, manifest_sha, ckpt_state = D.on_root(group, setup)
    if not group.is_root:   # the bins must be the ones rank 0 wrote (shared or copied folder)
        try:
            mine = _sha256(out_dir / MANIFEST)
        except OSError:
            mine = None
        D.all_ok(group, None if mine == manifest_sha else
                 f"{out_dir / MANIFEST} on host {group.host} is "
                 f"{'missing' if mine is None else 'not the one rank 0 wrote'}; use an output "
                 f"folder shared by every machine, or copy it after `train --data-only`")
    elif group.size > 1:
        D.all_ok(group, None)
    with group.guard():
        return run(out_dir, cfg, manifest, manifest_sha, ckpt_state, say, progress_stream,
                   group=group)


def _setup(train_xml, out_dir: Path, seed, val_fraction, max_xml_mb, resume, overrides, log,
           ranks: int, allow_outside_imports: bool = True):
    """The data stage and the run's TrainConfig (and checkpoint when resuming)."""
    data = prepare_data(train_xml, out_dir, seed=seed, val_fraction=val_fraction,
                        max_xml_mb=max_xml_mb, log=log,
                        allow_outside_imports=allow_outside_imports,
                        surface_forms=overrides.get("surface_forms"),
                        augment=overrides.get("augment"))
    manifest = data.manifest
    manifest_sha = _sha256(out_dir / MANIFEST)
    cfg = TrainConfig(seed=seed).with_constants(manifest["constants"])
    cfg = TrainConfig.from_dict(dict(cfg.to_dict(), **(overrides or {})))
    if ranks > 1:   # grad_accum of the saved config: micro-batches per step of all ranks
        cfg = cfg.with_overrides({"grad_accum": cfg.grad_accum * ranks})
    ckpt_state = None
    if resume:
        path = checkpoint_path(out_dir)
        if not path.exists():
            raise PoppinsError(f"--resume: no checkpoint at {path}; train without --resume")
        header, arrays = load_checkpoint(path)
        if header.get("manifest_sha256") != manifest_sha:
            raise PoppinsError(
                f"--resume: the data changed since {path} was written (train.xml, its imports, "
                f"the seed or --val-fraction differ); train again without --resume")
        saved = header["train_config"]
        changed = []   # a resumed run continues the checkpoint's run exactly: only -t may differ
        for name, value in (overrides or {}).items():
            if name == "threads" or value is None:
                continue
            asked = value * ranks if name == "grad_accum" else value
            if name in saved and saved[name] != asked:
                changed.append(f"{name} {asked!r} (the checkpoint's run has {saved[name]!r})")
        if changed:
            raise PoppinsError(f"--resume continues the run of {path} exactly and cannot change "
                               f"{'; '.join(changed)}; drop those options, or train again "
                               f"without --resume")
        threads = (overrides or {}).get("threads")
        cfg = TrainConfig.from_dict(dict(saved, **({"threads": threads} if threads else {})))
        if ranks > 1:   # memmaps of rank 0's file: sent to the other ranks as arrays
            arrays = {k: np.array(v) for k, v in arrays.items()}
        ckpt_state = (header, arrays)
    return cfg, manifest, manifest_sha, ckpt_state


def run(out_dir: Path, cfg: TrainConfig, manifest: Dict, manifest_sha: str, ckpt_state,
        say: Callable[[str], None], progress_stream=None, group=D.SOLO) -> TrainResult:
    if cfg.threads or group.size == 1:
        threads = resolve_threads(cfg.threads)
    else:
        threads = rank_default_threads(group.local_size)
    longest = max(v["longest_sample"] for v in manifest["tokens"].values())
    context = cfg.context or min(max(MIN_CONTEXT, _round_up(longest, 64)), cfg.context_cap)
    scales = (cfg.loss_scale_response, cfg.loss_scale_source, cfg.loss_scale_code)
    train_ids, train_index = T.read_bins(out_dir, "train")
    packed = PackedSamples(train_ids, train_index, context, scales)
    # the file's own training samples come first in the bins (augmentation after them)
    own = int(manifest["samples"]["train"])
    own_packed = PackedSamples(train_ids, train_index[:own], context, scales)
    val_ids, val_index = T.read_bins(out_dir, "val")
    val_packed = PackedSamples(val_ids, val_index, context, scales)
    for split, p in (("train", packed), ("validation", val_packed)):
        for pos, n in zip(p.too_long.tolist(), p.too_long_counts.tolist()):
            say(f"warning  {split} sample {pos + 1} has {n} tokens, more than the context "
                f"({context}); skipped (raise --context)")
    if len(packed) == 0:
        raise PoppinsError(f"no training sample fits in the context of {context} tokens; "
                           f"raise --context")
    mcfg = model_config_for(cfg, manifest["tokenizer"]["vocab_size"], context)
    stream = EpochStream(packed, cfg.seed)
    rows0 = stream.epoch_rows(0)
    per_step = cfg.batch_size * cfg.grad_accum
    steps_per_epoch = max(1, math.ceil(len(rows0) / per_step))
    own_rows = len(own_packed.rows(np.arange(len(own_packed), dtype=np.int64)))
    total = cfg.steps or max(cfg.min_steps, math.ceil(cfg.epochs * own_rows / per_step))
    padding = 1.0 - packed.tokens / (len(rows0) * context)

    model = Model(mcfg, seed=cfg.seed, threads=threads)
    opt = AdamW(model, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                weight_decay=cfg.weight_decay)
    step, epoch, row, history = 0, 0, 0, []
    learned_at, learned = None, None
    if ckpt_state is not None:
        header, arrays = ckpt_state
        if ModelConfig.from_dict(header["model_config"]) != mcfg:
            raise PoppinsError("--resume: the checkpoint's model does not match this run's")
        model.flat_params[...] = arrays["params"]
        opt.m[...] = arrays["adam_m"]
        opt.v[...] = arrays["adam_v"]
        opt.t = int(header["adam_t"])
        step, epoch, row = int(header["step"]), int(header["epoch"]), int(header["row"])
        history = [list(h) for h in header.get("history", [])]
        total = int(header["total_steps"])
        learned_at = header.get("learned_step")
        say(f"resume   from step {step} of {total} ({checkpoint_path(out_dir)})")
    if group.is_root:
        atomic_write_text(out_dir / "config.json", json.dumps(
            {"poppins_version": __version__, "model": mcfg.to_dict(), "train": cfg.to_dict()},
            indent=2, sort_keys=True) + "\n")
    ranks = f"; {threads} thread(s)"
    if group.size > 1:
        ranks = (f"; {group.size} MPI ranks x {threads} thread(s), up to "
                 f"{-(-cfg.grad_accum // group.size)} micro-batch(es) per rank and step")
        if cfg.grad_accum < group.size:
            idle = (f"rank {cfg.grad_accum} stays" if cfg.grad_accum == group.size - 1
                    else f"ranks {cfg.grad_accum} to {group.size - 1} stay")
            say(f"note     a step has {cfg.grad_accum} micro-batch(es) (--grad-accum of the "
                f"checkpoint): {idle} idle")
    say(f"model    {model.num_params():,} parameters: d={mcfg.dim}, {mcfg.layers} layers, "
        f"{mcfg.heads} heads, {mcfg.attention}, context {context}, vocab {mcfg.vocab_size}, "
        f"{'ternary' if mcfg.quantize else 'float'} weights{ranks}")
    say(f"plan     {total} steps of {per_step} x {context} tokens "
        f"({steps_per_epoch} steps/epoch, {len(packed)} samples, padding {padding:.0%}); "
        f"lr {cfg.lr:g} {cfg.schedule}, warmup {cfg.warmup_steps}"
        + (f"; stops {cfg.learned_margin:g} x its steps after every training answer is "
           f"reproduced (checked every {cfg.val_interval} steps), not before step "
           f"{min(total, cfg.min_steps)}" if cfg.stop_when_learned
           else ""))

    ckpt = checkpoint_path(out_dir)

    def save() -> None:
        if not group.is_root:
            return
        save_checkpoint(ckpt, {
            "poppins_version": __version__, "train_config": cfg.to_dict(),
            "model_config": mcfg.to_dict(), "manifest_sha256": manifest_sha, "step": step,
            "total_steps": total, "epoch": epoch, "row": row, "adam_t": opt.t,
            "history": history, "learned_step": learned_at},
            {"params": model.flat_params, "adam_m": opt.m, "adam_v": opt.v})

    prog = Progress(total, start_step=step, stream=progress_stream, log_interval=cfg.log_interval,
                    quiet=not group.is_root, tty=False if group.size > 1 else None)
    t0 = time.perf_counter()
    stopped, loss, val = "done", float("nan"), None
    if history:
        loss, val = history[-1][1], history[-1][2]
    with _StopFlag() as flag:
        while step < total:
            lr, wd = _lr_wd(step, total, cfg, learned_at)
            loss_sum, real = 0.0, 0
            micro_rows = []
            for micro in range(cfg.grad_accum):
                rows, epoch, row = stream.take(epoch, row, cfg.batch_size)
                micro_rows.append(rows)
            if group.size > 1:   # micro-batch m on rank m % N, gradients summed in order
                loss_sum, real = group.accumulate(model, packed, micro_rows)
                micro_rows = []
            for micro, rows in enumerate(micro_rows):
                b = packed.fill(rows)
                loss_sum += model.forward(b.tokens, b.targets, mask=b.mask, weights=b.weights,
                                          segments=b.segments)
                model.backward(accumulate=micro > 0)
                real += b.real_tokens
            loss = loss_sum / cfg.grad_accum
            if not math.isfinite(loss):
                raise PoppinsError(f"training diverged at step {step + 1} (loss {loss}); lower "
                                   f"the learning rate (--lr, now {cfg.lr:g})")
            g = model.flat_grads
            if cfg.grad_accum > 1:
                g /= cfg.grad_accum
            if cfg.grad_clip > 0:
                norm = grad_norm(g)
                if norm > cfg.grad_clip:
                    g *= cfg.grad_clip / norm
            opt.step(lr=lr, weight_decay=wd)
            step += 1
            val = None
            if len(val_packed) and (step % cfg.val_interval == 0 or step == total):
                val = evaluate(model, val_packed, cfg.batch_size, group)
            history.append([step, loss, val])
            prog.update(step, loss, val, lr, real, keep=val is not None)
            if cfg.stop_when_learned and learned_at is None and (
                    step % cfg.val_interval == 0 or step == total):
                learned = answers_reproduced(model, own_packed, cfg.batch_size)
                if learned[0] == learned[1]:
                    learned_at = step
                    # the margin, and never fewer than min-steps (a small file is learned
                    # early; its conversations and surface forms need the steps after it)
                    total = min(total, max(cfg.min_steps,
                                           step + math.ceil(cfg.learned_margin * step)))
                    prog.message(f"learned  every training answer ({learned[1]}) reproduced "
                                 f"at step {step}; {total - step} more steps (margin"
                                 f"{', min-steps' if total == cfg.min_steps else ''})")
            watched = val if len(val_packed) else loss
            if cfg.aim_loss is not None and watched is not None and watched <= cfg.aim_loss:
                stopped = "aim-loss"
            signame = group.agree_stop(flag.signame)
            if signame:
                stopped = signame
            if stopped == "done" and learned_at is not None and step >= total:
                stopped = "learned"
            if stopped != "done" or step % cfg.checkpoint_interval == 0 or step == total:
                save()
            if stopped not in ("done", "learned"):
                break
    seconds = time.perf_counter() - t0
    model.release_buffers()
    if stopped not in ("SIGINT", "SIGTERM") and len(own_packed):
        learned = answers_reproduced(model, own_packed, cfg.batch_size)
    model_file = None
    if stopped not in ("SIGINT", "SIGTERM") and group.is_root:
        model_file = export_model(
            model, out_dir / "model.poppins",
            tokenizer_json=(out_dir / "tokenizer.json").read_text(encoding="utf-8"),
            sources=manifest.get("sources") or {}, default_system=manifest.get("default_system"))
    if stopped in ("SIGINT", "SIGTERM"):
        prog.message(f"stopped  by {stopped} at step {step}/{total}; checkpoint {ckpt} "
                     f"(continue with --resume)")
    else:
        if stopped == "aim-loss":
            prog.message(f"aim      reached loss {cfg.aim_loss:g} at step {step}")
        if learned is not None:
            prog.message(f"answers  {learned[0]}/{learned[1]} training answers reproduced by "
                         f"greedy decoding"
                         + (f"; the file was learned at step {learned_at}" if learned_at
                            else "; not learned within the plan (raise --steps or --epochs)"))
        vals = [h[2] for h in history if h[2] is not None]
        prog.message(f"done     {step} steps in {fmt_duration(seconds)}; loss {loss:.4f}"
                     + (f", val {vals[-1]:.4f}" if vals else "") + f"; checkpoint {ckpt}")
        if group.size > 1:
            prog.message(f"mpi      {group.size} ranks; gradient exchange (and waiting for the "
                         f"slowest rank) {group.comm_seconds / max(seconds, 1e-9):.1%} of the "
                         f"time on rank 0")
        prog.message(f"model    {model_file} (ask it: python -m poppins infer -m {out_dir} "
                     f"-p \"...\")")
    last_val = next((h[2] for h in reversed(history) if h[2] is not None), None)
    return TrainResult(out_dir=out_dir, steps=step, total_steps=total, seconds=seconds,
                       train_loss=loss, val_loss=last_val, stopped=stopped, checkpoint=ckpt,
                       model_file=model_file, learned_step=learned_at, learned=learned,
                       config=cfg, model_config=mcfg, history=history)


def load_trained(out_dir, threads: Optional[int] = None) -> Model:
    """The model of ``OUT/checkpoints/last.ckpt`` (for greedy checks until the model file)."""
    header, arrays = load_checkpoint(checkpoint_path(out_dir))
    model = Model(ModelConfig.from_dict(header["model_config"]), threads=threads, init=False)
    model.flat_params[...] = arrays["params"]
    return model
