"""The training loop: optimiser, DDP, checkpoints, the trainer's batch source."""
