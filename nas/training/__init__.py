"""The training library: the generic `Trainer` (optimiser, schedule, EMA, distillation, checkpoints, resume,
distributed runs) and the supernet's trainer (alpha optimiser, temperature schedule). Entry points:
`nas.train_supernet` and `nas.train`."""
