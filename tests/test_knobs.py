"""The knob table (poppins/knobs.py) is the one definition of every training knob: the
train.xml constants check, the ``train`` flags, TrainConfig and ``overrides`` follow the same
rule, the README table and train.xsd are in step with it, and the two bugs of issue 11
(``<steps>0</steps>``, ``overrides={"epoch": 3}``) are refused before any work starts."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
from lxml import etree

from poppins import knobs as K
from poppins.cli import build_parser, main
from poppins.errors import PoppinsError
from poppins.training import TrainConfig, train
from poppins.trainxml import constants as C
from poppins.trainxml import read_train_xml

ROOT = Path(__file__).resolve().parent.parent
XSD = ROOT / "poppins" / "trainxml" / "train.xsd"
XS = "{http://www.w3.org/2001/XMLSchema}"

GOOD = """\
<?xml version="1.0" encoding="UTF-8"?>
<train>
  <constants>
    {constant}
  </constants>
  <prompts>
    <prompt id="pr::one">What is a cat?</prompt>
  </prompts>
  <responses>
    <response id="re::one">A small animal.</response>
  </responses>
  <samples>
    <sample-ids prompt="pr::one" response="re::one"/>
  </samples>
</train>
"""


def write(tmp_path: Path, constant: str) -> Path:
    p = tmp_path / "train.xml"
    p.write_text(GOOD.format(constant=constant), encoding="utf-8")
    return p


def train_parser():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices["train"]


# -- the table itself ------------------------------------------------------------------------

def test_table_is_well_formed():
    names = [k.name for k in K.KNOBS]
    assert len(names) == len(set(names))
    flags = [f for k in K.KNOBS for f in k.flags]
    assert len(flags) == len(set(flags))
    attrs = [k.attr for k in K.KNOBS if k.attr]
    assert len(attrs) == len(set(attrs))
    for k in K.KNOBS:
        assert k.scope in K.SCOPES and k.kind in ("int", "float", "bool", "enum", "str", "list")
        assert (k.kind == "enum") == bool(k.choices), k.name
        if k.scope in ("config", "run"):
            assert k.attr and k.help, k.name
            value, problem = k.check(k.default)       # every default obeys its own rule
            assert problem is None and value == k.default, (k.name, problem)
        else:
            assert k.constant and not k.flags and k.attr is None, k.name
        if k.constant:
            assert k.name == k.constant


def test_constants_check_is_generated_from_the_table():
    assert C.SPECS is K.BY_CONSTANT
    assert C.name_for_key("learning_rate") == "learning-rate"
    assert C.name_for_key("aim_infer_f16_gb") == "aim-infer-gb"
    assert C.name_for_key("learning-rate") is None and C.name_for_key("epoch") is None
    ignored = {n for n, s in C.SPECS.items() if not s.effect}
    assert "mixed-precision" in ignored and "dropout-rate-code" in ignored
    assert not ignored & set(K.BY_CONSTANT[n].constant for n in ("steps", "learning-rate"))


def test_trainconfig_is_the_config_knobs():
    assert dataclasses.is_dataclass(TrainConfig)
    fields = dataclasses.fields(TrainConfig)
    assert [f.name for f in fields] == list(K.CONFIG)
    assert all(f.default == K.CONFIG[f.name].default for f in fields)
    cfg = TrainConfig()
    assert (cfg.dim, cfg.layers, cfg.epochs, cfg.lr, cfg.steps) == (128, 4, 80.0, 4e-3, None)
    # the constants that set a field are exactly the config knobs with a constant
    from poppins.training.config import CONSTANT_FIELDS
    assert CONSTANT_FIELDS == {k.constant: k.attr for k in K.CONFIG.values() if k.constant}


def test_saved_configs_still_load(tmp_path):
    cfg = TrainConfig(dim=64, heads=2, steps=10, lr=0.01)
    again = TrainConfig.from_dict(json.loads(cfg.to_json()))
    assert again == cfg
    # a config.json of another version: an unknown key is ignored, a missing one defaults
    old = dict(cfg.to_dict(), some_future_knob=3)
    del old["log_interval"]
    loaded = TrainConfig.from_dict(old)
    assert loaded.log_interval == TrainConfig().log_interval and loaded.dim == 64
    # JSON writes 40.0 as 40.0, but a hand-written 40 is the same float
    assert TrainConfig.from_dict({"epochs": 40}).epochs == 40.0


def test_cross_field_rules_stay_in_validate():
    with pytest.raises(PoppinsError, match="multiple of heads"):
        TrainConfig(dim=30, heads=4).validate()
    with pytest.raises(PoppinsError, match="must be even"):
        TrainConfig(dim=12, heads=4).validate()
    with pytest.raises(PoppinsError, match="multiple of kv-heads 3"):
        TrainConfig(heads=4, kv_heads=3).validate()


# -- one rule for file, flag and API ---------------------------------------------------------

def _probe_values(k: K.Knob):
    """Values at and around each bound of ``k`` (and a few plain ones)."""
    vals = set()
    for b in (k.lo, k.hi):
        if b is not None:
            if k.kind == "int":
                vals |= {int(b) - 1, int(b), int(b) + 1}
            else:
                vals |= {b - 0.5, b - 1e-9, float(b), b + 1e-9, b + 0.5}
    if k.kind == "int":
        vals |= {-1, 0, 1, 2, 64}
    else:
        vals |= {-1.0, 0.0, 1e-3, 1.0, 100.0}
    return sorted(vals)


RANGED = [k for k in K.KNOBS if k.kind in ("int", "float")]


@pytest.mark.parametrize("knob", RANGED, ids=lambda k: k.name)
def test_one_range_rule_for_file_flag_and_api(knob, tmp_path):
    parser = train_parser() if knob.flags else None
    for v in _probe_values(knob):
        text = repr(v) if knob.kind == "float" else str(v)
        parsed, problem = knob.parse(text)
        ok = problem is None
        inside = ((knob.lo is None or (v > knob.lo if knob.lo_open else v >= knob.lo))
                  and (knob.hi is None or (v < knob.hi if knob.hi_open else v <= knob.hi)))
        assert ok == inside, (knob.name, v, problem)
        # the API path: the same verdict and the same words
        value, api_problem = knob.check(v)
        assert (api_problem is None) == ok, (knob.name, v, api_problem)
        if not ok:
            assert api_problem.split(", got")[0] == problem.split(", got")[0]
        if knob.scope == "config":
            if ok:
                assert K.check_overrides({knob.attr: v}) == {knob.attr: value}
            else:
                with pytest.raises(PoppinsError, match=rf"overrides\['{knob.attr}'\] must be"):
                    K.check_overrides({knob.attr: v})
                with pytest.raises(PoppinsError, match=rf"^{knob.attr} must be"):
                    TrainConfig(**{knob.attr: v}).validate()
        # the flag
        if parser is not None:
            if ok:
                args = parser.parse_args([f"{knob.flags[-1]}={text}"])
                assert getattr(args, knob.attr) == parsed
            else:
                with pytest.raises(SystemExit):
                    parser.parse_args([f"{knob.flags[-1]}={text}"])
        # the file (current and early dialect), FILE:LINE from the reader
        if knob.constant:
            for el in (f"<{knob.constant}>{text}</{knob.constant}>",
                       f'<constant key="{knob.early_key}" value="{text}"/>'):
                path = write(tmp_path, el)
                if ok:
                    doc = read_train_xml(path)
                    assert doc.constants[knob.constant].value == parsed
                else:
                    with pytest.raises(PoppinsError) as ei:
                        read_train_xml(path)
                    assert any(p.file and p.line == 4 and problem in p.message
                               for p in ei.value.problems), (el, ei.value.problems)


@pytest.mark.parametrize("knob", [k for k in K.KNOBS if k.kind in ("enum", "bool")],
                         ids=lambda k: k.name)
def test_enums_and_bools_same_rule(knob, tmp_path):
    good = list(knob.choices) if knob.kind == "enum" else ["true", "false"]
    for text in good + ["nope"]:
        parsed, problem = knob.parse(text)
        assert (problem is None) == (text != "nope")
        if knob.constant:
            path = write(tmp_path, f"<{knob.constant}>{text}</{knob.constant}>")
            if problem is None:
                assert read_train_xml(path).constants[knob.constant].value == parsed
            else:
                with pytest.raises(PoppinsError, match=problem):
                    read_train_xml(path)
        if knob.scope == "config" and knob.kind == "enum":
            if problem is None:
                assert K.check_overrides({knob.attr: text}) == {knob.attr: text}
            else:
                with pytest.raises(PoppinsError, match="must be one of"):
                    K.check_overrides({knob.attr: text})


def test_flags_are_the_table():
    parser = train_parser()
    have = {s for a in parser._actions for s in a.option_strings} - {"-h", "--help"}
    assert have == {f for k in K.KNOBS for f in k.flags}
    args = parser.parse_args([])
    # run options have their defaults; TrainConfig knobs stay unset so constants apply
    assert (args.train_xml, args.out_dir, args.seed) == ("train.xml", ".poppins", 1337)
    assert all(getattr(args, k.attr) is None for k in K.CONFIG.values()
               if k.flags and k.cli_section != "run")
    assert parser.parse_args(["--float"]).quantize is False


def test_flag_error_is_the_rule_text(capsys):
    with pytest.raises(SystemExit) as ei:
        main(["train", "--steps", "0"])
    assert ei.value.code == 2
    assert "argument --steps: must be >= 1, got 0" in capsys.readouterr().err


# -- the README and train.xsd ------------------------------------------------------------------

def test_readme_table_is_generated():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert K.readme_with_table(text) == text, \
        "the README's train options drifted from poppins/knobs.py: python -m poppins.knobs README.md"
    table = K.readme_table()
    for k in K.KNOBS:
        if k.flags:
            assert k.flags[-1] in table
        if k.constant:
            assert f"<{k.constant}>" in table


def _xsd_constants():
    tree = etree.parse(str(XSD))
    ctype = tree.find(f"{XS}complexType[@name='ConstantsType']")
    simple = {s.get("name"): [e.get("value") for e in s.iter(f"{XS}enumeration")]
              for s in tree.iter(f"{XS}simpleType")}
    out = {}
    for el in ctype.find(f"{XS}choice").findall(f"{XS}element"):
        out[el.get("name")] = (el.get("type"), el)
    return out, simple


def test_xsd_knows_every_constant_of_the_table():
    xsd, simple = _xsd_constants()
    assert set(xsd) - {"constant"} == set(K.BY_CONSTANT)
    for name, k in K.BY_CONSTANT.items():
        typ, el = xsd[name]
        if k.kind == "int":
            want = "xs:positiveInteger" if (k.lo or 0) >= 1 else "xs:nonNegativeInteger"
            assert typ == want, name
        elif k.kind == "float":
            assert typ == "xs:double", name     # xs:decimal would refuse 1e-3
        elif k.kind == "bool":
            assert typ == "xs:boolean", name
        elif k.kind == "enum":
            assert simple[typ] == list(k.choices), name
        else:
            assert el.find(f"{XS}complexType") is not None, name


# -- issue 11: the two bugs --------------------------------------------------------------------

@pytest.mark.parametrize("el", ["<steps>0</steps>", '<constant key="steps" value="0"/>'])
def test_steps_zero_fails_at_the_constants_check(tmp_path, capsys, el):
    path = write(tmp_path, el)
    out = tmp_path / "out"
    assert main(["train", "-i", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:4: " in err and "steps" in err and "must be >= 1, got 0" in err
    assert "Traceback" not in err
    assert not out.exists()            # no work started: not even the output folder


def test_steps_zero_through_the_api(tmp_path):
    path = write(tmp_path, "<steps>0</steps>")
    with pytest.raises(PoppinsError) as ei:
        train(path, tmp_path / "out", log=None)
    (p,) = ei.value.problems
    assert p.file.endswith("train.xml") and p.line == 4
    assert p.message == "<steps> must be >= 1, got 0"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("overrides, words", [
    ({"epoch": 3}, r"unknown key 'epoch' \(did you mean 'epochs'\?\)"),
    ({"learning_rate": 0.1}, r"unknown key 'learning_rate' \(did you mean 'lr'\?\)"),
    ({"batch-size": 2}, r"unknown key 'batch-size' \(did you mean 'batch_size'\?\)"),
    ({"zzz": 1}, r"unknown key 'zzz'; known: dim, layers, heads"),
    ({"val_fraction": 0.1}, r"'val_fraction' is not a training knob; pass it as "
                            r"poppins.train\(\.\.\., val_fraction=\.\.\.\)"),
    ({"steps": 0}, r"overrides\['steps'\] must be >= 1, got 0"),
    ({"epochs": 0}, r"overrides\['epochs'\] must be > 0, got 0"),
    ({"lr": "fast"}, r"overrides\['lr'\] must be a number, got 'fast'"),
    ({"lr": float("nan")}, r"overrides\['lr'\] must be a finite number"),
    ({"layers": 2.5}, r"overrides\['layers'\] must be a whole number, got 2.5"),
    ({"attention": "gqa"}, r"overrides\['attention'\] must be one of mha, mla, got 'gqa'"),
    ({"dim": None}, r"overrides\['dim'\] must be set, got None"),
])
def test_bad_overrides_are_refused_before_any_work(tmp_path, overrides, words):
    out = tmp_path / "out"
    # the train file does not even exist: the override is refused before it is read
    with pytest.raises(PoppinsError, match=words):
        train(tmp_path / "missing.xml", out, overrides=overrides, log=None)
    assert not out.exists()


def test_good_overrides_are_normalized():
    assert K.check_overrides(None) == {}
    got = K.check_overrides({"epochs": 3, "steps": None, "quantize": False, "attention": "mla"})
    assert got == {"epochs": 3.0, "steps": None, "quantize": False, "attention": "mla"}
    assert isinstance(got["epochs"], float)
    with pytest.raises(PoppinsError, match="must be a dict"):
        K.check_overrides([("epochs", 3)])


def test_range_words():
    lr = K.BY_NAME["learning-rate"]
    assert lr.range_text() == "> 0 and <= 10"
    assert lr.parse("0")[1] == "must be between 0 and 10, got 0 (0 itself is excluded)"
    assert lr.parse("-1")[1] == "must be between 0 and 10, got -1"
    assert lr.parse("10")[0] == 10.0 and lr.parse("inf")[1].startswith("must be a finite")
    assert K.BY_NAME["steps"].range_text() == ">= 1"
    assert K.BY_NAME["weight-decay"].range_text() == "0 to 10"
    assert K.BY_NAME["beta1"].range_text() == ">= 0 and < 1"
    assert math.isclose(K.BY_NAME["epochs"].parse(" 2.5 ")[0], 2.5)


def test_run_option_defaults_match_the_functions_they_feed():
    """The run options are arguments of train() / prepare_data(); their defaults there (which
    the API uses) equal the table's (which the flags use)."""
    import inspect

    from poppins.datastage import DEFAULT_MIN_MERGE_FREQUENCY, DEFAULT_VOCAB_SIZE, prepare_data
    from poppins.samples import DEFAULT_SEED
    from poppins.trainxml import DEFAULT_MAX_XML_MB

    for fn in (train, prepare_data):
        params = inspect.signature(fn).parameters
        for k in K.KNOBS:
            if k.cli_section == "run" and k.attr in params and k.attr != "threads":
                assert params[k.attr].default == k.default, (fn.__name__, k.attr)
    assert K.BY_NAME["max-xml-mb"].default == DEFAULT_MAX_XML_MB
    assert K.BY_NAME["seed"].default == DEFAULT_SEED
    assert DEFAULT_VOCAB_SIZE == K.BY_NAME["bpe-vocab-size"].default == 8192
    assert DEFAULT_MIN_MERGE_FREQUENCY == K.BY_NAME["bpe-min-merge-frequency"].default == 3
