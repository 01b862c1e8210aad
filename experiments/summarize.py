"""Rebuild summaries from the metrics.json files: python experiments/summarize.py --dataset D --model M [--help]"""

from multisource.cli.sweep import summarize_main

if __name__ == "__main__":
    raise SystemExit(summarize_main())
