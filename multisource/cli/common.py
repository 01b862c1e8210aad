"""Shared CLI plumbing: logging, --config files, run options, one-line errors with a non-zero exit."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Callable

from ..config import ConfigError, load_yaml
from ..utils.logs import quiet_dependencies

USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, FileExistsError, FileNotFoundError, KeyError, ValueError)


def user_error_types() -> tuple[type[BaseException], ...]:
    from ..data.folder import DataError
    from ..models.checkpoint import CheckpointError
    from ..models.factory import ModelError

    return USER_ERRORS + (DataError, CheckpointError, ModelError)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    quiet_dependencies()


def add_run_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("how to run")
    g.add_argument("--data_root", help="the dataset's own folder (default: <project>/datasets/<DATASET_DIR>)")
    g.add_argument("--results_dir", help="results root (default: <project>/results)")
    g.add_argument("--checkpoint_dir", help="folder of source checkpoints <bin>.ckpt "
                                            "(default: <results>/<dataset>/baselines/<model>)")
    g.add_argument("--num_workers", type=int, default=None, help="data-loader workers (default 0)")
    g.add_argument("--precision", default=None, help="auto (16-mixed on GPU, 32 on CPU), 32, 16-mixed, bf16-mixed")
    g.add_argument("--config", help="YAML file of settings; command-line flags override it")
    g.add_argument("--verbose", action="store_true")


def config_layers(args: argparse.Namespace, keys: tuple[str, ...] = ()) -> tuple[dict, dict]:
    """(values from --config, values given on the command line): the CLI wins over the file."""
    file_values = load_yaml(args.config) if getattr(args, "config", None) else {}
    cli = {k: v for k, v in vars(args).items() if v is not None and (not keys or k in keys)}
    return file_values, cli


def run_main(main: Callable[[], Any]) -> int:
    """Run ``main``; user errors become one line on stderr and exit code 2 (tracebacks with --verbose)."""
    try:
        result = main()
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except user_error_types() as exc:
        if "--verbose" in sys.argv:
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"error: {msg}", file=sys.stderr)
        return 2
    return int(result or 0)
