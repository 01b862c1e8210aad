"""Importing a table of your own images: throughput of ``preprocessing/import_dataset.py``'s work.

    python bench/import_table.py            # 20,000 rows (small PNGs made here), writes bench/results/import_table.json
    python bench/import_table.py --quick    # 1,000 rows; the same report

The images are synthetic 48 px PNGs (a colour field and a few shapes, distinct content each), dated over five
years; the table is a CSV with ``path, label, timestamp``. Timed: the whole import as a user runs it (read and
parse the table, bin by year, check that every image decodes and hash it, split, place, manifests, card) with
``--link copy`` and ``--link symlink``, alternately, with the progress bar on. Images/s = rows / wall time.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average, machine, median, parser, print_table, write_report  # noqa: E402

from multisource.data.build.importer import ImportConfig, import_table  # noqa: E402
from multisource.data.build.raw import default_workers  # noqa: E402


def make_table(root: Path, rows: int, seed: int = 0) -> Path:
    """``rows`` distinct small PNGs under ``root/img`` and a CSV naming them with dates over 2019-2023."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:48, 0:48]
    records = []
    for i in range(rows):
        img = np.empty((48, 48, 3), np.uint8)
        img[...] = rng.integers(0, 256, 3, dtype=np.uint8)
        cx, cy, r = rng.integers(8, 40, 3)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r // 4] = rng.integers(0, 256, 3, dtype=np.uint8)
        img[i % 48, :, :] = (i * 7) % 256  # distinct content per image
        name = f"img/{i // 1000:03d}/{i:06d}.png"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / name)
        day = pd.Timestamp("2019-01-01") + pd.Timedelta(days=int(rng.integers(0, 5 * 365)))
        records.append({"path": name, "label": f"class_{i % 5}", "timestamp": day.date().isoformat()})
    table = root / "images.csv"
    pd.DataFrame(records).to_csv(table, index=False)
    return table


def main() -> int:
    p = parser("Throughput of importing a table of images (check, hash, split, place, card).",
               "1,000 rows instead of 20,000")
    p.add_argument("--rows", type=int, default=None, help="table rows (default 20000; --quick: 1000)")
    p.add_argument("--repeats", type=int, default=2, help="imports per link mode, alternating (default 2)")
    p.add_argument("--workers", type=int, default=None, help="import threads (default: CPUs, at most 8)")
    args = p.parse_args()
    rows = args.rows or (1000 if args.quick else 20000)
    workers = args.workers or default_workers()
    load_before = load_average()
    work = Path(tempfile.mkdtemp(prefix="bench_import_"))
    try:
        t0 = time.perf_counter()
        table = make_table(work, rows)
        make_s = time.perf_counter() - t0
        times: dict[str, list[float]] = {"copy": [], "symlink": []}
        bins = None
        for _ in range(args.repeats):
            for link in times:
                out = work / f"out_{link}"
                t0 = time.perf_counter()
                card = import_table(table, out, ImportConfig(name="BenchImport", bin_by="year", link=link),
                                    workers=workers, overwrite=True, progress=True)
                times[link].append(time.perf_counter() - t0)
                bins = {b: sum(e["splits"][s]["count"] for s in e["splits"]) for b, e in card["bins"].items()}
        result = {link: {"median_s": median(ts), "times_s": ts, "images_per_s": rows / median(ts)}
                  for link, ts in times.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nImported {rows} rows into {len(bins)} year bins with {workers} worker thread(s) "
          f"(making the images took {make_s:.1f} s):")
    print_table([{"link": k, "median s": f"{v['median_s']:.2f}", "images/s": f"{v['images_per_s']:.0f}"}
                 for k, v in result.items()], [("link", "link"), ("median s", "median s"), ("images/s", "images/s")])
    report = {"quick": args.quick, "rows": rows, "workers": workers, "repeats": args.repeats, "bins": bins,
              "imports": result, "images_made_s": make_s, "machine": machine(load_before)}
    path = write_report(args.output_dir, "import_table", report)
    print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
