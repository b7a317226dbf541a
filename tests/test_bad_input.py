"""Every kind of bad train.xml gives FILE:LINE messages, exit code 2, no traceback, and leaves
a previous output folder untouched."""
from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import pytest

from poppins.cli import main

GOOD = """\
<?xml version="1.0" encoding="UTF-8"?>
<train>
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


def run_train(path: Path, out: Path, capsys, *extra: str):
    try:
        code = main(["train", "-i", str(path), "-o", str(out), "--data-only", *extra])
    except SystemExit as exc:   # argparse refuses a flag's value with exit code 2
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.err


@pytest.fixture
def good_output(tmp_path, capsys):
    """An output folder with a previous good data stage in it, and its files' bytes."""
    good = tmp_path / "good.xml"
    good.write_text(GOOD)
    out = tmp_path / "out"
    assert run_train(good, out, capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    return out, before


def expect_error(tmp_path, capsys, good_output, files: dict, line: int, pattern: str,
                 main_name="train.xml", extra=()):
    """Write ``files``, run the data stage, check exit 2 and a ``FILE:LINE: ...pattern`` line."""
    for name, content in files.items():
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(textwrap.dedent(content), encoding="utf-8")
    out, before = good_output
    code, err = run_train(tmp_path / main_name, out, capsys, *extra)
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 21
    regex = re.compile(rf"^(\S*?):{line}(:\d+)?: .*{pattern}", re.I)
    assert any(regex.search(l) for l in lines), err
    # the previous good output is untouched
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    return err


def sample_file(body: str, extra_sections: str = "") -> str:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<train>
  <prompts>
    <prompt id="pr::one">What is a cat?</prompt>
  </prompts>
  <responses>
    <response id="re::one">A small animal.</response>
  </responses>
  <samples>
    {body}
  </samples>{extra_sections}
</train>
"""


def test_malformed_xml(tmp_path, capsys, good_output):
    expect_error(tmp_path, capsys, good_output,
                 {"train.xml": "<train>\n  <prompts>\n    <prompt id='a'>hi</promt>\n</train>\n"},
                 3, "malformed XML")


def test_wrong_root(tmp_path, capsys, good_output):
    expect_error(tmp_path, capsys, good_output,
                 {"train.xml": '<?xml version="1.0"?>\n<training>\n</training>\n'},
                 2, "root element is <training>, expected <train>")


def test_unknown_element(tmp_path, capsys, good_output):
    text = GOOD.replace("  <samples>", "  <sampels>\n  </sampels>\n  <samples>")
    err = expect_error(tmp_path, capsys, good_output, {"train.xml": text}, 9,
                       r"unknown element <sampels> in <train> \(did you mean <samples>\?\)")


def test_unknown_attribute(tmp_path, capsys, good_output):
    text = sample_file('<sample-ids prompt="pr::one" respones="re::one"/>')
    expect_error(tmp_path, capsys, good_output, {"train.xml": text}, 10,
                 r"unknown attribute 'respones' on <sample-ids> \(did you mean response\?\)")


def test_missing_id(tmp_path, capsys, good_output):
    text = GOOD.replace('<response id="re::one">', "<response>")
    expect_error(tmp_path, capsys, good_output, {"train.xml": text}, 7,
                 "missing the required attribute 'id'")


def test_duplicate_id(tmp_path, capsys, good_output):
    text = GOOD.replace('    <prompt id="pr::one">What is a cat?</prompt>\n',
                        '    <prompt id="pr::one">What is a cat?</prompt>\n'
                        '    <prompt id="pr::one">What is a dog?</prompt>\n')
    expect_error(tmp_path, capsys, good_output, {"train.xml": text}, 5,
                 r"duplicate prompt id 'pr::one' \(first defined at .*train.xml:4\)")


def test_unknown_reference(tmp_path, capsys, good_output):
    text = sample_file('<sample-ids prompt="pr::one" response="re::nope"/>')
    expect_error(tmp_path, capsys, good_output, {"train.xml": text}, 10,
                 "references unknown response id 're::nope'")


def test_missing_import(tmp_path, capsys, good_output):
    text = GOOD.replace("<train>", '<train>\n  <imports>\n    <import path="nope.xml"/>\n  </imports>')
    expect_error(tmp_path, capsys, good_output, {"train.xml": text}, 4,
                 "imported file not found: .*nope.xml")


def test_import_cycle(tmp_path, capsys, good_output):
    main_text = GOOD.replace("<train>", '<train>\n  <imports>\n    <import path="a.xml"/>\n  </imports>')
    a = '<?xml version="1.0"?>\n<train>\n  <imports>\n    <import path="train.xml"/>\n  </imports>\n</train>\n'
    expect_error(tmp_path, capsys, good_output, {"train.xml": main_text, "a.xml": a}, 4,
                 r"import cycle: .*train.xml -> .*a.xml -> .*train.xml")


def test_unknown_code_lang(tmp_path, capsys, good_output):
    text = sample_file('<sample-ids prompt="pr::one" response="re::one" code="co::x"/>',
                       '\n  <code-snippets>\n    <code id="co::x" lang="python">print(1)</code>\n'
                       '  </code-snippets>')
    expect_error(tmp_path, capsys, good_output, {"train.xml": text}, 13,
                 "unknown code lang 'python'")


def test_phrase_does_not_compile(tmp_path, capsys, good_output):
    text = sample_file('<sample-ids prompt="pr::one" response="re::one"/>',
                       '\n  <phrases>\n    <phrase pattern="What (is">\n'
                       '      <variant value="x"/>\n    </phrase>\n  </phrases>')
    expect_error(tmp_path, capsys, good_output, {"train.xml": text}, 13,
                 r"phrase pattern 'What \(is' does not compile")


def test_phrase_variant_group_out_of_range(tmp_path, capsys, good_output):
    text = sample_file('<sample-ids prompt="pr::one" response="re::one"/>',
                       '\n  <phrases>\n    <phrase pattern="What is (.*)\\?">\n'
                       '      <variant value="Define $2."/>\n    </phrase>\n  </phrases>')
    expect_error(tmp_path, capsys, good_output, {"train.xml": text}, 14,
                 r"uses \$2 but the pattern has 1 group")


def test_slow_phrase_pattern_times_out(tmp_path, capsys, good_output):
    text = sample_file('<sample-ids prompt="pr::one" response="re::one"/>',
                       '\n  <phrases>\n    <phrase pattern="(a|aa)+$">\n'
                       '      <variant value="x"/>\n    </phrase>\n  </phrases>')
    text = text.replace("What is a cat?", "a" * 40 + "!")
    expect_error(tmp_path, capsys, good_output, {"train.xml": text}, 13, r"took over 1 s")


def test_constant_wrong_type(tmp_path, capsys, good_output):
    text = GOOD.replace("<train>", "<train>\n  <constants>\n    <learning-rate>fast</learning-rate>\n  </constants>")
    expect_error(tmp_path, capsys, good_output, {"train.xml": text}, 4,
                 r"<learning-rate> must be a number, got 'fast'")


def test_constant_out_of_range(tmp_path, capsys, good_output):
    text = GOOD.replace("<train>", "<train>\n  <constants>\n    <learning-rate>-1</learning-rate>\n  </constants>")
    expect_error(tmp_path, capsys, good_output, {"train.xml": text}, 4,
                 r"<learning-rate> must be between 0 and 10, got -1")


def test_constant_steps_zero(tmp_path, capsys, good_output):
    # issue 11: <steps>0</steps> passed the data stage and failed later without FILE:LINE
    text = GOOD.replace("<train>", "<train>\n  <constants>\n    <steps>0</steps>\n  </constants>")
    expect_error(tmp_path, capsys, good_output, {"train.xml": text}, 4,
                 r"<steps> must be >= 1, got 0")


def test_early_constant_out_of_range(tmp_path, capsys, good_output):
    text = GOOD.replace("<train>", '<train>\n  <constants>\n    <constant key="batch_size" value="0"/>\n  </constants>')
    expect_error(tmp_path, capsys, good_output, {"train.xml": text}, 4,
                 r"constant 'batch_size' must be between 1 and 65536, got 0")


def test_early_constant_wrong_type(tmp_path, capsys, good_output):
    text = GOOD.replace("<train>", '<train>\n  <constants>\n    <constant key="bpe_min_merge_frequency" value="abc"/>\n  </constants>')
    expect_error(tmp_path, capsys, good_output, {"train.xml": text}, 4,
                 r"constant 'bpe_min_merge_frequency' must be a whole number, got 'abc'")


def test_file_with_no_samples(tmp_path, capsys, good_output):
    text = '<?xml version="1.0"?>\n<train>\n  <prompts>\n    <prompt id="p">Hi?</prompt>\n  </prompts>\n</train>\n'
    expect_error(tmp_path, capsys, good_output, {"train.xml": text}, 2, "yields no samples")


def test_undecodable_bytes(tmp_path, capsys, good_output):
    data = GOOD.replace("A small animal.", "A small animal \udcff.").encode("utf-8", "surrogateescape")
    expect_error(tmp_path, capsys, good_output, {"train.xml": data}, 7, "malformed XML: .*encoding")


def test_declared_encoding_is_honoured(tmp_path, capsys):
    text = GOOD.replace('encoding="UTF-8"', 'encoding="ISO-8859-1"').replace("A small animal.", "Un café.")
    (tmp_path / "t.xml").write_bytes(text.encode("latin-1"))
    code, err = run_train(tmp_path / "t.xml", tmp_path / "out", capsys)
    assert code == 0, err
    assert "Un café." in (tmp_path / "out" / "train_corpus.xml").read_text("utf-8")


def test_file_over_size_limit(tmp_path, capsys, good_output):
    text = GOOD.replace("A small animal.", "A small animal. " + "x" * 200_000)
    err = expect_error(tmp_path, capsys, good_output, {"train.xml": text}, 1, "size limit", extra=("--max-xml-mb", "0.1"))
    assert "exceed the size limit of 0.1 MB" in err and "--max-xml-mb" in err


def test_size_limit_counts_imports(tmp_path, capsys, good_output):
    big = '<?xml version="1.0"?>\n<train>\n<!--' + "x" * 90_000 + "-->\n</train>\n"
    text = GOOD.replace("<train>", '<train>\n  <imports>\n    <import path="big.xml"/>\n  </imports>')
    err = expect_error(tmp_path, capsys, good_output, {"train.xml": text, "big.xml": big}, 4,
                       "exceed the size limit", extra=("--max-xml-mb", "0.08"))


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE train [
  <!ENTITY lol "lol">
  <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
]>
<train>
  <prompts><prompt id="p">&lol2;</prompt></prompts>
</train>
"""


def test_entity_expansion_refused(tmp_path, capsys, good_output):
    expect_error(tmp_path, capsys, good_output, {"train.xml": BILLION_LAUGHS}, 2,
                 "DOCTYPE declarations are not allowed")


def test_external_entity_refused(tmp_path, capsys, good_output):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET")
    text = (f'<?xml version="1.0"?>\n<!DOCTYPE train [<!ENTITY x SYSTEM "file://{secret}">]>\n'
            '<train>\n  <prompts><prompt id="p">&x;</prompt></prompts>\n</train>\n')
    err = expect_error(tmp_path, capsys, good_output, {"train.xml": text}, 2,
                       "DOCTYPE declarations are not allowed")
    assert "TOP SECRET" not in err


def test_missing_input_file(tmp_path, capsys):
    code, err = run_train(tmp_path / "nope.xml", tmp_path / "out", capsys)
    assert code == 2 and "file not found" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_problems_are_collected_up_to_twenty(tmp_path, capsys, good_output):
    body = "\n    ".join(f'<sample-ids prompt="pr::nope{i}" response="re::one"/>' for i in range(30))
    err = expect_error(tmp_path, capsys, good_output, {"train.xml": sample_file(body)}, 10,
                       "references unknown prompt id 'pr::nope0'")
    assert len(err.strip().splitlines()) == 21  # 20 problems and the note that it stopped
    assert "stopped after 20 problems" in err


def test_text_with_markup_is_an_error(tmp_path, capsys, good_output):
    text = GOOD.replace("A small animal.", "A <b>small</b> animal.")
    expect_error(tmp_path, capsys, good_output, {"train.xml": text}, 7,
                 r"must contain text only, found <b>")


def test_bad_line_break_count(tmp_path, capsys, good_output):
    body = '<sample>\n      <prompt id="pr::one"/>\n      <response id="re::one"/>\n      <line-break count="3"/>\n    </sample>'
    expect_error(tmp_path, capsys, good_output, {"train.xml": sample_file(body)}, 13,
                 "line-break count='3' must be 1 or 2")


# ---------------------------------------------------------------- issue 13: hostile input

def test_many_attributes_take_linear_time(tmp_path, capsys, good_output):
    import time

    attrs = " ".join(f'a{i}="x"' for i in range(100_000))
    text = GOOD.replace('<sample-ids prompt="pr::one" response="re::one"/>',
                        f'<sample-ids prompt="pr::one" response="re::one" {attrs}/>')
    t0 = time.monotonic()
    expect_error(tmp_path, capsys, good_output, {"train.xml": text}, 10,
                 "has 100002 attributes; at most 32")
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize("element,value,pattern", [
    ("bpe-vocab-size", "1000000000000", "must be at most"),
    ("bpe-vocab-size", "2000000", "must be between 381 and 1048576"),
    ("bpe-min-merge-frequency", "100000000000000000000", "must be at most 2147483647"),
    ("context-length", "2147483647", "must be between 8 and 1048576"),
    ("embedding-dim", "9" * 5000, "must be a whole number"),
], ids=["vocab-1e12", "vocab-2e6", "merge-freq-1e20", "context-2^31", "dim-5000-digits"])
def test_memory_sizing_constants_are_bounded(tmp_path, capsys, good_output, element, value, pattern):
    text = GOOD.replace("<train>", f"<train>\n  <constants><{element}>{value}</{element}></constants>")
    expect_error(tmp_path, capsys, good_output, {"train.xml": text}, 3, pattern)


@pytest.mark.parametrize("indent", ["\u00b2", "9" * 4301, "-1", "1e3"])
def test_odd_indents(tmp_path, capsys, good_output, indent):
    body = ('<sample>\n      <prompt id="pr::one"/>\n      <response id="re::one"/>\n'
            f'      <code id="co::x" indent="{indent}"/>\n    </sample>')
    text = sample_file(body, '\n  <code-snippets><code id="co::x" lang="bash">ls</code></code-snippets>')
    expect_error(tmp_path, capsys, good_output, {"train.xml": text}, 13, "must be a whole number from 0 to")


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_max_xml_mb_must_be_a_finite_positive_number(tmp_path, capsys, value):
    (tmp_path / "t.xml").write_text(GOOD)
    code, err = run_train(tmp_path / "t.xml", tmp_path / "out", capsys, "--max-xml-mb", value)
    # refused by the flag's knob rule (argparse) before anything runs
    assert code == 2 and "--max-xml-mb" in err and "must be a finite number" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1, 0, "10", True, 2.0 ** 40])
