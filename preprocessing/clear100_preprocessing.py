"""Build CLEAR-100 (30 classes) from its raw download: python preprocessing/clear100_preprocessing.py [--source_dir RAW] [--help]"""

from multisource.cli.preprocess_real import clear100_main

if __name__ == "__main__":
    raise SystemExit(clear100_main())
