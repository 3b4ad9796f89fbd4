"""Fine-tuning: the config, the recipe (setup -> steps -> finish) and checkpoints."""