def test_max_xml_mb_checked_where_it_is_received(tmp_path, value):
    from poppins.errors import PoppinsError
    from poppins.trainxml import read_train_xml

    (tmp_path / "t.xml").write_text(GOOD)
    with pytest.raises(PoppinsError, match="--max-xml-mb must be a positive number"):
        read_train_xml(tmp_path / "t.xml", max_xml_mb=value)


def _with_import(path: str) -> str:
    return GOOD.replace("<train>", f'<train>\n  <imports>\n    <import path="{path}"/>\n  </imports>')


def test_import_symlink_loop(tmp_path, capsys, good_output):
    os.symlink("loop.xml", tmp_path / "loop.xml")
    expect_error(tmp_path, capsys, good_output, {"train.xml": _with_import("loop.xml")}, 4,
                 "loop.xml")


def test_deeply_nested_imports(tmp_path, capsys, good_output):
    files = {"train.xml": _with_import("d0.xml")}
    for d in range(1100):
        files[f"d{d}.xml"] = f'<train><imports><import path="d{d + 1}.xml"/></imports></train>'
    expect_error(tmp_path, capsys, good_output, files, 1, "imports nest more than 64 files deep")


def test_very_long_import_path(tmp_path, capsys, good_output):
    expect_error(tmp_path, capsys, good_output, {"train.xml": _with_import("a" * 5000 + ".xml")},
                 4, "is too long")


