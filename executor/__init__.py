"""The real backend: runs the control plane's step plans on devices.

Modules (each owns one thing): ``model_config`` (HF config.json -> shape), ``parallel``
(TP layers whose shards are views of full resident weights), ``comm`` (the TP group
handle), ``model`` (the single-device Llama-family decoder), ``loader`` (HF safetensors or
dummy weights), ``kv_cache`` (the paged pool, re-viewed per width), ``attention`` (attention
over block tables), ``sampling_params`` / ``sampler``, ``step_input`` (what a worker runs in
one step), ``model_runner`` (executes one step). Importing the package does not import torch.

Serving (``python -m executor serve``): ``protocol`` (control-channel messages),
``comm_pool`` (every candidate process group, created once), ``worker`` (one process per
rank), ``worker_pool`` (starting, watching and stopping them), ``engine_loop`` (one group's
schedule -> execute -> update loop), ``coordinator`` (the ControlPlane's Listener, requests,
aborts, failures), ``serving_request`` / ``output_text`` (a request's tokens, text and
stops), ``tokenizer`` (tokenizer.json, chat templates), ``openai_protocol`` / ``server``
(the HTTP API), ``metrics`` (Prometheus), ``serve_config`` (settings and the model they name),
``run_outputs`` (requests.parquet & co.). Only ``worker`` (and what it runs) imports torch:
the coordinator process does not.
"""
