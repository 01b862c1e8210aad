"""Train one source model: python baseline_training/train_baseline.py --dataset D --bin B --model_name M"""

from multisource.cli.train import train_baseline_main

if __name__ == "__main__":
    raise SystemExit(train_baseline_main())