def test_imports_outside_the_folder_warn_or_are_refused(tmp_path, capsys):
    from poppins.datastage import prepare_data
    from poppins.errors import PoppinsError

    proj = tmp_path / "proj"
    proj.mkdir()
    (tmp_path / "outside.xml").write_text("<train/>")
    (proj / "train.xml").write_text(_with_import("../outside.xml"))
    os.symlink(tmp_path / "outside.xml", proj / "link.xml")
    (proj / "t2.xml").write_text(_with_import("link.xml"))
    for name in ("train.xml", "t2.xml"):
        said = []
        prepare_data(proj / name, tmp_path / f"out-{name}", log=said.append)
        warning = [s for s in said if "warning: import" in s]
        assert warning and str(tmp_path / "outside.xml") in warning[0], said
        with pytest.raises(PoppinsError, match=r":4: import .* is outside the folder"):
            prepare_data(proj / name, tmp_path / "refused", log=None, allow_outside_imports=False)
        assert not (tmp_path / "refused").exists()


def test_phrase_budget_is_total_and_grows_with_prompts():
    from poppins.samples import PHRASE_BUDGET_PER_PROMPT_S, PHRASE_BUDGET_S, _Budget

    assert _Budget(0).total == PHRASE_BUDGET_S
    assert _Budget(4000).total == PHRASE_BUDGET_S + 4000 * PHRASE_BUDGET_PER_PROMPT_S
    # 1,000 prompts with a pattern just under the per-prompt timeout stop within 10 s
    assert _Budget(1000).total <= 10


