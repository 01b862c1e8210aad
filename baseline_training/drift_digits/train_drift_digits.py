"""Train one drift_digits source model: python train_drift_digits.py --era_name BIN --model_name M (paper's entry point)."""

from multisource.cli.train import train_baseline_main

if __name__ == "__main__":
    raise SystemExit(train_baseline_main(dataset="drift_digits", bin_flags=("--era_name", "--bin")))
