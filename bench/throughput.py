"""Training throughput: our source trainer (Lightning) and GRASP's fine-tuning loop vs a plain PyTorch loop.

    python bench/throughput.py            # tiny-resnet + mobilevit-xxs at 32 px, tiny-resnet at 8 px, 12 rounds
    python bench/throughput.py --quick    # tiny-resnet, 2 epochs, 1 repeat (under a minute)

Same model (fresh, same seed), same data (drifting digits era_1 train split through the framework's loader
and train transforms), same batch size, optimiser (AdamW), per-step cosine schedule, gradient clipping and
precision in all three loops. The loops run alternately (plain, ours-Lightning, plain, ours-finetune) so a
change in machine load hits them alike; the median over repeats is reported.

Images/s are steady-state training steps: the training loop's time in epochs 2..E (epoch 1 warms up, and
decodes the images into the dataset's memory cache), from the start of an epoch's batch iteration to the end
of its last optimiser step, data loading and per-step framework work included. What each loop does outside
its training steps (start-up before the first epoch, validation and best-weights copies after each epoch) is
reported separately, in seconds.

* plain: ``for x, y in loader: loss = ce(model(x), y); zero_grad; backward; clip; step; schedule``.
* source trainer: ``training.source.fit_classifier`` (Lightning; progress bar off, TensorBoard + CSV
  loggers on, as a source training runs). Timed with a callback attached through
  ``ClassifierModule.configure_callbacks`` (patched for the benchmark only).
* GRASP fine-tune: ``training.loop.finetune`` (what every GRASP/FUSION step calls), timed by wrapping its
  train loader.

Noise: on a shared CPU the same loop measured twice can differ by 10-15 %, so every round also compares the
two plain runs (``plain_vs_plain``: the noise floor) and the interquartile range of the paired ratios is
reported. ``tiny-resnet@8`` is a probe: its steps are several times cheaper, so fixed per-step framework
costs (hooks, logging, progress bars) show up as a larger share, and ``overhead_ms_per_step`` estimates them.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from unittest import mock

from common import (build_digits, load_average, machine, median, parser, print_table, quiet_lightning, ratio,
                    setup, write_report)

BIN = "era_1"
LR, WD, CLIP = 1e-3, 0.01, 1.0
LOOPS = ("plain", "source_trainer", "grasp_finetune")


def _now(cuda: bool) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds); the device is synchronised first on CUDA."""
    if cuda:
        import torch

        torch.cuda.synchronize()
    return time.perf_counter(), time.process_time()


class TimedLoader:
    """A loader wrapper recording, per epoch, when iteration started, when each batch was handed out, when
    the consumer asked for the batch after the last one (its last step is done by then), and the images."""

    def __init__(self, loader, cuda: bool = False) -> None:
        self.loader, self.cuda = loader, cuda
        self.dataset, self.batch_size = loader.dataset, loader.batch_size
        self.epochs: list[dict] = []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        rec = {"start": _now(self.cuda), "marks": [], "images": 0}
        self.epochs.append(rec)
        for x, y in self.loader:
            rec["images"] += len(y)
            rec["marks"].append(_now(self.cuda))
            yield x, y
        rec["end"] = _now(self.cuda)


def _epoch_timer(cuda: bool):
    import lightning as L

    class EpochTimer(L.Callback):
        """The same record as :class:`TimedLoader`, from Lightning's hooks (a mark after every step)."""

        def __init__(self) -> None:
            self.epochs: list[dict] = []

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.epochs.append({"start": _now(cuda), "marks": [], "images": 0})

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            rec = self.epochs[-1]
            rec["images"] += len(batch[1])
            now = _now(cuda)
            rec["marks"].append(now)
            rec["end"] = now

    return EpochTimer()


