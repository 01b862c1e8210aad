"""Train every bin: python baseline_training/train_all_subsets.py --dataset D --model_name M [--bins ...] [--force]"""

from multisource.cli.train import train_all_main

if __name__ == "__main__":
    raise SystemExit(train_all_main())
