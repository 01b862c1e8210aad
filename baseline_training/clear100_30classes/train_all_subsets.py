"""Train every clear100 bin: python train_all_subsets.py --model_name M [--bins ...] [--force] (paper's entry point)."""

from multisource.cli.train import train_all_main

if __name__ == "__main__":
    raise SystemExit(train_all_main(dataset="clear100"))