def summarise(loop: str, epochs: list[dict], t_call: tuple, t_return: tuple, batch_size: int) -> dict:
    """Steady-state figures over epochs 2..E, plus where the rest of the (wall) time went.

    ``images_per_s``: images / wall seconds of the training loops; ``images_per_cpu_s``: the same over this
    process's CPU seconds (on a shared CPU another process's bursts do not count against the loop being
    timed); ``median_step_ms``: the median wall interval between consecutive steps (robust to bursts, but
    blind to work done once per epoch).
    """
    steady = epochs[1:] if len(epochs) > 1 else epochs
    images = sum(e["images"] for e in steady)
    wall = sum(e["end"][0] - e["start"][0] for e in steady)
    cpu = sum(e["end"][1] - e["start"][1] for e in steady)
    steps = [b[0] - a[0] for e in steady for a, b in zip(e["marks"], e["marks"][1:])]
    in_loop = sum(e["end"][0] - e["start"][0] for e in epochs)
    step_ms = median(steps)
    return {"loop": loop, "images_per_s": round(images / wall, 2) if wall else None,
            "images_per_cpu_s": round(images / cpu, 2) if cpu else None,
            "median_step_ms": round(1000 * step_ms, 3) if step_ms else None,
            "images_per_s_from_median_step": round(batch_size / step_ms, 2) if step_ms else None,
            "steady_images": images, "steady_s": round(wall, 3), "steady_cpu_s": round(cpu, 3),
            "epoch_train_loop_s": [round(e["end"][0] - e["start"][0], 3) for e in epochs],
            "startup_s": round(epochs[0]["start"][0] - t_call[0], 3),
            "outside_train_loop_s": round(t_return[0] - t_call[0] - in_loop, 3),
            "after_last_epoch_s": round(t_return[0] - epochs[-1]["end"][0], 3),
            "total_s": round(t_return[0] - t_call[0], 3)}


class Bench:
    """The three loops on one model and one dataset; every call starts from a fresh model and loaders."""

    def __init__(self, handle, model_name: str, image_size: int, batch_size: int, epochs: int, device: str,
                 precision: str, log_dir: Path) -> None:
        self.handle, self.model_name, self.image_size = handle, model_name, image_size
        self.batch_size, self.epochs, self.log_dir = batch_size, epochs, log_dir
        self.device, self.precision = device, precision
        self.cuda = device == "cuda"

    def model(self):
        import torch

        from multisource.models.factory import create_model

        torch.manual_seed(0)
        return create_model(self.model_name, self.handle.num_classes, pretrained=False, image_size=self.image_size)

    def loader(self, model, split: str):
        from multisource.data.loaders import split_loader
        from multisource.models.factory import data_config

        dcfg = data_config(model, self.image_size, hflip=self.handle.info.hflip)
        return split_loader(self.handle, BIN, split, dcfg, batch_size=self.batch_size, seed=0)

    def plain(self) -> dict:
        import torch
        from torch import nn

        t_call = _now(self.cuda)
        model = self.model().to(self.device)
        train = TimedLoader(self.loader(model, "train"), self.cuda)
        opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
        total = self.epochs * len(train)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
        amp = self.cuda and self.precision in ("16-mixed", "bf16-mixed")
        dtype = torch.bfloat16 if self.precision == "bf16-mixed" else torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=amp and dtype == torch.float16)
        for _ in range(self.epochs):
            model.train()
            for x, y in train:
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                with torch.autocast(self.device, dtype=dtype, enabled=amp):
                    loss = nn.functional.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(model.parameters(), CLIP)
                scaler.step(opt)
                scaler.update()
                sched.step()
        return summarise("plain", train.epochs, t_call, _now(self.cuda), self.batch_size)

    def source_trainer(self) -> dict:
        from multisource.training.module import ClassifierModule
        from multisource.options import TrainOptions
        from multisource.training.fit import SourceTrainConfig, fit_classifier

        timer = _epoch_timer(self.cuda)
        cfg = SourceTrainConfig(dataset=self.handle.info.name, bin=BIN, model_name=self.model_name,
                                max_epochs=self.epochs, batch_size=self.batch_size, learning_rate=LR, weight_decay=WD,
                                gradient_clip=CLIP, image_size=self.image_size, pretrained=False, seed=0)
        opts = TrainOptions(device="cuda" if self.cuda else "cpu", devices=1, precision=self.precision,
                          progress=False)
        t_call = _now(self.cuda)
        with mock.patch.object(ClassifierModule, "configure_callbacks", lambda module: [timer]):
            fit_classifier(self.handle, BIN, self.model(), cfg, opts, self.log_dir, f"{self.model_name}")
        return summarise("source_trainer", timer.epochs, t_call, _now(self.cuda), self.batch_size)

    def grasp_finetune(self) -> dict:
        from multisource.training.loop import FinetuneConfig, finetune

        import torch

        t_call = _now(self.cuda)
        model = self.model()
        train = TimedLoader(self.loader(model, "train"), self.cuda)
        val = self.loader(model, "val")
        finetune(model, train, val, FinetuneConfig(epochs=self.epochs, learning_rate=LR, weight_decay=WD,
                                                   gradient_clip=CLIP), torch.device(self.device),
                 precision="32" if self.precision in ("32", "32-true") else self.precision)
        return summarise("grasp_finetune", train.epochs, t_call, _now(self.cuda), self.batch_size)


