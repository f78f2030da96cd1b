"""The starter spec `loraflow spec init` writes: the three required keys and the common ones, commented."""

from __future__ import annotations

STARTER_SPEC = """\
# loraflow training spec. Only name, dataset and base_model are required; every other key has a
# default from the base-model catalog. `loraflow spec validate FILE` explains any mistake.
name: my-lora                      # job and output name
dataset:
  path: ./photos                   # folder, .zip or .tar of images (+ optional .txt captions)
  trigger_word: ohwx               # the word that calls up your concept in prompts
  # captions: {backend: existing, trigger_placement: prepend}
  # checks: {min_images: 4, min_resolution: 256}
base_model: flux-dev               # tiny-flux | flux-dev | flux-schnell | sdxl | qwen-image | /path/to/folder
# engine: ai-toolkit               # builtin | ai-toolkit | kohya (default from the catalog)
# network: {rank: 16, alpha: 16}
# training:
#   steps: 2000
#   learning_rate: 1.0e-4
#   resolution: [512, 768, 1024]
#   vram_preset: 24                # 12 | 16 | 24 | 48 | 80: settings that fit a card of that size
# sampling:
#   prompts: ["a photo of [trigger] in a garden"]
#   every_n_steps: 250
# checkpointing: {every_n_steps: 250, keep_last: 4}
# compute:
#   provider: local                # local | ssh | vastai | runpod
#   gpu: {min_vram_gb: 24, max_usd_per_hour: 1.0}
# budget: {max_usd: 5, max_hours: 3}
# publish:
#   targets:
#     - {type: huggingface, repo_id: you/my-lora, private: true}   # token from HF_TOKEN
# notifications:
#   - {type: webhook, url: "https://example.com/hook"}             # signed with LORAFLOW_WEBHOOK_SECRET
"""
