"""Training: the Lightning source trainer and the target fine-tuning loop shared by the methods."""
