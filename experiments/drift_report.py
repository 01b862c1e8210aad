"""Every source model on every bin: python experiments/drift_report.py --dataset D --model M [--help]"""

from multisource.cli.own_data import drift_main

if __name__ == "__main__":
    raise SystemExit(drift_main())
