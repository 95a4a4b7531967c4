"""The real backend: runs the control plane's step plans on devices.

Modules (each owns one thing): ``model_config`` (HF config.json -> shape), ``parallel``
(TP layers whose shards are views of full resident weights), ``comm`` (the TP group
handle), ``model`` (the single-device Llama-family decoder), ``loader`` (HF safetensors or
dummy weights), ``kv_cache`` (the paged pool, re-viewed per width), ``attention`` (attention
over block tables), ``sampling_params`` / ``sampler``, ``step_input`` (what a worker runs in
one step), ``model_runner`` (executes one step). Importing the package does not import torch.
"""
