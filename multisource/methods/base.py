"""What every method shares: the lazily loading source pool, the target's data, results, the registry."""

from __future__ import annotations

import gc
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from ..config import ConfigError
from ..measure.flops import forward_macs
from ..models.checkpoint import CheckpointError, LazyCheckpoint, StateTensors
from ..models.factory import load_checkpoint
from ..models.registry import ModelSpec
from ..registry import Registry
from ..training.start import SharedStart, common_start, model_from_start, saved_here

log = logging.getLogger(__name__)

SOURCE_ORDERS = ("chronological", "nearest-first", "farthest-first", "random")


class ReadLoader:
    """A data loader that notes in ``reads`` that it was iterated, so a result can say which data its method
    actually read (and a method that read the target's test split is caught). Everything else is the loader's."""

    def __init__(self, loader: DataLoader, reads: set[str], name: str) -> None:
        self.loader, self._reads, self._name = loader, reads, name

    def __iter__(self):
        self._reads.add(self._name)
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, item: str):
        if item == "loader":  # not yet set (e.g. while copying): no recursion through __getattr__
            raise AttributeError(item)
        return getattr(self.loader, item)


@dataclass
class TargetData:
    """The target bin: adapt on ``train``, select on ``val``, report on ``test`` (eval transforms for both).

    ``reads`` collects what was iterated ("target:train", "source:era_1:train", ...) when the loaders are
    :class:`ReadLoader`\ s, as :func:`multisource.methods.inputs.target_data` builds them."""

    bin: str
    classes: list[str]
    train: DataLoader
    val: DataLoader
    test: DataLoader
    device: torch.device
    precision: str = "32"
    image_size: int = 32
    seed: int = 0
    # Loader of another bin's split, (bin, split) -> loader: PEARL trains each adapter on its source's data.
    bin_loader: Callable[[str, str], DataLoader] | None = None
    # (bin, split, augment) -> the split's dataset (indexable, in its fixed order): GRASP's alignment batches.
    split_dataset: Callable[[str, str, bool], Dataset] | None = None
    reads: set[str] = field(default_factory=set)
    bins: tuple[str, ...] = ()  # the dataset's bins in time order (distances in time between bins)
    fraction: float = 1.0  # the label budget train and val hold (a stratified subsample below 1; test is whole)
    budget_sample: str | None = None  # a fingerprint of the subsample's indices (None: the whole splits)
    _macs: dict = field(default_factory=dict, repr=False)

    def distance(self, bin_name: str) -> int:
        """How many bins ``bin_name`` lies from the target in time (recency weighting)."""
        if bin_name not in self.bins or self.bin not in self.bins:
            raise ValueError(f"Bin distances need the dataset's bin order; {bin_name!r} or {self.bin!r} is not in "
                             f"{list(self.bins)} (build TargetData with methods.inputs.target_data).")
        return abs(self.bins.index(bin_name) - self.bins.index(self.bin))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def forward_macs(self, model: nn.Module, key: str = "model") -> int:
        """MACs of one image's forward pass through ``model``, counted once per ``key``."""
        if key not in self._macs:
            self._macs[key] = forward_macs(model, self.image_size, device=self.device)
        return self._macs[key]

    def batches_at(self, indices: Sequence[Sequence[int]], *, augment: bool = False) -> list:
        """Batches of the target's train split at the given dataset indices (eval transforms unless ``augment``),
        so a record of indices is enough to rebuild them."""
        if self.split_dataset is None:
            raise ValueError("This TargetData has no split_dataset; build it with methods.inputs.target_data.")
        self.reads.add("target:train")
        ds = self.split_dataset(self.bin, "train", augment)
        return [default_collate([ds[i] for i in batch]) for batch in indices]

    def train_size(self) -> int:
        return len(self.train.dataset)


