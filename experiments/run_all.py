"""Leave-one-bin-out sweep: python experiments/run_all.py --dataset D --model M [--methods ...] [--num_trials N]
[--targets ...] [--executor local|ray] [--workers N] [--train_missing] [method flags] [--help]"""

from multisource.cli.sweep import sweep_main

if __name__ == "__main__":
    raise SystemExit(sweep_main())
