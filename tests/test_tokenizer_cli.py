"""``python -m poppins tokenize -m OUT_DIR -p TEXT``."""
from __future__ import annotations

import json

from poppins.cli import main
from poppins.tokenizer import Tokenizer


def _model(tmp_path):
    tok = Tokenizer.train(["What is a computer? A computer is a machine."] * 5,
                          vocab_size=125 + 256 + 30, min_frequency=0)
    tok.save(tmp_path / "out")
    return tok


def test_tokenize_prints_ids_and_pieces(tmp_path, capsys):
    tok = _model(tmp_path)
    text = "What is <html> a computer? é"
    assert main(["tokenize", "-m", str(tmp_path / "out"), "-p", text]) == 0
    lines = capsys.readouterr().out.splitlines()
    ids = tok.encode(text).tolist()
    assert lines[0] == " ".join(map(str, ids))
    assert len(lines) == 1 + len(ids)
    assert lines[1 + ids.index(17)] == '17\t"<html>"'
    pieces = b"".join(tok.id_to_bytes(int(l.split("\t")[0])) for l in lines[1:])
    assert pieces.decode() == text
    assert lines[2] == f'{ids[1]}\t{json.dumps(" is")}'


def test_tokenize_plain_and_file(tmp_path, capsys):
    tok = _model(tmp_path)
    f = tmp_path / "in.txt"
    f.write_text("<html>", encoding="utf-8")
    assert main(["tokenize", "-m", str(tmp_path / "out" / "tokenizer.json"), "-f", str(f),
                 "--plain", "--ids-only"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [" ".join(map(str, tok.encode("<html>", special=False).tolist()))]
    assert "17" not in out[0].split()


def test_tokenize_missing_model(tmp_path, capsys):
    assert main(["tokenize", "-m", str(tmp_path), "-p", "x"]) == 2
    assert "no tokenizer.json" in capsys.readouterr().err
