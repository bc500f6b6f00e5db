"""Slim copies of the pinned wheels, so that all of them travel to the lent GPU machine in ONE call.

The device tool carries at most 64 MiB per call (tree included). As published, bitsandbytes 0.50.2 is
41 MiB (a CUDA library for each of CUDA 11.8 to 13.2, ROCm and XPU) and unsloth 2026.10.9 is 27 MiB
(26 of them its ``studio/`` web app and the ``unsloth_cli`` package, which ``import unsloth`` never
reaches): 74 MiB for the whole set. The image's torch is 2.11.0+cu130, so bitsandbytes needs only its
``cuda130`` (and ``cuda132``) and ``cpu`` libraries. ``slim`` rewrites those two wheels without the rest
(RECORD rewritten to match) and copies the others unchanged: about 14 MiB in all (docs/gpu.md lists them).

    python -m benchmarks.gpu.wheels SRC_DIR DEST_DIR
"""

from __future__ import annotations

import re
import shutil
import sys
import zipfile
from pathlib import Path

if __package__ in (None, ""):  # run by path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# (wheel name prefix, members to leave out)
DROP = {
    "bitsandbytes-": re.compile(r"^bitsandbytes/libbitsandbytes_(?!cpu\.|cuda13\d\.).*\.(so|dll|dylib)$"),
    "unsloth-": re.compile(r"^(studio|unsloth_cli)/"),
}
MiB = 2 ** 20


def slim_wheel(src: Path, dest: Path, drop: re.Pattern) -> int:
    """``src`` rewritten to ``dest`` without the members ``drop`` matches; returns how many were left out."""
    left_out = 0
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            if drop.search(info.filename):
                left_out += 1
                continue
            data = zin.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = ("\n".join(line for line in lines if not drop.search(line.split(",")[0])) + "\n").encode()
            zout.writestr(info, data)
    return left_out


def slim(src_dir: Path, dest_dir: Path) -> list[dict]:
    dest_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for wheel in sorted(Path(src_dir).glob("*.whl")):
        target = dest_dir / wheel.name
        drop = next((pattern for prefix, pattern in DROP.items() if wheel.name.startswith(prefix)), None)
        left_out = slim_wheel(wheel, target, drop) if drop else 0
        if drop is None:
            shutil.copy(wheel, target)
        rows.append({"wheel": wheel.name, "published_mib": wheel.stat().st_size / MiB,
                     "carried_mib": target.stat().st_size / MiB, "left_out_files": left_out})
    return rows


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__)
        return 2
    rows = slim(Path(args[0]), Path(args[1]))
    for r in rows:
        print(f"{r['wheel']:60s} {r['published_mib']:6.2f} MiB -> {r['carried_mib']:6.2f} MiB"
              + (f" ({r['left_out_files']} files left out)" if r["left_out_files"] else ""))
    print(f"{'total':60s} {sum(r['published_mib'] for r in rows):6.2f} MiB -> "
          f"{sum(r['carried_mib'] for r in rows):6.2f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
