"""The end-to-end demo on the embedded drifting-digits benchmark (what `make demo` runs)."""

from multisource.cli.demo import demo_main

if __name__ == "__main__":
    raise SystemExit(demo_main())
