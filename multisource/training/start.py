"""The one start every source model of a (dataset, model) is fine-tuned from, resolved once before any bin trains.

Averaging parameters (FUSION), copying tensors between models (GRASP), adapters on a base (PEARL) and task
vectors (the merges) are meaningful only between models fine-tuned from one shared start, as the paper's sources
all start from the same ImageNet weights. A start is one of:

- ``weights``: a file the user passed (``--weights``);
- ``imagenet``: the architecture's pretrained weights from the local cache;
- ``upstream``: a tiny model pretrained once on the dataset's upstream pool;
- ``random``: one seeded random initialisation, saved once and loaded by every source (``--no-pretrained``, and
  the tiny models on a dataset without an upstream pool).

Every source checkpoint records its start (kind, path, fingerprint); methods that combine parameters compare the
fingerprints before they run.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..data.loaders import DatasetHandle
import torch

from ..models.checkpoint import load_backbone, read_checkpoint, read_checkpoint_meta, save_checkpoint
from ..models.factory import ModelError, create_model, missing_weights_message, pretrained_file, resolve_model
from ..options import TrainOptions
from ..paths import UPSTREAM, safe_name
from ..utils.seed import derive_seed, seed_everything
from .fit import SourceTrainConfig
from .upstream import ensure_upstream

log = logging.getLogger(__name__)
START_KINDS = ("weights", "imagenet", "upstream", "random")


@dataclass(frozen=True)
class SharedStart:
    """What every source of a (dataset, model) starts from; ``fingerprint`` identifies it across checkpoints."""

    kind: str
    path: str | None  # the file loaded (None: a Hugging Face model's cached weights, named by ``source``)
    fingerprint: str
    source: str = ""  # for ``imagenet``: the weights' origin (timm name or Hugging Face id)

    @property
    def pretrained(self) -> bool:
        return self.kind != "random"

    def record(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return f"{self.kind} start {self.fingerprint}" + (f" ({self.path})" if self.path else "")


def file_fingerprint(path: str | Path) -> str:
    """The identity of a start stored as a file (16 hex digits): for a checkpoint this project wrote, the sha256 of
    its tensors (its file also holds a creation time, so the same weights written twice would differ); for
    another library's weights file, of its bytes."""
    h = hashlib.sha256()
    try:
        state = read_checkpoint(path, mmap=True)["state_dict"]
    except Exception:  # noqa: BLE001  not ours: the bytes are the identity
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()[:16]
    for name in sorted(state):
        tensor = state[name].contiguous()
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        h.update(tensor.numpy().tobytes() if tensor.dtype != torch.bfloat16 else tensor.float().numpy().tobytes())
    return h.hexdigest()[:16]


def random_start_path(handle: DatasetHandle, model_name: str, seed: int, opts: TrainOptions) -> Path:
    return (opts.results_path() / safe_name(handle.info.name, "Dataset name") / "starts"
            / f"{safe_name(model_name, 'Model name')}-random-seed{seed}.ckpt")


def ensure_random_start(handle: DatasetHandle, cfg: SourceTrainConfig, opts: TrainOptions) -> Path:
    """One seeded random initialisation of ``cfg.model_name`` for this dataset's classes, saved once."""
    path = random_start_path(handle, cfg.model_name, cfg.seed, opts)
    if path.is_file():
        try:
            meta = read_checkpoint_meta(path)
            if list(meta["classes"]) == handle.classes:
                return path
        except Exception:  # noqa: BLE001  an unreadable or foreign file is made again, whatever the reason
            pass
        log.warning("Random start %s is unreadable or for other classes; making it again.", path)
    seed_everything(derive_seed(cfg.seed, "random-start", cfg.model_name))
    image_size = cfg.image_size or handle.info.image_size
    model = create_model(cfg.model_name, handle.num_classes, pretrained=False, image_size=image_size)
    save_checkpoint(path, model, model_name=cfg.model_name, classes=handle.classes, dataset=handle.info.name,
                    bin_name="random-start", config={"seed": cfg.seed, "image_size": image_size},
                    extra={"start": "random"})
    log.info("Saved one random initialisation of %s as the shared start of every source: %s", cfg.model_name, path)
    return path


