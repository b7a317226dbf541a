"""``python -m poppins chat``: a conversation in the terminal, remembered in SQLite.

    python -m poppins chat -m .poppins

Each turn is stored in a SQLite database (default ``MODEL_DIR/memory.db``), so a conversation
can be listed (``--list``), resumed (``--conversation ID``) and deleted (``--delete ID``).  The
model sees the most recent turns that fit in its context; older turns are dropped whole.
Lines are read from stdin (a prompt is shown on a terminal); an empty line or end of input
ends the session.  A turn is saved only once its answer is complete.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from ..errors import PoppinsError
from ._sampling import add_sampling_args, sampling_kwargs


def add_parser(sub) -> None:
    p = sub.add_parser("chat", help="talk with the model; conversations are remembered",
                       description=__doc__.split("\n\n")[0])
    add_sampling_args(p)
    p.add_argument("--db", default=None, help="memory database (default MODEL_DIR/memory.db)")
    p.add_argument("--conversation", default=None, metavar="ID", help="resume this conversation")
    p.add_argument("--list", action="store_true", help="list the stored conversations")
    p.add_argument("--delete", default=None, metavar="ID", help="delete a conversation")
    p.set_defaults(run=run)


def _db_path(args) -> Path:
    if args.db:
        return Path(args.db)
    m = Path(args.model)
    return (m if m.is_dir() else m.parent) / "memory.db"


def run(args) -> int:
    from ..memory import Memory

    with Memory(_db_path(args)) as mem:
        if args.list:
            for c in mem.list_conversations():
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(c["updated"]))
                print(f"{c['id']}  {when}  {c['turns']:3d} turns  {c['title']}")
            return 0
        if args.delete:
            mem.delete(args.delete)
            print(f"deleted {args.delete}")
            return 0
        from ..api import Model

        model = Model.load(args.model, threads=args.threads)
        kw = sampling_kwargs(args)
        system = kw.pop("system")
        if args.conversation:
            cid = args.conversation
            if not mem.exists(cid):
                raise PoppinsError(f"no conversation {cid!r} in {mem.path} (see --list)")
            print(f"poppins: resuming conversation {cid} ({len(mem.turns(cid))} turns)",
                  file=sys.stderr)
        else:
            cid = mem.new_conversation(system=model.default_system if system is None else system)
            print(f"poppins: conversation {cid} (resume with --conversation {cid})",
                  file=sys.stderr)
        tty = sys.stdin.isatty()
        while True:
            try:
                line = input("> ") if tty else sys.stdin.readline()
            except EOFError:
                break
            if not tty and not line:
                break
            line = line.rstrip("\n")
            if not line.strip():
                break
            messages = mem.messages(cid, with_tokens=True) + [{"role": "user", "content": line}]
            stream = model.chat_stream(messages, **kw)
            for piece in stream:
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            sys.stdout.flush()
            final = stream.completion
            if final.note:
                print(f"poppins: note: {final.note}", file=sys.stderr)
            mem.add_turn(cid, line, final.text, tokens=final.tokens)
    return 0