class SourcePool:
    """Source models by bin, loaded from their checkpoints only when asked for (one at a time if the method
    allows), registered as resident while held, and freed on release."""

    def __init__(self, checkpoints: dict[str, Path], *, model: ModelSpec, classes: Sequence[str],
                 image_size: int | None, device: torch.device, residency: Any | None = None,
                 stands_for: dict[str, tuple[str, ...]] | None = None) -> None:
        self.checkpoints = dict(checkpoints)
        # The bins each pool entry stands for: a source its own bin; in a stream, the model deployed for the
        # previous bin every bin before the new source (a running mean weighs it as that many sources).
        self._stands_for = {n: (n,) for n in self.checkpoints} | dict(stands_for or {})
        # The model is resolved once by whoever builds the pool; loads compare against its canonical name.
        self.model, self.model_name = model, model.name
        self.classes, self.image_size = list(classes), image_size
        self.device = device
        self.residency = residency
        self._held: dict[str, nn.Module] = {}
        self.loads = 0
        self.loaded: list[str] = []  # source names in the order their checkpoints were read (a record)
        self.start_loaded: str | None = None  # what load_start built the shared start from
        self.collect_garbage = False  # see release()

    @property
    def names(self) -> list[str]:
        return list(self.checkpoints)

    def stands_for(self, name: str) -> tuple[str, ...]:
        """The bins pool entry ``name`` stands for (a source: its own bin)."""
        return self._stands_for[name]

    def __len__(self) -> int:
        return len(self.checkpoints)

    def load(self, name: str, key: str | None = None) -> nn.Module:
        """A fresh copy of source ``name``'s model on the device, registered under ``key`` (default: the name)."""
        key = key or f"source:{name}"
        model, _ = load_checkpoint(self.checkpoints[name], expected_model=self.model_name,
                                   expected_classes=self.classes, image_size=self.image_size, device=self.device)
        self.loads += 1
        self.loaded.append(name)
        return self._hold(key, model)

    def _hold(self, key: str, model: nn.Module) -> nn.Module:
        if self.residency is not None:
            self.residency.hold(key, model)
        self._held[key] = model
        return model

    def shared_start(self) -> SharedStart:
        """The start every source was fine-tuned from (their checkpoints' records); an error when they differ."""
        return common_start(self.checkpoints)

    def _lazy(self, path: str | Path) -> LazyCheckpoint:
        ckpt = LazyCheckpoint(path)
        if ckpt.meta["model_name"] != self.model_name:
            raise CheckpointError(f"Checkpoint {path} holds model '{ckpt.meta['model_name']}', not "
                                  f"'{self.model_name}'; use the checkpoints of one model (--model / --checkpoint_dir).")
        return ckpt

    def open_lazy(self, name: str) -> LazyCheckpoint:
        """Source ``name``'s checkpoint, memory-mapped and read tensor by tensor (nothing resident but the tensor
        being read); counted as a source read like :meth:`load`."""
        ckpt = self._lazy(self.checkpoints[name])
        if list(ckpt.meta["classes"]) != self.classes:
            raise CheckpointError(f"Checkpoint {ckpt.path} was trained for classes {ckpt.meta['classes'][:5]}..., "
                                  f"not the target's {self.classes[:5]}...; re-train it on this dataset.")
        self.loads += 1
        self.loaded.append(name)
        return ckpt

    def start_tensors(self, key: str = "start") -> StateTensors:
        """The shared pretrained start, tensor by tensor: the tiny models' upstream checkpoint memory-mapped, or
        the paper models' ImageNet weights as a held module (its head is not shared: a new one, unused by
        task-vector merges). Sources trained from random weights have no shared start: an error."""
        start = self.shared_start()
        if start.kind == "random" or saved_here(start):  # saved by this project: read tensor by tensor
            if not start.path:
                raise CheckpointError("The sources were each trained from their own random initialisation (before "
                                      "starts were shared), so they have no common start and no task vectors; "
                                      "train them again (python baseline_training/train_all_subsets.py ... --force).")
            self.start_loaded = start.path
            return self._lazy(start.path)
        return StateTensors(self.load_start(key).state_dict())

    def load_start(self, key: str = "start") -> nn.Module:
        """The shared pretrained start, built as each source's was before its training: the pretrained head is
        kept where its shape fits the target's classes, else a new one is drawn from the global RNG (which the
        runner seeds per trial); registered as resident like a source."""
        start = self.shared_start()
        if not start.path and start.kind == "random":
            raise CheckpointError("The sources were each trained from their own random initialisation (before starts "
                                  "were shared), so there is no start to load; train them again "
                                  "(python baseline_training/train_all_subsets.py ... --force).")
        model = model_from_start(start, self.model_name, len(self.classes), self.image_size).to(self.device)
        self.start_loaded = start.path or ("pretrained weights of " + self.model_name)
        return self._hold(key, model)

    def adopt(self, key: str, new_key: str) -> None:
        """Re-register a held model under a new key, measuring its bytes again (e.g. after adapters were added)."""
        model = self._held.pop(key)
        self._held[new_key] = model
        if self.residency is not None:
            self.residency.release(key)
            self.residency.hold(new_key, model)

    def release(self, key: str) -> None:
        """Forget a held model and its gradients; the caller must drop its own references too.

        No full garbage collection: the models hold no reference cycles (a test checks every tiny architecture
        after a backward pass), so dropping the last reference frees them at once, and ``gc.collect()`` cost
        about 0.8 s per release here (most of FUSION's merge time). ``collect_garbage=True`` asks for one."""
        model = self._held.pop(key, None)
        if model is None:
            return
        for p in model.parameters():
            p.grad = None
        if self.residency is not None:
            self.residency.release(key)
        del model
        if self.collect_garbage:
            gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def release_all(self) -> None:
        for key in list(self._held):
            self.release(key)

    def borrow(self, name: str) -> "_Borrow":
        return _Borrow(self, name)


