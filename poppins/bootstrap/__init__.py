"""The built-in example: ``train.xml``, ``train.xsd`` and the topic files it imports.

    python -m poppins bootstrap -o my-model
    python -m poppins train -i my-model/train.xml -o my-model/.poppins
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import List

from ..errors import PoppinsError
from ..fileio import atomic_write_bytes


def example_files() -> dict:
    """name -> bytes of every file ``bootstrap`` writes (train.xml first)."""
    data = resources.files(__package__) / "data"
    files = {"train.xml": (data / "train.xml").read_bytes()}
    for entry in sorted(data.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".xml") and entry.name != "train.xml":
            files[entry.name] = entry.read_bytes()
    files["train.xsd"] = (resources.files("poppins.trainxml") / "train.xsd").read_bytes()
    return files


def bootstrap(path=".", force: bool = False) -> List[Path]:
    """Write the example into folder ``path``; refuses to overwrite files unless ``force``."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise PoppinsError(f"{out} exists and is not a folder")
    files = example_files()
    existing = [out / name for name in files if (out / name).exists()]
    if existing and not force:
        names = ", ".join(str(p) for p in existing)
        raise PoppinsError(f"refusing to overwrite existing files: {names} (use --force to replace them)")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in files.items():
        atomic_write_bytes(out / name, data)
        written.append(out / name)
    return written
