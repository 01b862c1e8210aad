"""One experiment of any method: python experiments/run_experiment.py --method grasp --dataset D --target T ..."""

from multisource.cli.experiment import experiment_main

if __name__ == "__main__":
    raise SystemExit(experiment_main())