METRICS = ("images_per_s", "images_per_cpu_s", "images_per_s_from_median_step")
PRIMARY = "images_per_s"


def spread(values: list[float | None]) -> dict:
    """Median and interquartile range: how far repeated measurements of one thing wander on this machine."""
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return {"median": None, "q1": None, "q3": None, "n": 0}
    q = lambda f: vals[min(len(vals) - 1, round(f * (len(vals) - 1)))]  # noqa: E731
    return {"median": round(median(vals), 3), "q1": q(0.25), "q3": q(0.75), "n": len(vals)}


def bench_model(bench: Bench, repeats: int) -> dict:
    bench.plain()  # warm-up, discarded: lazy imports, first model build, allocator and caches
    runs: dict[str, list[dict]] = {k: [] for k in LOOPS}
    paired: dict[str, list[float]] = {"source_trainer": [], "grasp_finetune": [], "plain_vs_plain": []}
    for rep in range(repeats):  # alternate, so load changes hit every loop alike
        plains = []
        for ours in ("source_trainer", "grasp_finetune"):
            base = bench.plain()
            mine = getattr(bench, ours)()
            plains.append(base)
            runs["plain"].append(base)
            runs[ours].append(mine)
            paired[ours].append(ratio(mine[PRIMARY], base[PRIMARY]))
            print(f"    rep {rep + 1}: plain {base[PRIMARY]:>8} img/s   {ours} {mine[PRIMARY]:>8} img/s   "
                  f"ratio {paired[ours][-1]}", flush=True)
        # the second plain run over the first: the same loop measured twice (the noise floor)
        paired["plain_vs_plain"].append(ratio(plains[1][PRIMARY], plains[0][PRIMARY]))
    out: dict = {}
    for loop, rs in runs.items():
        out[loop] = {**{m: median(r[m] for r in rs) for m in METRICS},
                     **{k: median(r[k] for r in rs) for k in ("median_step_ms", "startup_s", "outside_train_loop_s",
                                                              "total_s")},
                     "runs": rs}
    plain = out["plain"]
    for ours in ("source_trainer", "grasp_finetune"):
        mine = out[ours]
        mine["ratio_to_plain"] = ratio(mine[PRIMARY], plain[PRIMARY])
        mine["ratios_to_plain"] = {m: ratio(mine[m], plain[m]) for m in METRICS}
        mine["paired_ratios"] = spread(paired[ours])
        mine["overhead_ms_per_step"] = round(mine["median_step_ms"] - plain["median_step_ms"], 3)
    out["plain"]["plain_vs_plain_ratios"] = spread(paired["plain_vs_plain"])
    out["paired_ratios_raw"] = paired
    return out


def build_report(args, results: dict, train_images: int, load_before: list[float]) -> dict:
    return {
        "benchmark": "throughput", "quick": args.quick, "device": args.device, "precision": args.precision,
        "data": f"drift_digits {BIN}/train, {train_images} images ({args.renders} renders per digit), rendered at "
                f"{args.image_size} px and resized by each model's transforms",
        "batch_size": args.batch_size, "epochs_per_run": args.epochs, "repeats": args.repeats,
        "optimizer": f"AdamW lr {LR} wd {WD}, per-step cosine, grad clip {CLIP}",
        "statistic": "median over repeats of steady-state figures (epochs 2..E); loops alternated; paired_ratios "
                     "are ours/plain within a round, plain_vs_plain the same loop twice (the noise floor)",
        "primary_metric": PRIMARY, "metrics": {
            "images_per_s": "images / wall seconds of the training loops (data loading included)",
            "images_per_cpu_s": "images / CPU seconds of this process over the same intervals (0 loader workers)",
            "images_per_s_from_median_step": "batch size / median wall interval between consecutive steps",
            "overhead_ms_per_step": "median step of the loop minus median step of the plain loop"},
        "loops": {"plain": "hand-written PyTorch loop", "source_trainer": "training.source.fit_classifier (Lightning)",
                  "grasp_finetune": "training.loop.finetune (GRASP/FUSION target fine-tuning)"},
        "models": results, "machine": machine(load_before, args.device),
    }


