"""Shared CLI plumbing: logging, the "how to run" flags, one-line errors with a non-zero exit.

CLI modules import the library only when work starts (inside the command's function): importing torch,
Lightning, timm and PEFT takes seconds here, and ``--help`` must print at once.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from typing import Any, Callable

from ..config import ConfigError
from ..utils.logs import quiet_dependencies

USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, FileExistsError, FileNotFoundError, KeyError, ValueError)


def user_error_types() -> tuple[type[BaseException], ...]:
    # Imported here, not at the top: these modules import torch (see the module docstring).
    from ..data.folder import DataError
    from ..models.checkpoint import CheckpointError
    from ..models.factory import ModelError

    return USER_ERRORS + (DataError, CheckpointError, ModelError)


def environment_message(exc: OSError, output_flag: str = "--results_dir") -> str:
    """A full disk or a folder that cannot be written, named with the fix; ``output_flag`` is the command's own
    flag for where it writes."""
    where = f" ({exc.filename})" if exc.filename else ""
    what = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{what}{where}: free disk space or pass another {output_flag}; finished results are kept."
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{what}{where}: the folder is not writable; pass a writable {output_flag}."
    return f"{what}{where}."


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    quiet_dependencies()


def add_run_options(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The "how to run" flags every command shares (RunOptions fields); values are converted by the loader."""
    g = p.add_argument_group("how to run")
    g.add_argument("--data_root", help="the dataset's own folder (default: <project>/datasets/<DATASET_DIR>)")
    g.add_argument("--results_dir", help="results root (default: <project>/results)")
    g.add_argument("--checkpoint_dir", help="folder of source checkpoints <bin>.ckpt "
                                            "(default: <results>/<dataset>/baselines/<model>)")
    g.add_argument("--device", default=None, help="auto (default), cpu or cuda")
    g.add_argument("--num_workers", default=None, help="data-loader workers (default 0)")
    g.add_argument("--precision", default=None, help="auto (16-mixed on GPU, 32 on CPU), 32, 16-mixed, bf16-mixed")
    g.add_argument("--config", help="YAML settings file (see configs/README.md); command-line flags override it")
    g.add_argument("--verbose", action="store_true", default=None, help="debug logging and full tracebacks")
    return g


def add_executor_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("parallel execution")
    g.add_argument("--executor", default=None, help="local (default: in this process, or --workers processes) "
                                                    "or ray")
    g.add_argument("--workers", default=None,
                   help="local: run N tasks at once in N processes; ray: CPUs of a local Ray instance")
    g.add_argument("--ray_address", default=None, help="address of an existing Ray cluster (e.g. auto)")
    g.add_argument("--ray_cpus_per_task", default=None, help="CPUs (torch threads) per Ray task (default 1)")


def run_main(main: Callable[[], Any], output_flag: str = "--results_dir") -> int:
    """Run ``main``; user errors become one line on stderr and exit code 2 (tracebacks with --verbose), faults of
    the environment one line naming ``output_flag`` (where the command writes) and exit code 1."""
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
    except OSError as exc:  # the environment (a full disk, a read-only folder), not a bug: one line with the fix
        if "--verbose" in sys.argv:
            raise
        print(f"error: {environment_message(exc, output_flag)}", file=sys.stderr)
        return 1
    return int(result or 0)
