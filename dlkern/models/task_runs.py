"""Registered models on tasks besides their own (``dlkern train <model> --task <task>``): the
real-data tasks of issue #21 for models whose default task is synthetic."""
from dlkern.models.registry import TrainSettings, register_task_run

# stdlib_chars: the task's target (2.8 bits/char) is what this 2-layer GPT reaches in 600 steps
register_task_run("gpt", "stdlib_chars", config={"n_layer": 2, "n_head": 4, "n_embd": 64},
                  train=TrainSettings(steps=600, batch_size=32, lr=3e-3, weight_decay=0.1, warmup=30, eval_every=100))
register_task_run("mamba", "stdlib_chars", config={"n_layer": 2, "d_model": 96, "d_state": 16},
                  train=TrainSettings(steps=180, batch_size=32, lr=3e-3, warmup=30, eval_every=90))
# sklearn_digits (8x8): 2x2 patches
register_task_run("vit", "sklearn_digits", config={"patch_size": 2}, tiny={"patch_size": 2, "dim": 16, "depth": 1, "heads": 1},
                  train=TrainSettings(steps=400, batch_size=64, lr=2e-3, weight_decay=0.05, warmup=20, eval_every=200))
