"""``python -m poppins bootstrap``: write the example train.xml, train.xsd and topic files.

    python -m poppins bootstrap -o my-model
"""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("bootstrap", help="write an example train.xml (with train.xsd and topic files)",
                       description="Write poppins' example train.xml, its train.xsd and the topic "
                                   "files it imports into a folder.")
    p.add_argument("-o", "--output", default=".", metavar="DIR",
                   help="folder to write into (default: the current folder)")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..bootstrap import bootstrap

    for path in bootstrap(args.output, force=args.force):
        print(f"wrote {path}")
    print(f"next: python -m poppins train -i {args.output.rstrip('/') + '/' if args.output != '.' else ''}train.xml")
    return 0
