"""Loader throughput: image folders vs the packed cache, same data, train transforms at 224 px.

    python bench/data_loading.py            # full run (a few minutes at most), writes bench/results/data_loading.json
    python bench/data_loading.py --quick    # under a minute; same report on less data

The data are synthetic: a fake CLEAR-10 raw tree of JPEGs (smooth random scenes with texture and noise, sizes
around Flickr's 500 px), built into the framework's layout by the real CLEAR-10 preprocessing (with
``--cache_size 256``), in a temporary folder. Pass ``--data_root`` to measure an already built dataset
(with a packed cache) instead. Images/s are measured over whole batches of the bin's train split after one
warm-up batch, through the framework's own loader (``make_loader``) and train transform; the two paths are
measured alternately, a few times each, and the median is reported (the machine may be shared).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image

from multisource.data.build.clear import build_clear
from multisource.data.datasets import get_dataset
from multisource.data.folder import BinSplitDataset
from multisource.data.batch_augment import BatchAugment, DeviceBatches, UInt8Crops
from multisource.data.loaders import make_loader, open_dataset
from multisource.data.packed import PackedDataset, open_packed, packed_paths
from multisource.data.transforms import DataConfig, make_transform
from multisource.utils.io import read_json, write_json

RESULTS = Path(__file__).resolve().parent / "results" / "data_loading.json"
SIZES = ((500, 375), (375, 500), (500, 333), (640, 480), (500, 500))


def synthetic_photo(rng: np.random.Generator) -> Image.Image:
    """A JPEG-friendly 'photo': smooth colour field, a few shapes, fine texture and sensor noise."""
    w, h = SIZES[rng.integers(len(SIZES))]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        fx, fy, ph = rng.uniform(0.002, 0.02, 2).tolist() + [rng.uniform(0, 6.3)]
        img[..., c] = 128 + 90 * np.sin(fx * xx + ph) * np.cos(fy * yy)
    for _ in range(4):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(20, 120)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    img += (12 * np.sin(xx * 0.7) * np.sin(yy * 0.9))[..., None]  # fine texture: JPEG cannot flatten it
    img += 6 * rng.standard_normal(img.shape, dtype=np.float32)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def make_fake_clear10(raw: Path, per_class: int, seed: int = 0) -> int:
    """A CLEAR-10 raw tree: ``per_class`` JPEGs per class in buckets 1-2 (the measured bin), 1 tiny one elsewhere."""
    classes = get_dataset("clear10").classes
    rng = np.random.default_rng(seed)
    (raw / "class_names.txt").parent.mkdir(parents=True, exist_ok=True)
    (raw / "class_names.txt").write_text("\n".join(["BACKGROUND", *classes]) + "\n")
    n = 0
    for bucket in range(1, 11):
        for cls in classes:
            folder = raw / "labeled_images" / str(bucket) / cls
            folder.mkdir(parents=True)
            if bucket > 2:  # not measured: one small image keeps the build valid
                Image.new("RGB", (64, 48), (bucket * 20, 90, 120)).save(folder / f"{bucket}00000.jpg")
                n += 1
                continue
            for i in range(per_class):
                synthetic_photo(rng).save(folder / f"{bucket}{i:05d}.jpg", quality=90)
                n += 1
    return n


def throughput(dataset, *, workers: int, batch_size: int, max_images: int, wrap=None) -> dict:
    """Images/s over whole batches after one warm-up batch (worker start-up excluded); ``wrap`` turns the loader
    into the one measured (the batched path: colour jitter and normalisation on the device, per batch)."""
    torch.manual_seed(0)
    loader = make_loader(dataset, batch_size=batch_size, train=True, num_workers=workers, seed=0)
    loader = wrap(loader) if wrap else loader
    it = iter(loader)
    next(it)
    n, t0 = 0, time.perf_counter()
    for x, _ in it:
        n += x.shape[0]
        if n >= max_images:
            break
    dt = time.perf_counter() - t0
    del it, loader
    return {"images": n, "time_s": round(dt, 3), "images_per_s": round(n / dt, 1) if dt else None}


def _median(runs: list[dict]) -> dict:
    """The run with the median images/s, plus every run's images/s."""
    ordered = sorted(runs, key=lambda r: r["images_per_s"] or 0)
    return {**ordered[len(ordered) // 2], "runs_images_per_s": [r["images_per_s"] for r in runs]}


def stage_costs(folder_ds: BinSplitDataset, packed_ds: PackedDataset, n: int = 64) -> dict:
    """Milliseconds per image of each stage, in this process: where the time goes."""
    from torchvision import transforms as T

    ops = folder_ds.transform.transforms
    resize, rest = ops[0], T.Compose(ops[1:])
    idx = list(range(min(n, len(folder_ds))))

    def ms(fn) -> float:
        t0 = time.perf_counter()
        for i in idx:
            fn(i)
        return round((time.perf_counter() - t0) / len(idx) * 1000, 2)

    torch.manual_seed(0)
    return {"folder_decode": ms(folder_ds.load_image), "resize_256": ms(lambda i: resize(folder_ds.load_image(i))),
            "packed_read": ms(packed_ds.load_image), "crop_flip_jitter_tensor": ms(lambda i: rest(packed_ds.load_image(i))),
            "note": "resize_256 includes the decode; crop_flip_jitter_tensor includes packed_read"}


def folder_bytes(root: Path, bin_name: str, split: str) -> int:
    return sum(p.stat().st_size for p in (root / bin_name / split).rglob("*") if p.is_file())


def run(args: argparse.Namespace, data_root: Path, synthetic: dict | None) -> dict:
    handle = open_dataset("clear10", data_root)
    bin_name, split = handle.bins[0], "train"
    transform = make_transform(DataConfig(image_size=224), train=True)
    # decode every time, as on a real dataset too large for BinSplitDataset's in-memory cache
    folder_ds = BinSplitDataset(handle.root, bin_name, split, handle.classes, transform, cache=False)
    packed_ds = open_packed(handle, bin_name, split, transform)
    if not isinstance(packed_ds, PackedDataset):
        raise SystemExit(f"No valid packed cache for {bin_name}/{split} in {data_root}; build it with "
                         "--cache_size 256 (or --cache_only --cache_size 256).")
    max_images = min(len(folder_ds), args.max_images)
    load_before = round(os.getloadavg()[0], 2)  # other processes on the machine slow both paths alike
    # As in DataLoader workers: one intra-op thread, so per-image tensor ops do not fight over the cores.
    torch.set_num_threads(1)
    # The batched path: uint8 crops from the packed cache, colour jitter + normalisation per batch on the device.
    cfg = DataConfig(image_size=224)
    crops = UInt8Crops(packed_ds, cfg, train=True)
    device = torch.device(args.device)

    def on_device(loader):
        return DeviceBatches(loader, BatchAugment(cfg, train=True), device)

    def crops_only(loader):  # what the loader feeds when a GPU does the jitter: uint8 crops, normalised only
        return DeviceBatches(loader, BatchAugment(cfg, train=False), device)

    rows = []
    for w in args.workers:
        runs: dict[str, list[dict]] = {"folder": [], "packed": [], "packed_batch": [], "packed_crops": []}
        for _ in range(args.repeats):  # alternate the paths so a change in machine load hits all alike
            runs["folder"].append(throughput(folder_ds, workers=w, batch_size=args.batch_size, max_images=max_images))
            runs["packed"].append(throughput(packed_ds, workers=w, batch_size=args.batch_size, max_images=max_images))
            runs["packed_batch"].append(throughput(crops, workers=w, batch_size=args.batch_size, max_images=max_images,
                                                   wrap=on_device))
            runs["packed_crops"].append(throughput(crops, workers=w, batch_size=args.batch_size, max_images=max_images,
                                                   wrap=crops_only))
        f, p, b, c = (_median(runs[k]) for k in ("folder", "packed", "packed_batch", "packed_crops"))
        ratio = round(p["images_per_s"] / f["images_per_s"], 2) if f["images_per_s"] and p["images_per_s"] else None
        batch_ratio = round(b["images_per_s"] / f["images_per_s"], 2) if f["images_per_s"] and b["images_per_s"] \
            else None
        crops_ratio = round(c["images_per_s"] / f["images_per_s"], 2) if f["images_per_s"] and c["images_per_s"] \
            else None
        rows.append({"workers": w, "folder": f, "packed": p, "packed_batch": b, "packed_crops": c,
                     "ratio_packed_over_folder": ratio, "ratio_packed_batch_over_folder": batch_ratio,
                     "ratio_packed_crops_over_folder": crops_ratio})
        print(f"  workers={w}: folder {f['images_per_s']:>7} img/s, packed {p['images_per_s']:>7} img/s "
              f"({ratio}x), packed + batched jitter on {device.type} {b['images_per_s']:>7} img/s ({batch_ratio}x), "
              f"packed crops only {c['images_per_s']:>7} img/s ({crops_ratio}x)",
              flush=True)
    return {
        "benchmark": "data_loading", "quick": args.quick,
        "data": synthetic or {"kind": "existing dataset", "root": str(data_root)},
        "split": f"{bin_name}/{split}", "split_images": len(folder_ds), "batch_size": args.batch_size,
        "repeats": args.repeats, "statistic": "median over repeats, the three paths alternated",
        "device": args.device,
        "paths": {"folder": "decode JPEG + PIL transforms per image", "packed": "packed cache + PIL transforms per "
                  "image", "packed_batch": "packed cache, uint8 crop/flip per image, colour jitter and normalisation "
                  "per batch as tensor ops on the device (multisource.data.batch_augment)",
                  "packed_crops": "the batched path without the colour jitter: what the loader feeds when the jitter "
                                  "runs on a GPU (the loader's ceiling there)"},
        "transform": "train: Resize(256), RandomCrop(224), RandomHorizontalFlip, ColorJitter(0.2,0.2,0.2,0.1), "
                     "ToTensor, Normalize (ImageNet)",
        "image_size": 224, "cache_size": read_json(packed_paths(data_root, bin_name, split)[1])["size"],
        "bytes_on_disk": {"folder": folder_bytes(data_root, bin_name, split), "packed": packed_ds.npy.stat().st_size},
        "results": rows,
        "per_image_ms": stage_costs(folder_ds, packed_ds),
        "machine": {"cpus": os.cpu_count(), "load_average_1m_before_after": [load_before, round(os.getloadavg()[0], 2)],
                    "torch_threads": torch.get_num_threads(), "python": sys.version.split()[0],
                    "platform": platform.platform(), "torch": torch.__version__,
                    "pillow": PIL.__version__},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small data, workers 0 only (< 1 minute)")
    p.add_argument("--per_class", type=int, default=None, help="synthetic JPEGs per class and bucket (default 40; 6 quick)")
    p.add_argument("--workers", type=int, nargs="+", default=None, help="loader worker counts (default 0 1 2; 0 quick)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_images", type=int, default=320, help="images timed per measurement (after warm-up)")
    p.add_argument("--repeats", type=int, default=None, help="measurements per path and worker count; the median "
                                                               "is reported (default 3; 1 quick)")
    p.add_argument("--data_root", default=None, help="measure this built clear10-layout dataset instead")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="where the batched path applies its colour jitter (default cpu; cuda on a GPU machine)")
    p.add_argument("--output", default=str(RESULTS), help=f"JSON report (default {RESULTS})")
    args = p.parse_args(argv)
    args.per_class = args.per_class or (6 if args.quick else 40)
    args.workers = args.workers or ([0] if args.quick else [0, 1, 2])
    args.repeats = args.repeats or (1 if args.quick else 3)
    with tempfile.TemporaryDirectory(prefix="bench_data_loading_") as tmp:
        if args.data_root:
            data_root, synthetic = Path(args.data_root).resolve(), None
        else:
            print(f"Data: synthetic CLEAR-10-like JPEGs ({args.per_class} per class in buckets 1-2), built with the "
                  "CLEAR-10 preprocessing and --cache_size 256 in a temporary folder.", flush=True)
            t0 = time.perf_counter()
            n = make_fake_clear10(Path(tmp) / "raw", args.per_class)
            t1 = time.perf_counter()
            data_root = Path(tmp) / "CLEAR10"
            build_clear("clear10", Path(tmp) / "raw", data_root, workers=os.cpu_count(), cache_size=256, progress=False)
            synthetic = {"kind": "synthetic CLEAR-10-like JPEGs (fake raw tree, temporary folder)",
                         "raw_images": n, "jpeg_quality": 90, "image_sizes": [list(s) for s in SIZES],
                         "generate_s": round(t1 - t0, 2), "preprocess_with_cache_s": round(time.perf_counter() - t1, 2)}
        report = run(args, data_root, synthetic)
    write_json(args.output, report)
    best = max(report["results"], key=lambda r: r["packed"]["images_per_s"] or 0)
    print(f"Wrote {args.output} (best packed: {best['packed']['images_per_s']} img/s with {best['workers']} workers)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
