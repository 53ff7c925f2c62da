"""LoRA training: optimizers and schedulers, the objective, text conditioning, the loop, saving and resuming."""