class _Borrow:
    """``with pool.borrow(name) as model:`` loads a source and releases it on exit."""

    def __init__(self, pool: SourcePool, name: str) -> None:
        self.pool, self.key, self.name = pool, f"source:{name}", name

    def __enter__(self) -> nn.Module:
        return self.pool.load(self.name, self.key)

    def __exit__(self, *exc) -> None:
        self.pool.release(self.key)


@dataclass
class MethodResult:
    """What a method hands back: one ``nn.Module`` to evaluate (an ensemble is a wrapper module) and a record."""

    model: nn.Module
    record: dict[str, Any] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)  # val accuracy per epoch, for training curves
    produces_model: bool = True  # False when the result is only a wrapper over unchanged sources
    standalone: bool = True  # the model is one plain architecture (saved as a loadable checkpoint)
    # Earlier states of ``model`` the runner also evaluates on val and test, by name (the merges' weights before
    # target fine-tuning: "before_finetune"); None means "the same as the final model".
    stages: dict[str, dict | None] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodSpec:
    """A registered method. What is specific to it lives here, so generic code never names its fields:
    ``source_order(config)`` says how it orders its sources (None: chronological); ``reference`` marks the
    method every comparison is made against; ``target_epochs(config, K)`` is how many target epochs it trains
    with K sources (the reference's is the matched budget); ``match_budget(config, epochs)`` returns the config
    with a ``matched`` budget set to ``epochs`` (None: the method has no matchable budget); ``needs_shared_start``:
    it combines the sources' parameters (or starts from their start), which is meaningful only when all were
    fine-tuned from one start, so the plan refuses sources that were not; ``deterministic``: it draws no random
    number (no training, no sampling), so a sweep runs it once per target and reports one run, not trials that
    would look like independent seeds; ``reads_sources``: False for a row that reads no source model (it may read
    their start), whose result a sweep can reuse across protocols when its inputs are the same;
    ``outside_default_sweep``: why a sweep without ``--methods`` leaves the method out ("" for none: every method
    is in the default sweep unless it says why not); ``stream``: how the method runs under ``--protocol stream``,
    where its pool is the model deployed for the previous bin (standing for the bins before) and that bin's source
    ("" for a method with no running form in O(1) models, which that protocol refuses); ``stream_problem(config)``:
    why this configuration of it cannot run in a stream (None: it can)."""

    name: str
    config_cls: type
    run: Callable[..., MethodResult]
    description: str = ""
    source_order: Callable[[Any], str] | None = None
    reference: bool = False
    target_epochs: Callable[[Any, int], int] | None = None
    match_budget: Callable[[Any, int], Any] | None = None
    needs_shared_start: bool = False
    deterministic: bool = False
    reads_sources: bool = True
    outside_default_sweep: str = ""
    stream: str = ""
    stream_problem: Callable[[Any], str | None] | None = None

    def order_of(self, config: Any) -> str:
        return self.source_order(config) if self.source_order else "chronological"


METHODS: Registry[MethodSpec] = Registry("method")


