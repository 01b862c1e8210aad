"""Build the embedded drifting-digits benchmark: python preprocessing/drift_digits_preprocessing.py [--help]"""

from multisource.cli.preprocess import drift_digits_main

if __name__ == "__main__":
    raise SystemExit(drift_digits_main())
