#!/usr/bin/env python3
"""make test-wheels: every wheel of dist/ installed into a clean environment of its architecture
and checked there.

    python3 scripts/test_wheels.py                 # every wheel in dist/, every CPU below
    python3 scripts/test_wheels.py --quick         # one emulated CPU per architecture (CI)

Environments: x86_64, a fresh venv (numpy, regex, lxml and pytest from the package index);
ARM, Debian's own Python of that release with Debian's numpy/regex/lxml/pytest for that
architecture (scripts/arm_sysroot.sh), run under qemu-user, the wheel installed by pip with the
target's --platform/--python-version into a directory of its own (nothing from this checkout
is importable there).  CPUs (each its own kernel path, checked in `poppins info`):

    x86_64            host, POPPINS_KERNEL=avx2 and POPPINS_KERNEL=scalar
    aarch64           qemu -cpu cortex-a53 (neon: Pi 3, Zero 2 W), cortex-a76 (neondot: Pi 5)
    armv7l            qemu -cpu cortex-a7 (32-bit NEON: Pi 2, and Pi OS 32-bit on later Pis)

Checks per wheel and CPU: `python -m poppins info` (every extension compiled; the kernel path);
greedy token ids of a model trained on x86 (by the x86 wheel, here) identical to the x86 AVX2
ids; kernel, engine and model-file tests (tests/test_ternary.py, test_engine.py,
test_modelfile.py from the sdist);
on one CPU per ARM architecture `bootstrap` + `train --steps 20` + `infer` end to end.
--quick keeps the first CPU of each architecture for the tests and the end-to-end run (the
token ids are still compared on every CPU: that part is cheap).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "wheels" / "test"
SUITE_OF_PY = {"311": "bookworm", "313": "trixie"}
ARCH_OF_PLAT = {"aarch64": "arm64", "armv7l": "armhf"}
QEMU = {"arm64": "qemu-aarch64", "armhf": "qemu-arm"}
# (label, QEMU_CPU or POPPINS_KERNEL, the ternary kernel `info` must name)
CPUS = {
    "x86_64": [("avx2", {"POPPINS_KERNEL": "avx2"}, "avx2"),
               ("scalar", {"POPPINS_KERNEL": "scalar"}, "scalar")],
    "arm64": [("cortex-a53", {"QEMU_CPU": "cortex-a53"}, "neon"),
              ("cortex-a76", {"QEMU_CPU": "cortex-a76"}, "neondot")],
    "armhf": [("cortex-a7", {"QEMU_CPU": "cortex-a7"}, "neon")],
}
# the kernel paths tests/test_ternary.py must find on each CPU (POPPINS_EXPECT_KERNELS)
EXPECT = {"avx2": None, "scalar": None, "cortex-a53": "neon,scalar",
          "cortex-a76": "neondot,neon,scalar", "cortex-a7": "neon,scalar"}
PROMPTS = ["What is poppins?", "How do I train a bigger model?", "Hello"]
MAX_TOKENS = 24
E2E_TIMEOUT = 900
TEST_TIMEOUT = 1500

IDS_SCRIPT = """
import json, sys
from poppins.api import Model
m = Model.load(sys.argv[1], threads=1)
out = [m.complete(p, temperature=0, max_tokens=%d).tokens for p in %r]
print("IDS " + json.dumps(out))
""" % (MAX_TOKENS, PROMPTS)


def log(msg: str) -> None:
    print(f"[test-wheels {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Failure(Exception):
    pass


def run(cmd, timeout=600, **kw) -> str:
    t0 = time.time()
    try:
        res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                             timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise Failure(f"timed out after {timeout} s: {' '.join(map(str, cmd))}") from None
    if res.returncode:
        raise Failure(f"exit {res.returncode} after {time.time() - t0:.0f} s: "
                      f"{' '.join(map(str, cmd))}\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}")
    return res.stdout


class Env:
    """One wheel installed for one architecture; .py(args, cpu_env) runs its Python."""

    def __init__(self, wheel: Path):
        self.wheel = wheel
        m = re.match(r"poppins-[^-]+-cp(\d+)-cp\d+-(.+)\.whl$", wheel.name)
        if not m:
            raise Failure(f"unexpected wheel name {wheel.name}")
        self.pyver = m.group(1)
        plat = m.group(2)
        self.arch = next((a for p, a in ARCH_OF_PLAT.items() if plat.endswith(p)), "x86_64")
        self.plat = plat
        self.name = f"cp{self.pyver}-{self.arch}"
        self.dir = WORK / self.name
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)

    def install(self) -> None:
        if self.arch == "x86_64":
            venv = self.dir / "venv"
            run([sys.executable, "-m", "venv", venv])
            self.prefix = [venv / "bin" / "python"]
            run([*self.prefix, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                 self.wheel, "pytest>=7"], timeout=900)
            self.base_env = {}
            return
        suite = SUITE_OF_PY[self.pyver]
        out = run(["bash", ROOT / "scripts" / "arm_sysroot.sh", suite, self.arch], timeout=1800)
        sysr = Path(out.strip().splitlines()[-1])
        site = self.dir / "site"
        pyv = f"{self.pyver[0]}.{self.pyver[1:]}"
        # pip of the host installs for the target: the tag must be one that platform accepts
        run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
             "--no-deps", "--only-binary=:all:", "--target", site, "--platform", self.plat,
             "--python-version", pyv, "--implementation", "cp", "--abi", f"cp{self.pyver}",
             self.wheel])
        self.prefix = [QEMU[self.arch], "-L", sysr, sysr / "usr" / "bin" / f"python{pyv}"]
        self.base_env = {"PYTHONPATH": str(site), "OMP_WAIT_POLICY": "passive"}

    def py(self, args, cpu_env: dict, timeout=600, cwd=None) -> str:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("POPPINS_", "PYTHON", "QEMU_", "VIRTUAL_ENV"))}
        env.update(self.base_env)
        env.update(cpu_env)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["OMP_NUM_THREADS"] = "2"
        return run([*self.prefix, *args], timeout=timeout, env=env, cwd=cwd or self.dir)


def check_info(env: Env, cpu: str, cpu_env: dict, want: str) -> None:
    info = json.loads(env.py(["-m", "poppins", "info"], cpu_env))
    exts = info["extensions"]
    bad = [f for f, e in exts.items() if e.get("backend") != "compiled"]
    if bad or len(exts) < 4:
        raise Failure(f"{env.name} {cpu}: not compiled: {bad or sorted(exts)}")
    got = exts["ternary"]["kernel"]
    log(f"{env.name} {cpu}: info: python {info['python']}, openmp {info['openmp']}, kernels "
        + ", ".join(f"{f}={e.get('kernel')}" for f, e in sorted(exts.items())))
    if got != want:
        raise Failure(f"{env.name} {cpu}: ternary kernel {got}, expected {want}")


def greedy_ids(env: Env, cpu_env: dict, model: Path) -> list:
    out = env.py(["-c", IDS_SCRIPT, model], cpu_env, timeout=900)
    line = [ln for ln in out.splitlines() if ln.startswith("IDS ")][-1]
    return json.loads(line[4:])


def train_reference_model(env: Env) -> Path:
    """The model every architecture answers with: trained here, by the x86 wheel."""
    d = WORK / "model"
    shutil.rmtree(d, ignore_errors=True)
    env.py(["-m", "poppins", "bootstrap", "-o", d], {})
    # 300 steps (about 20 s): enough that greedy answers are varied token ids, not one
    # repeated token, so a differing kernel would show
    env.py(["-m", "poppins", "train", "-i", d / "train.xml", "-o", d / ".poppins", "--steps",
            "300", "--dim", "64", "--layers", "2", "--heads", "2", "--context", "128"], {},
           timeout=900)
    return d / ".poppins"


def end_to_end(env: Env, cpu: str, cpu_env: dict) -> None:
    d = env.dir / "e2e"
    shutil.rmtree(d, ignore_errors=True)
    t0 = time.time()
    env.py(["-m", "poppins", "bootstrap", "-o", d], cpu_env)
    # small enough for emulation (qemu runs the scalar training kernels ~20x slower): the
    # point is that every stage runs on ARM, not what the model learns in 20 steps
    env.py(["-m", "poppins", "train", "-i", d / "train.xml", "-o", d / ".poppins", "--steps",
            "20", "--dim", "32", "--layers", "1", "--heads", "2", "--context", "64",
            "--batch-size", "2"], cpu_env, timeout=E2E_TIMEOUT)
    ans = env.py(["-m", "poppins", "infer", "-m", d / ".poppins", "-p", "What is poppins?",
                  "--temp", "0", "-n", "16"], cpu_env, timeout=E2E_TIMEOUT)
    log(f"{env.name} {cpu}: bootstrap + train --steps 20 + infer in {time.time() - t0:.0f} s; "
        f"answer {ans.strip()[:60]!r}")


def kernel_tests(env: Env, cpu: str, cpu_env: dict, tests_src: Path) -> None:
    d = env.dir / "tests-run"
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(tests_src / "tests", d / "tests")   # with tests/data
    shutil.copy2(tests_src / "conftest.py", d / "conftest.py")
    (d / "scripts").mkdir()   # test_modelfile's hostile-header cases use the fuzzer's fixture
    shutil.copy2(tests_src / "scripts" / "fuzz.py", d / "scripts" / "fuzz.py")
    # an ini file makes this folder pytest's rootdir: nothing from the checkout is loaded
    (d / "pytest.ini").write_text("[pytest]\naddopts = -ra\nmarkers =\n    slow: long\n")
    e = dict(cpu_env)
    if EXPECT.get(cpu):
        e["POPPINS_EXPECT_KERNELS"] = EXPECT[cpu]
    t0 = time.time()
    # test_trained_greedy_answers_all_heads trains 120 steps (minutes under qemu): the greedy
    # ids of the x86-trained model and the end-to-end run cover that path here
    out = env.py(["-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=5",
                  "tests/test_ternary.py", "tests/test_engine.py", "tests/test_modelfile.py",
                  "--deselect",
                  "tests/test_engine.py::test_trained_greedy_answers_all_heads"], e,
                 timeout=TEST_TIMEOUT, cwd=d)
    tail = [ln for ln in out.splitlines() if ln.strip()][-1].strip("= ")
    log(f"{env.name} {cpu}: tests/test_{{ternary,engine,modelfile}}.py: {tail} "
        f"({time.time() - t0:.0f} s)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dist", default=str(ROOT / "dist"))
    ap.add_argument("--quick", action="store_true",
                    help="tests and end-to-end run on one CPU per architecture")
    ap.add_argument("--only", default="", help="substring filter on wheel names (the x86_64 "
                    "wheel, which trains the reference model, always runs)")
    args = ap.parse_args()
    dist = Path(args.dist)
    wheels = sorted(dist.glob("poppins-*.whl"), key=lambda p: ("x86_64" not in p.name, p.name))
    # the x86_64 wheel always runs first: it trains the reference model and gives its ids
    wheels = [w for w in wheels if args.only in w.name or (w is wheels[0] and "x86_64" in w.name)]
    sdists = sorted(dist.glob("poppins-*.tar.gz"))
    if not wheels or not any("x86_64" in w.name for w in wheels) or not sdists:
        print("test-wheels: dist/ needs the sdist and an x86_64 wheel (run make wheels)")
        return 2
    t_all = time.time()
    WORK.mkdir(parents=True, exist_ok=True)
    src_dir = WORK / "sdist"
    shutil.rmtree(src_dir, ignore_errors=True)
    with tarfile.open(sdists[-1]) as tf:
        tf.extractall(src_dir, filter="data")
    (tests_src,) = src_dir.iterdir()
    failures: list[str] = []
    reference = None     # x86 AVX2 greedy ids
    model = None
    e2e_done: set = set()
    for wheel in wheels:
        try:
            env = Env(wheel)
            log(f"{wheel.name}: install ({env.name})")
            env.install()
            if model is None:
                model = train_reference_model(env)
                log(f"reference model trained on x86: {model}")
            for i, (cpu, cpu_env, want) in enumerate(CPUS[env.arch]):
                try:
                    check_info(env, cpu, cpu_env, want)
                    ids = greedy_ids(env, cpu_env, model)
                    if reference is None:
                        reference = ids
                        log(f"reference greedy ids (x86 {cpu}): {ids[0][:12]}...")
                    elif ids != reference:
                        raise Failure(f"{env.name} {cpu}: greedy ids differ from x86 avx2:\n"
                                      f"  {ids}\n  {reference}")
                    else:
                        log(f"{env.name} {cpu}: greedy ids of {len(PROMPTS)} prompts identical "
                            "to x86 avx2")
                    if i == 0 or not args.quick:
                        kernel_tests(env, cpu, cpu_env, tests_src)
                    if env.arch != "x86_64" and env.arch not in e2e_done and \
                            (i == 0 or not args.quick) and env.pyver == "311":
                        end_to_end(env, cpu, cpu_env)
                        e2e_done.add(env.arch)
                except Failure as exc:
                    failures.append(str(exc))
                    log(f"FAILED: {exc}")
        except Failure as exc:
            failures.append(str(exc))
            log(f"FAILED: {exc}")
    log(f"{len(wheels)} wheels in {time.time() - t_all:.0f} s; "
        f"{'all passed' if not failures else f'{len(failures)} failure(s)'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
