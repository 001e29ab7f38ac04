"""Model zoo: one file per architecture, built from dlkern.nn / dlkern.nn.functional only.
``create_model(name, **config)``, ``list_models()``; each model's embedded task is in ``tasks``."""
from dlkern.models import (bert, convnext, ddpm, efficientnet, glow, gpt, mamba, realnvp, resnet, s4d,  # noqa: F401
                           swin, vit, wavenet)  # importing a model file registers it
from dlkern.models import bytenet, seq2seq, seq_tasks, t5, task_runs, transformer_xl  # noqa: F401,E402  sequence models (#21)
# generative and self-supervised models (tasks_generative.py)
from dlkern.models import dcgan, iresnet, planar_flow, simclr, vae, vae_iaf  # noqa: F401,E402
from dlkern.models.registry import create_model, get_entry, list_models, model_config, register_model
from dlkern.models.tasks import get_task

__all__ = ["create_model", "list_models", "register_model", "get_entry", "get_task", "model_config"]
