"""One pearl experiment: python run_pearl_experiment.py --dataset D --target T --sources S1 S2 ... --model M [--help]"""

from multisource.cli.experiment import experiment_main

if __name__ == "__main__":
    raise SystemExit(experiment_main(method="pearl"))
