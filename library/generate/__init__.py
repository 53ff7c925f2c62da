"""Image generation with Diffusers pipelines from our ModelBundle: samplers, long prompts, LoRA networks."""

from library.generate.plan import Defaults, ImageJob, batches, plan_jobs
from library.generate.runner import GenerationConfig, generate
from library.generate.schedulers import SAMPLERS, make_scheduler
from library.generate.text import Conditioning, PromptEncoder

__all__ = ["SAMPLERS", "Conditioning", "Defaults", "GenerationConfig", "ImageJob", "PromptEncoder", "batches",
           "generate", "make_scheduler", "plan_jobs"]
