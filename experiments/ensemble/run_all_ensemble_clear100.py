"""All targets x trials of one method on one dataset (the paper's entry point); --help lists the flags."""

from multisource.cli.sweep import sweep_main

if __name__ == "__main__":
    raise SystemExit(sweep_main(method="ensemble", dataset="clear100"))
