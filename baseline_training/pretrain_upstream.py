"""Pretrain a tiny model on the upstream pool: python baseline_training/pretrain_upstream.py --dataset drift_digits --model_name tiny-resnet"""

from multisource.cli.train import pretrain_upstream_main

if __name__ == "__main__":
    raise SystemExit(pretrain_upstream_main())
