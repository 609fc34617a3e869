"""Stage 4, training: the four strategies trained on an archive, checkpointed, calibrated."""
