"""Code shared by the stages: entry protocol, data readers, Trainer wiring, checkpoints."""
