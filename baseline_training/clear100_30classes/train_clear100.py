"""Train one clear100 source model: python train_clear100.py --year_name BIN --model_name M (paper's entry point)."""

from multisource.cli.train import train_baseline_main

if __name__ == "__main__":
    raise SystemExit(train_baseline_main(dataset="clear100", bin_flags=("--year_name", "--bin")))
