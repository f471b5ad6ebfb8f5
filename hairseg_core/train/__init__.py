"""Training one model: the trainer, its losses and metrics, and the GPU settings it runs with."""
