"""Training: ``fit`` (train.py) and what runs beside it while a method trains.

- ``train``: ``fit``, a recipe -> a trained run folder and its RunSummary
- ``monitor``: the kNN monitor, images/s, view grids (Lightning callbacks)
- ``loggers``: TensorBoard and the optional CSV, wandb, mlflow loggers
- ``checkpointing``: the crash-safe checkpoint writer and resume
- ``budget``: wall-clock budgets, held by refitting the step count as the run goes
"""
