"""Running experiments: one target x method x trial (runner), sweeps over them, and summary reports."""
