"""Build Yearbook (four periods) from its raw download: python preprocessing/yearbook_preprocessing.py [--source_dir RAW] [--help]"""

from multisource.cli.preprocess_real import yearbook_main

if __name__ == "__main__":
    raise SystemExit(yearbook_main())
