"""A deterministic corpus of English-like text files for the benchmark.

Every contender must see the same bytes, run after run, so everything here derives from a seed:
file *i* is generated from its own `Random(f"{seed}:{i}")`, which also makes the corpus of N
files the first N files of any larger corpus. Sizes are log-uniform between 1 and 64 KB (mean
about 16 KB, so 2,000 files come to about 31-32 MB), the formats a realistic mix of .txt, .md,
.csv, .json and .html, and every file gets a fixed mtime so even `stat` output is reproducible.

    python -m bench.corpus --files 2000 --seed 42 --out /tmp/corpus
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

GENERATOR_VERSION = 1  # bump when the output changes, so cached corpora are regenerated
MIN_BYTES = 1024
MAX_BYTES = 64 * 1024
LOW_TARGET = 1200  # log-uniform targets from here to MAX_BYTES: mean ~16 KB, min >= 1 KB
FILES_PER_FOLDER = 1000
FIXED_MTIME = 1_700_000_000  # 2023-11-14: old enough that any settle window has passed

FORMATS = (("txt", 30), ("md", 25), ("csv", 15), ("json", 15), ("html", 15))

_WORD_LIST = """
the of and to a in is it you that he was for on are with as his they be at one have this from
or had by hot word but what some we can out other were all there when up use your how said an
each she which do their time if will way about many then them write would like so these her
long make thing see him two has look more day could go come did number sound no most people my
over know water than call first who may down side been now find any new work part take get
place made live where after back little only round man year came show every good me give our
under name very through just form sentence great think say help low line differ turn cause much
mean before move right boy old too same tell does set three want air well also play small end
put home read hand port large spell add even land here must big high such follow act why ask
men change went light kind off need house picture try us again animal point mother world near
build self earth father head stand own page should country found answer school grow study still
learn plant cover food sun four between state keep eye never last let thought city tree cross
farm hard start might story saw far sea draw left late run while press close night real life
few north open seem together next white children begin got walk example ease paper group always
music those both mark often letter until mile river car feet care second book carry took science
eat room friend began idea fish mountain stop once base hear horse cut sure watch color face
wood main enough plain girl usual young ready above ever red list though feel talk bird soon
body dog family direct pose leave song measure door product black short numeral class wind
question happen complete ship area half rock order fire south problem piece told knew pass since
top whole king space heard best hour better true during hundred five remember step early hold
west ground interest reach fast verb sing listen six table travel less morning ten simple
several vowel toward war lay against pattern slow center love person money serve appear road
map rain rule govern pull cold notice voice unit power town fine certain fly fall lead cry dark
machine note wait plan figure star box noun field rest correct able pound done beauty drive
stood contain front teach week final gave green quick develop ocean warm free minute strong
special mind behind clear tail produce fact street inch multiply nothing course stay wheel full
force blue object decide surface deep moon island foot system busy test record boat common gold
possible plane instead dry wonder laugh thousand ago ran check game shape equate miss brought
heat snow tire bring yes distant fill east paint language among report document storage bucket
invoice contract policy review budget quarter revenue customer supplier shipment analysis model
"""
WORDS = tuple(_WORD_LIST.split())
CUM_WEIGHTS = list(itertools.accumulate(1.0 / (rank + 1) ** 0.9 for rank in range(len(WORDS))))
CATEGORIES = ("finance", "legal", "operations", "research", "sales", "support")


def words(rng: random.Random, low: int, high: int) -> list[str]:
    """A Zipf-weighted run of words, so term frequencies look like real prose to TF-IDF."""
    return rng.choices(WORDS, cum_weights=CUM_WEIGHTS, k=rng.randint(low, high))


def sentence(rng: random.Random) -> str:
    """One capitalised sentence of 6-22 words, sometimes with a comma, ending in a stop."""
    chosen = words(rng, 6, 22)
    if len(chosen) > 9 and rng.random() < 0.4:
        chosen[rng.randint(3, len(chosen) - 4)] += ","
    return " ".join(chosen).capitalize() + rng.choice(".....?!")


def paragraph(rng: random.Random) -> str:
    """Three to eight sentences: the unit the chunker in the daemon likes to split on."""
    return " ".join(sentence(rng) for _ in range(rng.randint(3, 8)))


def title(rng: random.Random) -> str:
    """A short title-cased heading."""
    return " ".join(words(rng, 2, 6)).title()


@dataclass(frozen=True)
class Shape:
    """How one format is laid out: fixed head and foot, a big and a small body piece.

    The body grows with big pieces while they fit the size target, then with small ones, so
    every file lands within a sentence of its target and never above it.
    """

    head: Callable[[random.Random, int], str]
    foot: str
    big: Callable[[random.Random, int], str]
    small: Callable[[random.Random, int], str]


def _md_big(rng: random.Random, n: int) -> str:
    """A section: heading every few pieces, otherwise a paragraph or a bullet list."""
    roll = rng.random()
    if roll < 0.2:
        return f"## {title(rng)}\n\n"
    if roll < 0.35:
        return "".join(f"- {sentence(rng)}\n" for _ in range(rng.randint(2, 5))) + "\n"
    return paragraph(rng) + "\n\n"


def _csv_row(rng: random.Random, n: int) -> str:
    """One CSV record with a quoted free-text column, like an export from a ticketing tool."""
    day = f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    notes = sentence(rng).replace('"', "'")
    amount = f"{rng.uniform(1, 99999):.2f}"
    return f'{n},{day},{rng.choice(CATEGORIES)},"{title(rng)}",{amount},"{notes}"\n'


def _json_record(rng: random.Random, n: int, small: bool = False) -> str:
    """One record of a JSON array (with its separator), pretty-printed like an API dump."""
    body = sentence(rng) if small else paragraph(rng)
    record = {"id": n, "title": title(rng), "category": rng.choice(CATEGORIES), "body": body}
    text = json.dumps(record, indent=2)
    return ",\n" + "\n".join("  " + line for line in text.splitlines())


def _html_big(rng: random.Random, n: int) -> str:
    """A heading or a paragraph element."""
    if rng.random() < 0.2:
        return f"<h2>{title(rng)}</h2>\n"
    return f"<p>{paragraph(rng)}</p>\n"


SHAPES: dict[str, Shape] = {
    "txt": Shape(lambda r, i: f"{title(r)} (document {i})\n\n", "",
                 lambda r, n: paragraph(r) + "\n\n", lambda r, n: sentence(r) + "\n"),
    "md": Shape(lambda r, i: f"# {title(r)} (document {i})\n\n", "",
                _md_big, lambda r, n: sentence(r) + "\n"),
    "csv": Shape(lambda r, i: f"# document {i}\nid,date,category,title,amount,notes\n", "",
                 _csv_row, _csv_row),
    "json": Shape(lambda r, i: f'{{"document": {i}, "records": [\n  {{"id": -1}}', "\n]}\n",
                  _json_record, lambda r, n: _json_record(r, n, small=True)),
    "html": Shape(lambda r, i: (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
                                f"<title>{title(r)}</title></head>\n<body>\n"
                                f"<h1>Document {i}</h1>\n"), "</body></html>\n",
                  _html_big, lambda r, n: f"<p>{sentence(r)}</p>\n"),
}


def _fill(shape: Shape, rng: random.Random, index: int, target: int) -> str:
    """Assemble head, body pieces and foot, staying at or below `target` bytes."""
    head = shape.head(rng, index)
    parts, size = [head], len(head) + len(shape.foot)
    for maker in (shape.big, shape.small):
        misses = 0
        while misses < 3:  # a few tries: a smaller piece of the same kind may still fit
            piece = maker(rng, len(parts))
            if size + len(piece) > target:
                misses += 1
                continue
            parts.append(piece)
            size += len(piece)
    return "".join(parts) + shape.foot


def document(seed: int, index: int) -> tuple[str, str]:
    """File `index` of the corpus: its extension and its text (ASCII, so bytes == chars)."""
    rng = random.Random(f"{seed}:{index}")
    ext = rng.choices([f for f, _ in FORMATS], weights=[w for _, w in FORMATS])[0]
    target = int(math.exp(rng.uniform(math.log(LOW_TARGET), math.log(MAX_BYTES))))
    text = _fill(SHAPES[ext], rng, index, target)
    while len(text) < MIN_BYTES:  # the head alone never reaches 1 KB; pad the rare short one
        text += sentence(rng) + "\n"
    return ext, text


def relative_path(index: int, ext: str) -> Path:
    """`part-000/doc-000042.md`: folders of 1,000, and names unique across the whole corpus
    (the reference keys objects by basename, so two equal basenames would collide)."""
    return Path(f"part-{index // FILES_PER_FOLDER:03d}") / f"doc-{index:06d}.{ext}"


def generate(out: Path, files: int, seed: int) -> int:
    """Write the corpus into `out` (which must not exist yet); returns the total bytes."""
    total = 0
    for index in range(files):
        ext, text = document(seed, index)
        path = out / relative_path(index, ext)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode("ascii"))
        os.utime(path, (FIXED_MTIME, FIXED_MTIME))
        total += len(text)
    return total


def corpus_files(root: Path) -> list[Path]:
    """Every file of a corpus folder, in a stable order."""
    return sorted(p for p in root.rglob("*") if p.is_file())


def ensure(cache: Path, files: int, seed: int) -> Path:
    """The corpus for (files, seed) under `cache`, generated once and then reused.

    A manifest written last marks a complete corpus; anything else found there is a corpus
    interrupted mid-way and is regenerated from scratch.
    """
    name = f"n{files}-s{seed}-v{GENERATOR_VERSION}"
    root, manifest = cache / name, cache / f"{name}.json"
    if manifest.exists() and root.is_dir():
        return root
    shutil.rmtree(root, ignore_errors=True)
    draft = cache / f".{name}.draft-{os.getpid()}"
    shutil.rmtree(draft, ignore_errors=True)
    total = generate(draft, files, seed)
    draft.rename(root)
    manifest.write_text(json.dumps({"files": files, "seed": seed, "bytes": total}) + "\n")
    return root


def describe(root: Path) -> Iterator[str]:
    """Counts by extension and size range, for the corpus line printed above the table."""
    paths = corpus_files(root)
    sizes = [p.stat().st_size for p in paths]
    by_ext: dict[str, int] = {}
    for p in paths:
        by_ext[p.suffix] = by_ext.get(p.suffix, 0) + 1
    yield (f"{len(paths)} files, {sum(sizes) / 1e6:.1f} MB, {min(sizes)}-{max(sizes)} bytes, "
           f"mean {sum(sizes) / max(len(sizes), 1) / 1024:.1f} KiB")
    yield ", ".join(f"{ext} {count}" for ext, count in sorted(by_ext.items()))


def main() -> None:
    """Generate a corpus into a folder of your choosing."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.out.exists():
        parser.error(f"{args.out} exists")
    generate(args.out, args.files, args.seed)
    for line in describe(args.out):
        print(line)


if __name__ == "__main__":
    main()