def print_summary(results: dict) -> None:
    rows = []
    for model, r in results.items():
        for loop in LOOPS:
            pr = r[loop].get("paired_ratios") or r[loop]["plain_vs_plain_ratios"]
            rows.append({"model": model, "loop": loop, "wall": r[loop]["images_per_s"],
                         "ratio": r[loop].get("ratio_to_plain", 1.0),
                         "paired": f"{pr['median']} [{pr['q1']}, {pr['q3']}]",
                         "step": r[loop]["median_step_ms"], "over": r[loop].get("overhead_ms_per_step", "-"),
                         "startup": r[loop]["startup_s"], "outside": r[loop]["outside_train_loop_s"]})
    print_table(rows, [("model", "model"), ("loop", "loop"), ("wall", "img/s"), ("ratio", "vs plain"),
                       ("paired", "paired ratios [IQR] (plain: A/A)"), ("step", "median step ms"),
                       ("over", "+ms/step"), ("startup", "startup s"), ("outside", "outside loop s")])


def _model_spec(text: str, default_size: int) -> tuple[str, int]:
    name, _, size = text.partition("@")
    return name, int(size) if size else default_size


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n")[0], "tiny-resnet only, 2 epochs, 1 repeat (under a minute)")
    p.add_argument("--models", nargs="+", default=None,
                   help="NAME or NAME@PIXELS (default tiny-resnet@32 mobilevit-xxs@32 tiny-resnet@8; "
                        "tiny-resnet with --quick)")
    p.add_argument("--image_size", type=int, default=32, help="data are rendered at this size; models without "
                                                                "@PIXELS use it")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2, help="per run (>= 2); epoch 1 is warm-up")
    p.add_argument("--repeats", type=int, default=None, help="alternating rounds (default 12; 1 quick)")
    p.add_argument("--renders", type=int, default=None, help="renders per train digit (default 3; 1 quick)")
    p.add_argument("--precision", default=None, help="32 on CPU (default), 16-mixed on CUDA (default there)")
    p.add_argument("--data_root", default=None, help="an existing drifting-digits build at --image_size")
    args = p.parse_args(argv)
    args.models = args.models or (["tiny-resnet"] if args.quick else ["tiny-resnet@32", "mobilevit-xxs@32",
                                                                       "tiny-resnet@8"])
    args.epochs = max(2, args.epochs)
    args.repeats = args.repeats or (1 if args.quick else 12)
    args.renders = args.renders or (1 if args.quick else 3)
    args.precision = args.precision or ("16-mixed" if args.device == "cuda" else "32")
    setup(args)
    load_before = load_average()
    quiet_lightning()
    from multisource.data.loaders import open_dataset

    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_throughput_") as tmp:
        root = args.data_root or build_digits(Path(tmp) / "DriftDigits", args.image_size, args.renders)
        handle = open_dataset("drift_digits", root)
        for spec in args.models:
            name, size = _model_spec(spec, args.image_size)
            print(f"  {name} @ {size}px, batch {args.batch_size}, {args.epochs} epochs per run:", flush=True)
            bench = Bench(handle, name, size, args.batch_size, args.epochs, args.device, args.precision,
                          Path(tmp) / "logs")
            results[f"{name}@{size}"] = bench_model(bench, args.repeats)
        train_images = len(bench.loader(bench.model(), "train").dataset)
    report = build_report(args, results, train_images, load_before)
    path = write_report(args.output_dir, "throughput", report)
    print()
    print_summary(results)
    print(f"Wrote {path} (load average {report['machine']['load_average_after']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
