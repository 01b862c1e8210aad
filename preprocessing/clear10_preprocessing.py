"""Build CLEAR-10 from its raw download: python preprocessing/clear10_preprocessing.py [--source_dir RAW] [--help]"""

from multisource.cli.preprocess_real import clear10_main

if __name__ == "__main__":
    raise SystemExit(clear10_main())
