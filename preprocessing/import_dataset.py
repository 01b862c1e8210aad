"""Import your own time-stamped images as a dataset: python preprocessing/import_dataset.py --table T.csv --bin_by year --output_dir datasets/MyData [--help]"""

from multisource.cli.own_data import import_main

if __name__ == "__main__":
    raise SystemExit(import_main())
