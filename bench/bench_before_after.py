"""Decode, prefill and training speed of two revisions, measured interleaved in one run.

    python bench/bench_before_after.py --before c38ad9c [--after HEAD] [--rounds 5] [--kernel avx2]

Issue 11's acceptance bar ("decode, prefill and training speed no worse than before"): each
revision is checked out as a git worktree under ``build/before-after/`` (git-ignored) and built
in place the way its Makefile's ``build`` target does (``setup.py build_ext --inplace``, here
with ``-j 2``).  Every measurement runs ``python -m poppins ...`` in a fresh process with
``PYTHONPATH`` set to that worktree and a temporary folder as cwd, so the installed (editable)
poppins is never used and never touched.

Both revisions train on the same data: the example ``train.xml`` bootstrapped once by the
*before* revision, with the same explicit flags (``--dim --layers --heads --context --steps
--batch-size --val-interval --checkpoint-interval -t``).  Flags only one revision has that
would change what is trained are switched off where they exist (``--no-augment``: without it a
revision with augmentation trains a larger corpus, hence a different tokenizer and vocabulary;
``--no-stop-when-learned``), so both do the same work per step.  Each round, for each model
size, alternating before/after (A B): train A, train B, then bench A, bench B on the models
just trained, so the two sides of a pair run seconds apart:

* train: a short run; ms/step is the marginal time between the first and the last progress
  line before the final step (so neither the first step's warm-up nor the final step's
  validation is counted), from the ``step N/T | ... | X ms/step`` lines;
* bench: ``python -m poppins bench -m MODEL -p 128 -n 64 -r 3 -t 1`` (``--reps`` sets -r):
  pp128 (prefill) and tg64 (decode) tokens/s.

Sizes: ``small`` (the example's d128, 4 layers) and ``big`` (d512, 8 layers, batch 1, so that
decode is not all per-token overhead).  The report gives per metric the median over the
rounds of each revision and the ratio of the medians, oriented so that >= 1 means "after is
not slower" (tokens/s: after/before; ms/step: before/after), next to the median (and range)
of the rounds' paired ratios.  ``POPPINS_KERNEL`` is passed through (``--kernel`` sets it),
so e.g. the AVX2 path can be measured on an AVX-512 machine.  Everything runs single-threaded
(``-t 1``); on a shared machine interleaving is what makes the ratios fair, and the load
average is printed at the start, after each step and at the end.  Exit code 1 when a ratio
of medians is below 0.95.

ms/step is a mean over 20 steps, so single slow steps weigh in: before 2026-12-05 the
trainer's gradient norm made two float64 copies of the flat gradients (2 x 216 MB for ``big``),
which on a VM sometimes took 5-15x their usual ~70 ms; it is now summed in 512 KiB chunks
(``poppins.training.trainer.grad_norm``).  An A/A run (``--before X --after X``) shows the
machine's noise.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "build" / "before-after"

#: model sizes: name -> train flags (besides the common ones)
SIZES = {
    "small": {"--dim": 128, "--layers": 4, "--heads": 4, "--batch-size": 6},
    "big": {"--dim": 512, "--layers": 8, "--heads": 8, "--batch-size": 1},
}
#: flags every revision must have (checked against ``train --help``)
REQUIRED = ("--dim", "--layers", "--heads", "--context", "--steps", "--batch-size",
            "--val-interval", "--checkpoint-interval", "--threads")
#: flags passed only where the revision has them: they make it train what the other trains
SAME_WORK = ("--no-augment", "--no-stop-when-learned")

STEP_RE = re.compile(r"^step (\d+)/(\d+) \|.*\| (\d+) ms/step \|", re.M)
PLAN_RE = re.compile(r"^plan .*$", re.M)
BENCH_RE = re.compile(r"^\| (.+?) \| ([\d.]+ MiB) \| ([\d.]+ M) \| (\d+) \| (pp|tg)(\d+) "
                      r"\| ([\d.]+) ± ([\d.]+) \|$", re.M)


def sh(cmd, cwd=None, env=None, check=True) -> str:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    if check and proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(map(str, cmd))}\n"
                 f"{proc.stdout[-3000:]}")
    return proc.stdout


def git(*args) -> str:
    return sh(["git", "-C", ROOT, *args]).strip()


class Tree:
    """One revision: a worktree, built in place, and how to run poppins from it."""

    def __init__(self, label: str, rev: str, kernel: str | None):
        self.label, self.rev = label, rev
        self.sha = git("rev-parse", "--verify", f"{rev}^{{commit}}")
        self.path = BASE / f"{label}-{self.sha[:10]}"
        self.env = dict(os.environ, PYTHONPATH=str(self.path), PYTHONDONTWRITEBYTECODE="1")
        self.env.pop("POPPINS_NO_EXT", None)
        if kernel:
            self.env["POPPINS_KERNEL"] = kernel
        self.extra: list[str] = []

    def checkout_and_build(self) -> None:
        if not (self.path / ".git").exists():
            BASE.mkdir(parents=True, exist_ok=True)
            git("worktree", "prune")
            git("worktree", "add", "--detach", str(self.path), self.sha)
        head = sh(["git", "-C", self.path, "rev-parse", "HEAD"]).strip()
        if head != self.sha:
            sys.exit(f"{self.path} is at {head}, expected {self.sha}")
        t0 = time.perf_counter()
        # the Makefile's build target (setup.py -q build_ext --inplace), two jobs
        sh([sys.executable, "setup.py", "-q", "build_ext", "--inplace", "-j", "2"],
           cwd=self.path, env=self.env)
        print(f"built    {self.label} {self.rev} = {self.sha[:10]} in "
              f"{self.path.relative_to(ROOT)} ({time.perf_counter() - t0:.0f} s)")
        with tempfile.TemporaryDirectory() as tmp:
            where = sh([sys.executable, "-c", "import poppins; print(poppins.__file__)"],
                       cwd=tmp, env=self.env).strip()
        if not Path(where).resolve().is_relative_to(self.path.resolve()):
            sys.exit(f"{self.label}: poppins imported from {where}, not from {self.path}")
        help_text = self.poppins("train", "--help")
        missing = [f for f in REQUIRED if f not in help_text]
        if missing:
            sys.exit(f"{self.label}: train has no {' '.join(missing)}")
        self.extra = [f for f in SAME_WORK if f in help_text]

    def poppins(self, *args, cwd=None) -> str:
        with tempfile.TemporaryDirectory() as tmp:
            return sh([sys.executable, "-m", "poppins", *args], cwd=cwd or tmp, env=self.env)

    def kernels(self) -> str:
        """The compiled path of each extension, from ``poppins info`` (refuses a fallback)."""
        exts = json.loads(self.poppins("info"))["extensions"]
        fallback = [n for n, e in exts.items() if e.get("backend") != "compiled"]
        if fallback:
            sys.exit(f"{self.label}: not compiled: {' '.join(fallback)}")
        return " ".join(f"{n}={e.get('kernel')}" for n, e in exts.items())

    def vocab_size(self, model: Path) -> int:
        code = ("import sys; from poppins.engine.runtime import Engine; "
                "print(Engine.load(sys.argv[1], threads=1).cfg.vocab_size)")
        with tempfile.TemporaryDirectory() as tmp:
            return int(sh([sys.executable, "-c", code, model], cwd=tmp, env=self.env))


def train_flags(size: str, steps: int) -> list[str]:
    flags = {**SIZES[size], "--context": 256, "--steps": steps, "--val-interval": 100000,
             "--checkpoint-interval": 100000, "--threads": 1}
    return [str(x) for kv in flags.items() for x in kv]


def ms_per_step(log: str, steps: int) -> float:
    """Marginal ms/step between the first progress line and the last one before the final
    step (the cumulative averages of the two lines, weighted by their step counts)."""
    pts = [(int(s), int(ms)) for s, total, ms in STEP_RE.findall(log) if int(s) < steps]
    if len(pts) < 2:
        raise SystemExit(f"fewer than two progress lines before step {steps}:\n{log[-2000:]}")
    (s0, m0), (s1, m1) = pts[0], pts[-1]
    return (s1 * m1 - s0 * m0) / (s1 - s0)


def train_run(tree: Tree, train_xml: Path, size: str, steps: int, work: Path):
    """Train one model of ``size``: (ms/step, the plan line, the output folder)."""
    out = work / f"{tree.label}-{size}"
    if out.exists():
        shutil.rmtree(out)
    log = tree.poppins("train", "-i", train_xml, "-o", out, *train_flags(size, steps),
                       *tree.extra)
    plan = PLAN_RE.search(log)
    return ms_per_step(log, steps), (plan.group(0) if plan else "?"), out


def bench_run(tree: Tree, model: Path, reps: int) -> dict:
    """``poppins bench`` on ``model``: pp128 and tg64 tokens/s (means over ``reps``)."""
    bench = tree.poppins("bench", "-m", model, "-p", "128", "-n", "64", "-r", reps, "-t", "1")
    rows = BENCH_RE.findall(bench)
    if len(rows) != 2:
        raise SystemExit(f"{tree.label}: unexpected bench output:\n{bench}")
    return {f"{test}{n} t/s": float(mean) for _name, _mib, _p, _t, test, n, mean, _sd in rows}


def model_line(tree: Tree, model: Path) -> str:
    bench = tree.poppins("bench", "-m", model, "-p", "8", "-n", "0", "-r", "1", "-t", "1")
    name, mib, params = BENCH_RE.findall(bench)[0][:3]
    return f"{name}, {mib}, {params} ternary, vocab {tree.vocab_size(model)}"


def load_avg() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, help="the revision before (e.g. c38ad9c)")
    ap.add_argument("--after", default="HEAD", help="the revision after (default HEAD)")
    ap.add_argument("--rounds", type=int, default=5, help="A/B rounds (default 5)")
    ap.add_argument("--kernel", default=None,
                    help="POPPINS_KERNEL for both (default: the environment's, else the best)")
    ap.add_argument("--steps", type=int, default=40,
                    help="training steps of each run (progress lines every 10; default 40)")
    ap.add_argument("--sizes", default="small,big", help="model sizes (small,big)")
    ap.add_argument("--reps", type=int, default=3,
                    help="bench -r: repetitions of pp128 and tg64 per round (default 3)")
    args = ap.parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    if any(s not in SIZES for s in sizes) or not sizes:
        ap.error(f"--sizes: choose from {','.join(SIZES)}")
    if args.steps < 30:
        ap.error("--steps must be at least 30 (two progress lines before the last step)")
    kernel = args.kernel or os.environ.get("POPPINS_KERNEL") or None

    cpu = next((ln.split(":", 1)[1].strip() for ln in sh(["lscpu"]).splitlines()
                if ln.startswith("Model name")), "?")
    load0 = sh(["uptime"]).strip()
    print(f"cpu      {cpu} ({os.cpu_count()} CPUs)")
    print(f"kernel   POPPINS_KERNEL={kernel or '(unset: best path)'}")
    print(f"load     start: {load0}")
    trees = [Tree("before", args.before, kernel), Tree("after", args.after, kernel)]
    for t in trees:
        t.checkout_and_build()
        print(f"flags    {t.label}: common flags + {' '.join(t.extra) or '(none)'}")
        print(f"kernels  {t.label}: {t.kernels()}")
    if trees[0].sha == trees[1].sha:
        print("note     before and after are the same commit (an A/A run)")

    work = BASE / "runs"
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    if data.exists():
        shutil.rmtree(data)
    trees[0].poppins("bootstrap", "-o", data)
    train_xml = data / "train.xml"

    # each round, each size: train A, train B, then bench A, bench B on the models just
    # trained (the two sides of a pair run seconds apart)
    results = {(t.label, s): [] for t in trees for s in sizes}
    models, plans = {}, {}
    for r in range(args.rounds):
        for s in sizes:
            outs = {}
            for t in trees:
                t0 = time.perf_counter()
                ms, plans[(t.label, s)], outs[t.label] = train_run(t, train_xml, s, args.steps,
                                                                   work)
                results[(t.label, s)].append({"train ms/step": ms})
                print(f"round {r + 1}/{args.rounds} {s:5s} {t.label:6s} train ms/step {ms:.1f}"
                      f"  ({time.perf_counter() - t0:.0f} s, load {load_avg()})", flush=True)
            for t in trees:
                t0 = time.perf_counter()
                res = bench_run(t, outs[t.label], args.reps)
                results[(t.label, s)][-1].update(res)
                print(f"round {r + 1}/{args.rounds} {s:5s} {t.label:6s} "
                      + "  ".join(f"{k} {v:.1f}" for k, v in res.items())
                      + f"  ({time.perf_counter() - t0:.0f} s, load {load_avg()})", flush=True)
                if r == args.rounds - 1:
                    models[(t.label, s)] = model_line(t, outs[t.label])
    load1 = sh(["uptime"]).strip()

    print()
    print(f"before = {args.before} ({trees[0].sha[:10]}), after = {args.after} "
          f"({trees[1].sha[:10]}); {args.rounds} rounds interleaved; bench -r {args.reps} -t 1; "
          f"POPPINS_KERNEL={kernel or '(best)'}; cpu: {cpu}")
    for s in sizes:
        for t in trees:
            print(f"  {s} {t.label}: model {models[(t.label, s)]}; {plans[(t.label, s)]}")
    print()
    print("ratio: of the medians, oriented so that >= 1 means after is not slower "
          "(t/s after/before, ms/step before/after); paired: the median of the rounds' ratios")
    print()
    print("| size | metric | median before | median after | ratio | paired | min..max paired |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    worst = None
    for s in sizes:
        for metric in ("tg64 t/s", "pp128 t/s", "train ms/step"):
            bs = [x[metric] for x in results[("before", s)]]
            as_ = [x[metric] for x in results[("after", s)]]
            inv = metric.endswith("ms/step")
            b, a = statistics.median(bs), statistics.median(as_)
            ratio = b / a if inv else a / b
            pr = [(y / x) if inv else (x / y) for x, y in zip(as_, bs)]
            worst = ratio if worst is None else min(worst, ratio)
            flag = "" if ratio >= 0.95 else " **< 0.95**"
            print(f"| {s} | {metric} | {b:.1f} | {a:.1f} | {ratio:.3f}{flag} "
                  f"| {statistics.median(pr):.3f} | {min(pr):.2f}..{max(pr):.2f} |")
    print()
    print(f"load     start: {load0}")
    print(f"load     end:   {load1}")
    print(f"worst ratio {worst:.3f} ({'meets' if worst >= 0.95 else 'misses'} the 0.95 bar)")
    return 0 if worst >= 0.95 else 1


if __name__ == "__main__":
    sys.exit(main())
