"""``python -m poppins tokenize``: show the token ids and pieces of a text.

    python -m poppins tokenize -m OUT_DIR -p "What is a computer?"

OUT_DIR is the output directory of ``poppins train`` (it holds tokenizer.json), or the path of
a tokenizer.json.  The first line lists the ids; then one line per token: its id and its
piece (a JSON string; a piece that is only part of a multi-byte character is shown as
Python bytes, ``b'\\xe6'``).  Special-token strings in the text become their ids unless
``--plain`` is given.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("tokenize", help="print the token ids and pieces of a text",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("-m", "--model", required=True, metavar="OUT_DIR",
                   help="directory holding tokenizer.json (or the tokenizer.json file)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-p", "--prompt", metavar="TEXT", help="the text to tokenize")
    src.add_argument("-f", "--file", metavar="PATH", help="tokenize the UTF-8 text of a file")
    p.add_argument("--plain", action="store_true",
                   help="keep special-token strings as plain text (as the corpus writer does)")
    p.add_argument("--ids-only", action="store_true", help="print only the ids")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..errors import PoppinsError
    from ..tokenizer import Tokenizer

    model = Path(args.model)
    if model.is_dir() and not (model / "tokenizer.json").is_file():
        raise PoppinsError(f"{model}: no tokenizer.json here (run `poppins train` first)")
    tok = Tokenizer.from_file(model)
    if args.file is not None:
        try:
            text = Path(args.file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PoppinsError(f"{args.file}: cannot read as UTF-8 text ({exc})") from None
    else:
        text = args.prompt
    ids = tok.encode(text, special=not args.plain)
    out = sys.stdout
    out.write(" ".join(str(int(i)) for i in ids) + "\n")
    if not args.ids_only:
        for i in ids.tolist():
            raw = tok.id_to_bytes(i)
            try:
                shown = json.dumps(raw.decode("utf-8"), ensure_ascii=False)
            except UnicodeDecodeError:
                shown = repr(raw)  # part of a multi-byte character: b'\xe6'
            out.write(f"{i}\t{shown}\n")
    return 0