def resolve_start(cfg: SourceTrainConfig, opts: TrainOptions, handle: DatasetHandle) -> SharedStart:
    """The shared start of ``cfg``'s sources (made once if it is pretrained upstream or random); raises at once,
    before any bin trains, when pretrained weights are asked for and cannot be found."""
    spec = resolve_model(cfg.model_name)
    if cfg.weights:
        if not Path(cfg.weights).is_file():
            raise ModelError(f"Pretrained weights file {cfg.weights} does not exist; pass an existing path to "
                             "--weights.")
        return SharedStart("weights", str(Path(cfg.weights).resolve()), file_fingerprint(cfg.weights))
    if cfg.pretrained and spec.pretrained == "upstream":
        if (handle.root / UPSTREAM / "train").is_dir():
            path = ensure_upstream(handle, cfg, opts)
            return SharedStart("upstream", str(path), file_fingerprint(path))
        log.info("%s has no upstream pool, so %s starts from one seeded random initialisation shared by every "
                 "source (import with --upstream earliest or --upstream fraction:F for a pretrained start).",
                 handle.info.name, cfg.model_name)
    elif cfg.pretrained:
        file = pretrained_file(spec)
        if file is None and spec.backend != "hf":
            raise ModelError(missing_weights_message(spec))
        fingerprint = file_fingerprint(file) if file else hashlib.sha256(spec.source.encode()).hexdigest()[:16]
        return SharedStart("imagenet", file, fingerprint, source=spec.source)
    path = ensure_random_start(handle, cfg, opts)
    return SharedStart("random", str(path), file_fingerprint(path))


def saved_here(start: SharedStart) -> bool:
    """The start is a checkpoint this project wrote (upstream, random, or one passed as --weights): read it as one
    (strictly, tensor by tensor), not as another library's weights file."""
    if start.kind in ("upstream", "random"):
        return True
    if not start.path:
        return False
    try:
        read_checkpoint_meta(start.path)
        return True
    except Exception:  # noqa: BLE001  not ours (a timm / torchvision / safetensors file): the library reads it
        return False


def model_from_start(start: SharedStart, model_name: str, num_classes: int, image_size: int | None):
    """A new ``model_name`` with ``num_classes`` outputs, initialised from ``start`` (a start saved by this project
    is loaded strictly except for a head of another class count, which is drawn new)."""
    if saved_here(start):
        model = create_model(model_name, num_classes, pretrained=False, image_size=image_size)
        load_backbone(model, start.path)
        return model
    return create_model(model_name, num_classes, pretrained=True, weights=start.path, image_size=image_size)


def start_of(meta: dict[str, Any], name: str = "") -> SharedStart:
    """The start a source checkpoint (its metadata) was fine-tuned from. Checkpoints written before starts were
    recorded are read from ``pretrained``/``pretrained_from``; a random init of theirs was the source's own."""
    config = meta.get("config") or {}
    rec = config.get("start")
    if isinstance(rec, dict) and rec.get("kind") in START_KINDS and rec.get("fingerprint"):
        return SharedStart(rec["kind"], rec.get("path"), str(rec["fingerprint"]), str(rec.get("source") or ""))
    weights = config.get("pretrained_from")
    if not config.get("pretrained"):
        return SharedStart("random", None, f"own-init-of-{name or meta.get('bin')}")
    if weights:  # identified as resolve_start identifies it, so old and new checkpoints of one start agree
        fingerprint = file_fingerprint(weights) if Path(weights).is_file() else f"file:{weights}"
        return SharedStart("upstream" if Path(weights).parent.name == UPSTREAM else "weights", weights, fingerprint)
    spec = resolve_model(str(meta.get("model_name")))
    file = pretrained_file(spec)
    fingerprint = file_fingerprint(file) if file else hashlib.sha256(spec.source.encode()).hexdigest()[:16]
    return SharedStart("imagenet", file, fingerprint, source=spec.source)


def common_start(checkpoints: dict[str, Path]) -> SharedStart:
    """The one start all ``checkpoints`` (bin -> path) were fine-tuned from; one line naming the bins and their
    starts when they differ."""
    starts = {b: start_of(read_checkpoint_meta(p), b) for b, p in checkpoints.items()}
    distinct = {s.fingerprint for s in starts.values()}
    if len(distinct) > 1:
        listed = "; ".join(f"{b}: {s.describe()}" for b, s in starts.items())
        raise StartMismatch(f"The sources were not fine-tuned from one shared start ({listed}). Averaging, copying "
                            "or subtracting their parameters is meaningful only from one start: train them again "
                            "from one (python baseline_training/train_all_subsets.py ... --force), or pass "
                            "--allow_mixed_starts to run anyway (recorded with the result).")
    return next(iter(starts.values()))


class StartMismatch(ValueError):
    """Sources fine-tuned from different starts were given to a method that combines their parameters."""