def test_phrase_budget_exhausted_is_a_clean_error(tmp_path, capsys, good_output, monkeypatch):
    import poppins.samples as S

    monkeypatch.setattr(S, "PHRASE_BUDGET_S", 0.0)
    monkeypatch.setattr(S, "PHRASE_BUDGET_PER_PROMPT_S", 0.0)
    text = sample_file('<sample-ids prompt="pr::one" response="re::one"/>',
                       '\n  <phrases>\n    <phrase pattern="cat">\n'
                       '      <variant value="dog"/>\n    </phrase>\n  </phrases>')
    expect_error(tmp_path, capsys, good_output, {"train.xml": text}, 13, "total budget")


def test_source_urls_other_than_http_are_text():
    from poppins.engine.render import is_link, source_text

    sources = {"js": {"url": "javascript:alert(1)"}, "ok": {"url": "https://example.org/a?b=1"},
               "esc": {"url": "https://example.org/\x1b]8;;x"}}
    assert source_text("ok", sources) == " (source: https://example.org/a?b=1)"
    assert source_text("js", sources) == " (source: `javascript:alert(1)`)"
    assert "\x1b" not in source_text("esc", sources) and "`" in source_text("esc", sources)
    assert not is_link("javascript:alert(1)") and not is_link("file:///etc/passwd")
    assert is_link("http://example.org") and not is_link("https://a b")


def test_javascript_source_url_is_kept_as_text_in_the_data(tmp_path, capsys):
    import json

    text = sample_file('<sample-ids prompt="pr::one" response="re::one" source="so::js"/>',
                       '\n  <sources><source id="so::js" url="javascript:alert(1)"/></sources>')
    (tmp_path / "t.xml").write_text(text)
    code, err = run_train(tmp_path / "t.xml", tmp_path / "out", capsys)
    assert code == 0, err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["sources"]["so::js"]["url"] == "javascript:alert(1)"


def test_no_outside_imports_flag_refuses_them(tmp_path, capsys):
    proj = tmp_path / "proj"
    proj.mkdir()
    (tmp_path / "outside.xml").write_text("<train/>")
    (proj / "train.xml").write_text(_with_import("../outside.xml"))
    code, err = run_train(proj / "train.xml", tmp_path / "out", capsys, "--no-outside-imports")
    assert code == 2 and "is outside the folder" in err and "Traceback" not in err
