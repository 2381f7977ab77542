"""Extract Jane Austen novels from Debian's `r-cran-janeaustenr` package into plain UTF-8 text.

The novels are public domain; the R package that carries them is MIT (see data/pretrain/austen/LICENSE).
Deterministic: the same package version gives byte-identical files.

    apt-get download r-cran-janeaustenr && dpkg -x r-cran-janeaustenr_*.deb pkg
    pip install rdata
    python data/scripts/build_austen.py pkg/usr/lib/R/site-library/janeaustenr data/pretrain/austen
"""

import argparse
import gzip
import zlib
from pathlib import Path

BOOKS = {"prideprejudice": "pride-and-prejudice.txt", "persuasion": "persuasion.txt"}


def read_lazyload_db(package_dir: Path) -> dict[str, list[str]]:
    """Decode R's lazy-load data base (Rdata.rdx index + Rdata.rdb zlib blobs) into {name: lines}."""
    import rdata  # only needed to rebuild the shipped files

    data_dir = package_dir / "data"
    index = rdata.conversion.convert(rdata.parser.parse_data(gzip.decompress((data_dir / "Rdata.rdx").read_bytes())))
    blob = (data_dir / "Rdata.rdb").read_bytes()
    books = {}
    for name, (offset, length) in index["variables"].items():
        record = blob[int(offset) : int(offset) + int(length)]
        # each record: 4-byte big-endian uncompressed length, then a zlib stream
        value = rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(record[4:])))
        books[str(name)] = [str(line) for line in value]
    return books


def main() -> None:
    """Write the selected novels, one line of the original per line, to the output directory."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    books = read_lazyload_db(args.package_dir)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, file_name in BOOKS.items():
        text = "\n".join(books[name]).strip() + "\n"
        (args.out_dir / file_name).write_text(text, encoding="utf-8")
        print(f"{file_name}: {len(text):,} characters")


if __name__ == "__main__":
    main()