def register_method(name: str, config_cls: type, description: str = "", *,
                    source_order: Callable[[Any], str] | None = None, reference: bool = False,
                    target_epochs: Callable[[Any, int], int] | None = None,
                    match_budget: Callable[[Any, int], Any] | None = None,
                    needs_shared_start: bool = False, deterministic: bool = False,
                    reads_sources: bool = True, outside_default_sweep: str = "", stream: str = "",
                    stream_problem: Callable[[Any], str | None] | None = None) -> Callable:
    def deco(fn: Callable[..., MethodResult]) -> Callable[..., MethodResult]:
        METHODS.register(name, MethodSpec(name, config_cls, fn, description, source_order, reference,
                                          target_epochs, match_budget, needs_shared_start, deterministic,
                                          reads_sources, outside_default_sweep, stream, stream_problem))
        return fn

    return deco


def get_method(name: str) -> MethodSpec:
    return METHODS.get(name)


PAPER_METHODS = ("ensemble", "fusion", "grasp", "pearl")


def default_methods() -> tuple[str, ...]:
    """What a sweep runs when no method is named: every registered method that does not say why it is left out
    (``outside_default_sweep``), the paper's four first, then the rest in the order they were registered."""
    names = [n for n in METHODS.registered() if not METHODS.get(n).outside_default_sweep]
    return tuple(sorted(names, key=lambda n: (n not in PAPER_METHODS, PAPER_METHODS.index(n) if n in PAPER_METHODS
                                              else names.index(n))))


def stream_refusal(spec: MethodSpec, config: Any) -> str | None:
    """Why ``spec`` with ``config`` cannot run under ``--protocol stream`` (None: it can)."""
    if not spec.stream:
        return (f"{spec.name} has no running form in O(1) models (its result needs every source at once), so it "
                "cannot run in a stream")
    return spec.stream_problem(config) if spec.stream_problem else None


def list_methods() -> list[str]:
    return METHODS.list()


def no_transfer_method() -> str:
    """The row that learns from the target alone (the one registered with ``reads_sources=False``): what a
    transfer method must beat for combining past models to pay off."""
    found = [n for n in METHODS.list() if not METHODS.get(n).reads_sources]
    if len(found) != 1:
        raise RuntimeError(f"Exactly one method must be registered with reads_sources=False, found {found}.")
    return found[0]


def reference_method() -> str:
    """The method comparisons are made against (the one registered with ``reference=True``)."""
    refs = [n for n in METHODS.list() if METHODS.get(n).reference]
    if len(refs) != 1:
        raise RuntimeError(f"Exactly one method must be registered with reference=True, found {refs}.")
    return refs[0]


def resolve_budget(spec: MethodSpec, config: Any, num_sources: int, reference_config: Any | None = None) -> Any:
    """``config`` with a ``matched`` target budget set to the reference method's epochs for ``num_sources``
    sources (the reference's config as given, else its defaults)."""
    if spec.match_budget is None:
        return config
    ref = METHODS.get(reference_method())
    if reference_config is None:
        reference_config = ref.config_cls()
    if ref.target_epochs is None:
        raise RuntimeError(f"The reference method {ref.name} registers no target_epochs; budgets cannot be matched.")
    return spec.match_budget(config, ref.target_epochs(reference_config, num_sources))


def order_sources(sources: Sequence[str], target: str, all_bins: Sequence[str], order: str = "chronological",
                  seed: int = 0, positions: dict[str, float] | None = None) -> list[str]:
    """Sources in the requested order; distances are positions in the dataset's chronological bin list
    (``positions``: those of entries that are not bins, e.g. a stream's deployed model)."""
    if order not in SOURCE_ORDERS:
        raise ConfigError(f"source_order={order!r} is not valid; choose one of {', '.join(SOURCE_ORDERS)}.")
    pos = {b: float(i) for i, b in enumerate(all_bins)} | dict(positions or {})
    chrono = sorted(sources, key=lambda b: pos[b])
    if order == "chronological":
        return chrono
    if order == "random":
        out = list(chrono)
        random.Random(seed).shuffle(out)
        return out
    dist = {b: abs(pos[b] - pos[target]) for b in chrono}
    if order == "nearest-first":
        return sorted(chrono, key=lambda b: (dist[b], pos[b]))
    return sorted(chrono, key=lambda b: (-dist[b], pos[b]))
