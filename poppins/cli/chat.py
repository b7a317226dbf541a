"""``python -m poppins chat``: a conversation in the terminal, remembered in SQLite.

    python -m poppins chat -m .poppins

Each turn is stored in a SQLite database (default ``MODEL_DIR/memory.db``), so a conversation
can be listed (``--list``), resumed (``--conversation ID``, its earlier turns are shown) and
deleted (``--delete ID``).  The model sees the most recent turns that fit in its context;
older turns are dropped whole.  A turn is saved only once its answer is complete.

In a terminal: line editing and history (readline, where Python has it), the answer streamed
as it is generated, Ctrl+C stops the answer (the session goes on; the stopped turn is not
kept), Ctrl+D or /quit leaves.  A line ending in a backslash continues on the next line, a
line of three double quotes opens and closes a multi-line block, and a pasted paragraph is
one message.  Commands: /help, /new (a new conversation), /system [TEXT] (show the system
prompt, or start a new conversation with TEXT), /list, /resume ID, /history, /quit; a
message that starts with "/" is written "//...".  Piped input: one message per line.
"""
from __future__ import annotations

import select
import sys
import time
from pathlib import Path

from ..errors import PoppinsError
from ._sampling import add_sampling_args, sampling_kwargs

HELP = """commands:
  /help             this help
  /new              start a new conversation (same system prompt)
  /system           show the system prompt
  /system TEXT      start a new conversation with the system prompt TEXT ("/system -": none)
  /list             the stored conversations
  /resume ID        continue a stored conversation (its turns are shown)
  /history          show this conversation
  /quit             leave (also /exit or Ctrl+D)
input: end a line with \\ to continue it; a line of \"\"\" opens and closes a block;
Ctrl+C stops an answer (the session goes on); //text sends "/text"."""


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


def _listing(mem) -> str:
    lines = []
    for c in mem.list_conversations():
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(c["updated"]))
        lines.append(f"{c['id']}  {when}  {c['turns']:3d} turns  {c['title']}")
    return "\n".join(lines) if lines else "(no conversations yet)"


class _Input:
    """Messages from the terminal (readline, continuation lines, blocks, pastes) or, piped,
    one per line.  read() returns None at the end of input."""

    def __init__(self, history_file: Path):
        self.tty = sys.stdin.isatty() and sys.stdout.isatty()
        self.history_file = history_file
        self.readline = None
        if self.tty:
            try:
                import readline
                self.readline = readline
                readline.set_history_length(1000)
                if history_file.is_file():
                    readline.read_history_file(str(history_file))
            except (ImportError, OSError):
                pass

    def save_history(self) -> None:
        if self.readline is not None:
            try:
                self.readline.write_history_file(str(self.history_file))
            except OSError:
                pass

    def _line(self, prompt: str):
        if self.tty:
            try:
                return input(prompt)
            except EOFError:
                return None
        line = sys.stdin.readline()
        return line.rstrip("\n") if line else None

    def _pending(self) -> bool:
        """More typed or pasted input is already waiting (a paste arrives all at once)."""
        try:
            return bool(select.select([sys.stdin], [], [], 0.03)[0])
        except (OSError, ValueError):
            return False

    def read(self):
        line = self._line("> ")
        if line is None:
            return None
        if line.strip() == '"""':                       # a block, until the next """
            parts = []
            while True:
                more = self._line("... ")
                if more is None or more.strip() == '"""':
                    break
                parts.append(more)
            return "\n".join(parts)
        parts = [line]
        while True:
            if parts[-1].endswith("\\"):
                parts[-1] = parts[-1][:-1]
                more = self._line("... ")
            elif self.tty and self._pending():           # the rest of a pasted paragraph
                more = self._line("")
            else:
                break
            if more is None:
                break
            parts.append(more)
        return "\n".join(parts)


def run(args) -> int:
    from ..memory import Memory

    with Memory(_db_path(args)) as mem:
        if args.list:
            print(_listing(mem))
            return 0
        if args.delete:
            mem.delete(args.delete)
            print(f"deleted {args.delete}")
            return 0
        from ..api import Model

        model = Model.load(args.model, threads=args.threads)
        kw = sampling_kwargs(args)
        system = kw.pop("system")
        system = model.default_system if system is None else system
        inp = _Input(_db_path(args).with_name("chat_history"))
        # what a terminal user reads goes to stdout; piped, stdout carries only the answers
        info = sys.stdout if inp.tty else sys.stderr

        def say(text: str) -> None:
            print(text, file=info, flush=True)

        def show(cid: str) -> None:
            sys_text = mem.system(cid)
            if sys_text:
                say(f"[system] {sys_text}")
            for user, answer in mem.turns(cid):
                say(f"> {user}\n{answer}")

        def resume(cid: str) -> str:
            if not mem.exists(cid):
                raise PoppinsError(f"no conversation {cid!r} in {mem.path} (see /list or --list)")
            print(f"poppins: resuming conversation {cid} ({len(mem.turns(cid))} turns)",
                  file=sys.stderr, flush=True)
            show(cid)
            return cid

        def new(sys_text) -> str:
            cid = mem.new_conversation(system=sys_text)
            print(f"poppins: conversation {cid} (resume with --conversation {cid})",
                  file=sys.stderr, flush=True)
            return cid

        cid = resume(args.conversation) if args.conversation else new(system)
        if inp.tty:
            say("(type /help for commands, /quit or Ctrl+D to leave)")
        try:
            while True:
                try:
                    line = inp.read()
                except KeyboardInterrupt:
                    say("^C (type /quit or press Ctrl+D to leave)")
                    continue
                if line is None:
                    break
                if not line.strip():
                    continue
                if line.startswith("/") and not line.startswith("//"):
                    cmd, _, rest = line[1:].partition(" ")
                    rest = rest.strip()
                    if cmd in ("quit", "exit", "q"):
                        break
                    elif cmd in ("help", "?"):
                        say(HELP)
                    elif cmd == "new":
                        cid = new(mem.system(cid))
                    elif cmd == "system":
                        if not rest:
                            say(f"[system] {mem.system(cid) or '(none)'}")
                        else:
                            cid = new("" if rest == "-" else rest)
                    elif cmd == "list":
                        say(_listing(mem))
                    elif cmd == "resume":
                        try:
                            cid = resume(rest)
                        except PoppinsError as exc:
                            say(f"poppins: {exc}")
                    elif cmd == "history":
                        show(cid)
                    else:
                        say(f"unknown command /{cmd} (see /help; //{cmd} sends the text)")
                    continue
                if line.startswith("//"):
                    line = line[1:]
                _answer(model, mem, cid, line, kw, say)
        finally:
            inp.save_history()
    return 0


def _answer(model, mem, cid, line, kw, say) -> None:
    """Streams the answer to ``line``; Ctrl+C stops it (nothing is saved then)."""
    messages = mem.messages(cid, with_tokens=True) + [{"role": "user", "content": line}]
    stream = model.chat_stream(messages, **kw)
    try:
        for piece in stream:
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        stream.close()
        sys.stdout.write("\n")
        sys.stdout.flush()
        say("[stopped: this turn is not kept]")
        return
    except PoppinsError as exc:            # e.g. a message longer than the context
        sys.stdout.write("\n")
        say(f"poppins: {exc}")
        return
    sys.stdout.write("\n")
    sys.stdout.flush()
    final = stream.completion
    if final.note:
        print(f"poppins: note: {final.note}", file=sys.stderr)
    mem.add_turn(cid, line, final.text, tokens=final.tokens)
