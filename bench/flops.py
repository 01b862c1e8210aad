"""FLOPs check: our counter on the paper's four models vs published figures; per-method totals per dataset.

    python bench/flops.py            # counts at 224/240/256 px, projections, cross-check on drifting digits
    python bench/flops.py --quick    # 224 px only, ResNet-50 projections, 2 sources checked (< 1 minute)

1. Forward GMACs per image of ResNet-50, EfficientNet-B1, MobileViT-XXS and MobileViT-XS (1000-class head,
   random init, built on the ``meta`` device so nothing is computed) counted by ``measure.flops.forward_macs``,
   next to the published figures.
2. An analytical projection of one experiment's total MACs per method, for each real dataset at its bin
   sizes (SPEC 2) and the paper's hyper-parameters, with the conventions of the FLOPs ledger
   (``measure.flops.FlopsLedger``): training = 3 x forward per image, validation after every epoch, alignment
   = two models' forward + backward on the alignment batches plus 4 MACs per parameter, then one validation
   pass after each transfer, merging = 3 MACs per
   averaged element per source after the first, inference on val + test. It is a projection, not a run.
3. The same formula cross-checked against the ledger of real runs (``experiment.runner.run_experiment``)
   on drifting digits with tiny-resnet: the ledger totals must match the projection.
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
import warnings
from pathlib import Path

from common import build_digits, load_average, machine, parser, print_table, ratio, setup, write_report

# Published forward cost per image, in GMACs (papers and model cards count multiply-adds as "FLOPs").
PUBLISHED = {
    "resnet-50": {224: (4.1, "He et al. 2016 give 3.8 for v1 (stride in the 1x1 conv); 4.1 for the v1.5 "
                             "layout timm and torchvision use (timm model card: 4.1 GMACs)")},
    "efficientnet-b1": {240: (0.70, "Tan & Le 2019, Table 2: 0.70B FLOPS at 240 px (multiply-adds)")},
    "mobilevit-xxs": {256: (0.4, "timm model card mobilevit_xxs.cvnets_in1k: 0.4 GMACs at 256 px")},
    "mobilevit-xs": {256: (1.1, "timm model card mobilevit_xs.cvnets_in1k: 1.1 GMACs at 256 px; "
                                "Mehta & Rastegari 2022 list 0.7 GFLOPs")},
}
NATIVE = {"resnet-50": 224, "efficientnet-b1": 240, "mobilevit-xxs": 256, "mobilevit-xs": 256}
PAPER_MODELS = list(NATIVE)
# Real bin sizes (SPEC 2): CLEAR ~6000 images per bin split 80/10/10; Yearbook ~38000 portraits over 4 bins.
DATASETS = {
    "clear10": {"classes": 10, "K": 4, "train": 4800, "val": 600, "test": 600},
    "clear100": {"classes": 30, "K": 4, "train": 4800, "val": 600, "test": 600},
    "yearbook": {"classes": 2, "K": 3, "train": 7600, "val": 950, "test": 950},
}
# The paper's hyper-parameters (SPEC 5); the cross-check uses 1 epoch everywhere.
PAPER = {"batch_size": 32, "grasp": {"initial_epochs": 3, "finetune_epochs": 3, "num_alignment_batches": 1,
                                     "alignment_passes": 4},
         "fusion": {"finetune_epochs": 3}, "pearl": {"adapter_epochs": 3, "composition_epochs": 3, "adapter_dim": 16}}
METHODS = ("ensemble", "fusion", "fusion-logits", "grasp", "pearl")


def _build(name: str, num_classes: int, image_size: int, meta: bool):
    import torch

    from multisource.models.factory import create_model

    with torch.device("meta" if meta else "cpu"):
        return create_model(name, num_classes, pretrained=False, image_size=image_size)


@functools.lru_cache(maxsize=None)
def adapter_macs(name: str, num_classes: int, image_size: int, adapter_dim: int, meta: bool = True) -> int:
    """Forward MACs one LoRA adapter adds (PEARL's targets: every Linear and ungrouped Conv2d, the head
    included); K active adapters add K times this (checked by the cross-check)."""
    from peft import LoraConfig, get_peft_model

    from multisource.measure.flops import forward_macs
    from multisource.methods.pearl import lora_target_modules

    model = _build(name, num_classes, image_size, meta)
    base = forward_macs(model, image_size)
    modules, _ = lora_target_modules(model)
    lora = LoraConfig(r=adapter_dim, lora_alpha=adapter_dim, lora_dropout=0.0, target_modules=modules)
    return forward_macs(get_peft_model(model, lora, adapter_name="src"), image_size) - base


def model_costs(name: str, num_classes: int, image_size: int, adapter_dim: int | None = None,
                meta: bool = True) -> dict:
    """Forward MACs per image, parameter and float-state counts, and (with ``adapter_dim``) LoRA adapter MACs."""
    import torch

    from multisource.measure.flops import forward_macs

    model = _build(name, num_classes, image_size, meta)
    cost = {"macs": forward_macs(model, image_size), "params": sum(p.numel() for p in model.parameters()),
            "float_state_elements": sum(v.numel() for v in model.state_dict().values() if torch.is_floating_point(v))}
    if adapter_dim:
        cost["adapter_macs"] = adapter_macs(name, num_classes, image_size, adapter_dim, meta)
    return cost


def _trained(n: int, batch: int) -> int:
    """Images per training epoch: the train loader drops a last batch of exactly one image."""
    return n - 1 if n % batch == 1 else n


def _first_batches(n: int, batch: int, count: int) -> int:
    """Images in the first ``count`` batches of a loader over ``n`` images (cycling, as the methods do)."""
    sizes = [batch] * (n // batch) + ([n % batch] if n % batch else [])
    return sum(sizes[i % len(sizes)] for i in range(count))


def project(method: str, K: int, cost: dict, sizes: dict, hp: dict) -> dict[str, int]:
    """MACs per ledger phase of one experiment (the runner's inference on val + test included)."""
    b = hp["batch_size"]
    m, val, test = cost["macs"], sizes["val"], sizes["test"]
    train = _trained(sizes["train"], b)
    if method == "ensemble":
        return {"inference": K * m * (val + test)}
    if method in ("fusion", "fusion-logits"):
        e = hp["fusion"]["finetune_epochs"]
        mf = K * m if method == "fusion-logits" else m
        out = {} if method == "fusion-logits" else {"merge": 3 * cost["float_state_elements"] * (K - 1)}
        return {**out, "finetune": 3 * mf * train * e, "finetune_validation": mf * val * e,
                "inference": mf * (val + test)}
    if method == "grasp":
        g = hp["grasp"]
        epochs = g["initial_epochs"] + (K - 1) * g["finetune_epochs"]
        align = _first_batches(sizes["train"], b, g["num_alignment_batches"])
        return {"finetune": 3 * m * train * epochs, "finetune_validation": m * val * epochs,
                "align": (K - 1) * (3 * m * 2 * align * g["alignment_passes"] + 4 * cost["params"]),
                "transfer_validation": (K - 1) * m * val, "inference": m * (val + test)}
    if method == "pearl":
        p = hp["pearl"]
        one, composed = m + cost["adapter_macs"], m + K * cost["adapter_macs"]
        src_train, src_val = sizes.get("source_train", [train] * K), sizes.get("source_val", [val] * K)
        refine = p.get("adapter_data", "none") != "none"  # the default: SVD-initialised adapters, no training
        epochs = p["adapter_epochs"] if refine else 0
        checks = epochs + 1 if refine and p.get("adapter_init", "svd") == "svd" else epochs  # + the SVD start
        adapters = {"adapters": sum(3 * one * _trained(n, b) * epochs for n in src_train),
                    "adapters_validation": sum(one * n * checks for n in src_val)} if refine else {}
        return {**adapters,
                "compose": 3 * composed * train * p["composition_epochs"],
                "compose_validation": composed * val * p["composition_epochs"], "inference": composed * (val + test)}
    raise ValueError(f"Unknown method {method!r}; choose one of {METHODS}.")


def count_paper_models(quick: bool) -> list[dict]:
    rows = []
    for name in PAPER_MODELS:
        for size in sorted({224} if quick else {224, NATIVE[name]}):
            cost = model_costs(name, 1000, size)
            pub, source = PUBLISHED[name].get(size, (None, None))
            gmacs = cost["macs"] / 1e9
            rows.append({"model": name, "image_size": size, "gmacs": round(gmacs, 3), "published_gmacs": pub,
                         "ratio_to_published": ratio(gmacs, pub, 2), "published_source": source,
                         "params_m": round(cost["params"] / 1e6, 3)})
    return rows


def projections(quick: bool) -> dict:
    out: dict = {}
    for dataset, sizes in DATASETS.items():
        out[dataset] = {"sizes_per_bin": sizes, "models": {}}
        for name in (PAPER_MODELS[:1] if quick else PAPER_MODELS):
            cost = model_costs(name, sizes["classes"], 224, PAPER["pearl"]["adapter_dim"])
            per = {m: project(m, sizes["K"], cost, sizes, PAPER) for m in METHODS}
            out[dataset]["models"][name] = {
                "forward_gmacs_per_image": round(cost["macs"] / 1e9, 4),
                "lora_adapter_gmacs_per_image": round(cost["adapter_macs"] / 1e9, 4),
                "total_tmacs": {m: round(sum(v.values()) / 1e12, 3) for m, v in per.items()},
                "by_phase_tmacs": {m: {k: round(x / 1e12, 4) for k, x in v.items()} for m, v in per.items()},
            }
    return out


def cross_check(data_root: Path, tmp: Path, num_sources: int = 4) -> list[dict]:
    """Run every method once on drifting digits (tiny-resnet, random-init sources, 1 epoch) through the
    experiment runner and compare its ledger with :func:`project` on the same sizes."""
    import torch

    from multisource.data.loaders import open_dataset
    from multisource.experiment.config import ExperimentConfig
    from multisource.options import ExperimentOptions
    from multisource.experiment.runner import run_experiment
    from multisource.models.checkpoint import save_checkpoint
    from multisource.models.factory import create_model

    model_name, target, batch = "tiny-resnet", "era_5", 32
    handle = open_dataset("drift_digits", data_root)
    sources = [b for b in handle.bins if b != target][-num_sources:]
    torch.manual_seed(0)
    for b in sources:
        save_checkpoint(tmp / "ckpt" / f"{b}.ckpt", create_model(model_name, handle.num_classes, image_size=32),
                        model_name=model_name, classes=handle.classes, dataset=handle.info.name, bin_name=b,
                        config={"image_size": 32})
    count = lambda b, s: handle.card["bins"][b]["splits"][s]["count"]  # noqa: E731
    sizes = {"train": count(target, "train"), "val": count(target, "val"), "test": count(target, "test"),
             "source_train": [count(b, "train") for b in sources], "source_val": [count(b, "val") for b in sources]}
    hp = {"batch_size": batch, "grasp": {"initial_epochs": 1, "finetune_epochs": 1, "num_alignment_batches": 1,
                                         "alignment_passes": 4},
          "fusion": {"finetune_epochs": 1}, "pearl": {"adapter_epochs": 1, "composition_epochs": 1, "adapter_dim": 16,
                                                                   "adapter_data": "source"}}
    configs = {"ensemble": {}, "fusion": hp["fusion"], "fusion-logits": {"mode": "logits", **hp["fusion"]},
               "grasp": hp["grasp"], "pearl": hp["pearl"]}
    cost = model_costs(model_name, handle.num_classes, 32, 16, meta=False)
    opts = ExperimentOptions(data_root=str(data_root), checkpoint_dir=str(tmp / "ckpt"), results_dir=str(tmp / "res"),
                             device="cpu", save_model=False, overwrite=True)
    rows = []
    for name, mcfg in configs.items():
        method = "fusion" if name.startswith("fusion") else name
        report = run_experiment(ExperimentConfig(dataset="drift_digits", model=model_name, method=method,
                                                 target=target, sources=tuple(sources), batch_size=batch,
                                                 method_config=dict(mcfg),
                                                 # random sources of no shared start: only their FLOPs are counted
                                                 allow_mixed_starts=True), opts)
        measured = report.flops.total
        projected = sum(project(name, len(sources), cost, sizes, hp).values())
        rows.append({"method": name, "ledger_gmacs": round(measured / 1e9, 3),
                     "projected_gmacs": round(projected / 1e9, 3),
                     "projected_over_ledger": ratio(projected, measured, 4),
                     "ledger_by_phase": report.flops.extra["by_phase"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n")[0], "224 px only, ResNet-50 projections only, 2 sources in the cross-check "
                                        "(under a minute)")
    p.add_argument("--data_root", default=None, help="an existing drifting-digits build (32 px) for the cross-check")
    args = p.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    warnings.filterwarnings("ignore", module=r"peft\..*")  # "merging is not supported" for grouped convolutions
    setup(args)
    load_before = load_average()
    t0 = time.perf_counter()
    counts = count_paper_models(args.quick)
    print_table(counts, [("model", "model"), ("image_size", "px"), ("gmacs", "GMACs (ours)"),
                         ("published_gmacs", "published"), ("ratio_to_published", "ratio"), ("params_m", "params M")])
    proj = projections(args.quick)
    print()
    rows = [{"dataset": d, "model": m, **{k: f"{v:.1f}" for k, v in r["total_tmacs"].items()}}
            for d, v in proj.items() for m, r in v["models"].items()]
    print("Projected TMACs per experiment (paper hyper-parameters, real bin sizes; analytical):")
    print_table(rows, [("dataset", "dataset"), ("model", "model"), *[(m, m) for m in METHODS]])
    with tempfile.TemporaryDirectory(prefix="bench_flops_") as tmp:
        root = Path(args.data_root) if args.data_root else build_digits(Path(tmp) / "DriftDigits", 32)
        checks = cross_check(root, Path(tmp), num_sources=2 if args.quick else 4)
    print("\nCross-check on drifting digits (tiny-resnet, 1 epoch): projection vs the runner's ledger")
    print_table(checks, [("method", "method"), ("ledger_gmacs", "ledger GMACs"), ("projected_gmacs", "projected"),
                         ("projected_over_ledger", "ratio")])
    report = {
        "benchmark": "flops", "quick": args.quick, "unit": "MACs (multiply-accumulates; FLOPs = 2 x MACs)",
        "counter": "multisource.measure.flops.forward_macs (torch.utils.flop_counter), eval mode, batch 1",
        "forward_per_image": counts,
        "projection": {"kind": "analytical projection (not a run) with the ledger's conventions",
                       "hyper_parameters": PAPER, "image_size": 224, "datasets": proj,
                       "formulas": {
                           "ensemble": "K*F*(val+test)",
                           "fusion": "3*S*(K-1) merge + E*(3*F*train + F*val) + F*(val+test)",
                           "fusion-logits": "E*(3*K*F*train + K*F*val) + K*F*(val+test)",
                           "grasp": "(E0+(K-1)*E)*(3*F*train + F*val) + (K-1)*(3*F*2*B*A + 4*P + F*val) + F*(val+test)",
                           "pearl": "[adapter_data source: K*Ea*3*F1*src_train + K*(Ea+1)*F1*src_val] + Ec*(3*FK*train + "
                                    "FK*val) + FK*(val+test) (the SVD initialisation is not counted)",
                           "symbols": "F forward MACs/image; F1 = F + one LoRA adapter; FK = F + K adapters; "
                                      "S float state elements; P parameters; B alignment images; A alignment passes; "
                                      "train = images per epoch (a last batch of one is dropped)"}},
        "cross_check": {"setting": f"drift_digits era_5 <- the {2 if args.quick else 4} eras before it, tiny-resnet "
                                   "32 px, batch 32, 1 epoch per phase, random-init sources, "
                                   "experiment.runner.run_experiment",
                        "rows": checks},
        "wall_time_s": round(time.perf_counter() - t0, 1), "machine": machine(load_before),
    }
    path = write_report(args.output_dir, "flops", report)
    print(f"Wrote {path} (load average {report['machine']['load_average_after']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
