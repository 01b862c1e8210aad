"""Download ImageNet weights into the local cache: python baseline_training/download_weights.py --model_name resnet-50"""

from multisource.cli.train import download_weights_main

if __name__ == "__main__":
    raise SystemExit(download_weights_main())
