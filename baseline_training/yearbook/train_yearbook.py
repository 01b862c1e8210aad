"""Train one yearbook source model: python train_yearbook.py --subset_name BIN --model_name M (paper's entry point)."""

from multisource.cli.train import train_baseline_main

if __name__ == "__main__":
    raise SystemExit(train_baseline_main(dataset="yearbook", bin_flags=("--subset_name", "--bin")))
