"""What ``python -m executor serve`` runs: its settings, the model they name, and the
control-plane specs that follow.

Checked before any worker starts, so a wrong path or an impossible layout is one clear
message, not a traceback from a subprocess. One engine is one rank (one GPU, or one CPU
process); base TP inside an engine (``gpus_per_engine > 1``) is not offered here.

A policy is either a static layout (``--layout dp|tp|mixed``) or one of the simulator's
policy configs by name (``--policy flying``: ``conf/policy/flying.yaml``, the same file
``python -m sim run policy=flying`` reads), with ``KEY=VALUE`` overrides; switch settings
start from ``conf/config.yaml``'s ``switch`` section, as the simulator's do.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

from executor.model_config import SUPPORTED_DTYPES, ModelConfig
from executor.protocol import WorkerConfig
from policies.layout import Layout, candidate_groups
from policies.policy import SWITCHING_KINDS, PolicyConfig, make_policy
from policies.scheduler import SchedulerConfig
from policies.specs import GIB, ClusterSpec, GpuSpec, MemoryConfig, ModelSpec, \
    kv_block_bytes_per_gpu
from policies.switch import SwitchConfig

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
MODEL_SHAPES_DIR = CONF_DIR / "model"
POLICY_DIR = CONF_DIR / "policy"
LAYOUT_POLICIES = {"dp": "static_dp", "tp": "static_tp", "mixed": "static_mixed"}
# What the executor cannot do that the simulator prices: a restart (the executor never
# restarts a worker to switch), a lazy communicator pool (the workers build every candidate
# group at start-up), and shift's sequence-parallel mode.
EXECUTOR_SPLIT_STRATEGIES = ("drain", "recompute")
UNSUPPORTED_POLICY_KINDS = {"shift": "shift needs a sequence-parallel step mode, which the "
                                     "executor does not have (the simulator prices it)"}
BYTE_TOKENIZER = "bytes"  # --tokenizer bytes: UTF-8 bytes as ids (executor.tokenizer)
API_KEY_ENV = "FLYING_API_KEY"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
DIVIDED_DIMS = ("num_kv_heads", "num_heads", "intermediate_size")  # split across a TP group


class ServeConfigError(ValueError):
    """A setting that cannot be served; the message says which and why."""


@dataclass
class ServeConfig:
    model: str  # an HF folder, or a named shape from conf/model (dummy weights)
    layout: str = "dp"  # dp | tp | mixed
    num_ranks: int = 1
    engines_per_group: int = 2  # mixed: ranks per TP group
    device: str = "cpu"  # cpu (gloo) | cuda (NCCL)
    dtype: str = "auto"  # auto: the checkpoint's (or the shape's) own
    tokenizer: str | None = None  # folder, or "bytes"; default: the model folder's own
    served_model_name: str | None = None
    max_model_len: int | None = None  # cap below the model's own
    block_size_tokens: int = 16
    kv_cache_mib: float = 256.0  # CPU: KV pool per rank
    gpu_memory_utilization: float = 0.90  # CUDA: share of the GPU the rank may use
    activation_reserve_gib: float = 2.0  # CUDA: kept free for activations
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 64
    scheduler_policy: str = "fcfs"  # fcfs | priority
    threads_per_rank: int | None = None  # CPU: default cores // ranks
    seed: int = 0  # dummy weights, and the per-step sampling seeds
    api_key: str | None = None  # default: $FLYING_API_KEY
    output_dir: str | None = None  # requests.parquet & co. written there on shutdown
    start_method: str = "forkserver"  # forkserver | spawn
    startup_timeout_s: float = 600.0
    step_timeout_s: float = 600.0
    collective_timeout_s: float = 300.0
    sample_period_s: float = 1.0  # samples, and the policy's periodic look (as in the sim)
    policy: str | None = None  # a conf/policy name; None: the static --layout
    policy_overrides: tuple[str, ...] = ()  # KEY=VALUE onto the policy config
    switch_overrides: tuple[str, ...] = ()  # KEY=VALUE onto conf/config.yaml's switch
    max_queued_switches: int = 8  # admin switches waiting behind the one under way

    def __post_init__(self) -> None:
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None

    def check(self) -> None:
        if self.layout not in LAYOUT_POLICIES:
            raise ServeConfigError(f"--layout must be one of {sorted(LAYOUT_POLICIES)}, got "
                                   f"{self.layout!r}")
        if self.num_ranks < 1:
            raise ServeConfigError(f"--num-ranks must be >= 1, got {self.num_ranks}")
        if self.device not in ("cpu", "cuda"):
            raise ServeConfigError(f"--device must be cpu or cuda, got {self.device!r}")
        if self.dtype != "auto" and self.dtype not in SUPPORTED_DTYPES:
            raise ServeConfigError(f"--dtype must be auto or one of {SUPPORTED_DTYPES}, got "
                                   f"{self.dtype!r}")
        positive = ("block_size_tokens", "kv_cache_mib", "max_num_batched_tokens",
                    "max_num_seqs", "startup_timeout_s", "step_timeout_s",
                    "collective_timeout_s", "sample_period_s", "max_queued_switches")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ServeConfigError(f"--{name.replace('_', '-')} must be positive, got "
                                       f"{getattr(self, name)}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ServeConfigError("--gpu-memory-utilization must be in (0, 1]")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ServeConfigError("--max-model-len must be >= 2")
        try:
            SchedulerConfig(policy=self.scheduler_policy)
        except ValueError as e:
            raise ServeConfigError(str(e)) from e
        self.switch_config()  # raises on switch settings the executor cannot honour
        self.layout_of()  # raises on a policy or layout the ranks cannot form

    # --- policy and layout -----------------------------------------------------------------
    def policy_config(self) -> PolicyConfig:
        if self.policy is None:
            config = PolicyConfig(name=self.layout, kind=LAYOUT_POLICIES[self.layout],
                                  engines_per_group=self.engines_per_group)
        else:
            config = _load_policy(self.policy, self.policy_overrides)
        # Every rank keeps the full weights resident (shards are views), so a TP group's KV
        # room per rank is a DP engine's: the control plane must size it that way.
        config.weights_resident_per_engine = True
        return config

    @property
    def policy_name(self) -> str:
        return self.policy or self.layout

    @property
    def dynamic(self) -> bool:
        """The policy switches layouts by itself (the simulator's ``dynamic``)."""
        return self.policy_config().kind in SWITCHING_KINDS

    def switch_config(self) -> SwitchConfig:
        """conf/config.yaml's ``switch`` section (the simulator's defaults), overridden."""
        import yaml
        from omegaconf import OmegaConf

        base = yaml.safe_load((CONF_DIR / "config.yaml").read_text()).get("switch", {})
        try:
            merged = OmegaConf.merge(OmegaConf.structured(SwitchConfig), base,
                                     _dotlist(self.switch_overrides, "--switch-set"))
            config: SwitchConfig = OmegaConf.to_object(merged)
        except ServeConfigError:
            raise
        except Exception as e:  # omegaconf's errors name the key; keep the message
            raise ServeConfigError(f"--switch-set: {_first_line(e)}") from None
        if config.comm_pool != "eager":
            raise ServeConfigError("--switch-set comm_pool: the executor's workers create "
                                   "every candidate group at start-up (eager); lazy is the "
                                   "simulator's what-if")
        if config.split_strategy not in EXECUTOR_SPLIT_STRATEGIES:
            raise ServeConfigError(f"--switch-set split_strategy={config.split_strategy}: the "
                                   f"executor splits by {' or '.join(EXECUTOR_SPLIT_STRATEGIES)}"
                                   f" (it never restarts workers to switch)")
        return config

    def layout_of(self) -> Layout:
        """The layout the server starts in (its policy's initial layout)."""
        config = self.policy_config()
        try:
            return make_policy(config).initial_layout(self.num_ranks)
        except ValueError as e:
            what = f"--policy {self.policy}" if self.policy else f"--layout {self.layout}"
            what += f" with --num-ranks {self.num_ranks}"
            if self.layout == "mixed" and not self.policy:
                what += f" and --engines-per-group {self.engines_per_group}"
            raise ServeConfigError(f"{what}: {e}") from e

    @property
    def max_tp_width(self) -> int:
        """The widest group the server may form by itself: the initial layout's, or every
        candidate group's when the policy switches (an admin switch is checked on its own,
        against ``feasible_widths``)."""
        if self.dynamic:
            return max(g.num_engines for g in candidate_groups(self.num_ranks))
        return max(g.num_engines for g in self.layout_of().groups)


def _dotlist(overrides: tuple[str, ...], flag: str):
    from omegaconf import OmegaConf

    for item in overrides:
        if "=" not in item:
            raise ServeConfigError(f"{flag} {item!r}: expected KEY=VALUE")
    return OmegaConf.from_dotlist(list(overrides))


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0]


def policy_names() -> list[str]:
    return sorted(p.stem for p in POLICY_DIR.glob("*.yaml"))


def _load_policy(name: str, overrides: tuple[str, ...]) -> PolicyConfig:
    """conf/policy/NAME.yaml as the simulator reads it (typed: unknown keys fail)."""
    from omegaconf import OmegaConf

    path = POLICY_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ServeConfigError(f"--policy {name!r}: no conf/policy/{name}.yaml (policies: "
                               f"{policy_names()})")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(PolicyConfig), OmegaConf.load(path),
                                 _dotlist(overrides, "--policy-set"))
        config: PolicyConfig = OmegaConf.to_object(merged)
    except ServeConfigError:
        raise
    except Exception as e:  # omegaconf's errors name the key; keep the message
        raise ServeConfigError(f"--policy {name}: {_first_line(e)}") from None
    if config.kind in UNSUPPORTED_POLICY_KINDS:
        raise ServeConfigError(f"--policy {name}: {UNSUPPORTED_POLICY_KINDS[config.kind]}")
    return config


# --- the model -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResolvedModel:
    config: ModelConfig  # the shape, with ``dtype`` the run dtype
    folder: Path | None  # None: dummy weights
    checkpoint_dtype: str
    tokenizer_folder: Path | None  # None: byte tokenizer
    served_name: str
    max_model_len: int

    @property
    def load_dtype(self) -> str | None:
        """What the worker casts to (None: keep the checkpoint's)."""
        return None if self.config.dtype == self.checkpoint_dtype else self.config.dtype


def resolve_model(cfg: ServeConfig) -> ResolvedModel:
    path = Path(cfg.model).expanduser()
    if path.is_dir():
        config = ModelConfig.from_hf_folder(path)
        if not any((path / f).is_file() for f in WEIGHT_FILES):
            raise ServeConfigError(f"--model {path}: no {' or '.join(WEIGHT_FILES)} (only "
                                   f"safetensors checkpoints are supported)")
        folder = path
    elif (MODEL_SHAPES_DIR / f"{cfg.model}.yaml").is_file():
        config = ModelConfig.from_model_spec(_named_shape(cfg.model))
        folder = None
    else:
        shapes = sorted(p.stem for p in MODEL_SHAPES_DIR.glob("*.yaml"))
        raise ServeConfigError(f"--model {cfg.model!r}: no such folder, and not a named shape "
                               f"(named shapes, served with dummy weights: {shapes})")
    checkpoint_dtype = config.dtype
    dtype = checkpoint_dtype if cfg.dtype == "auto" else cfg.dtype
    config = dataclasses.replace(config, dtype=dtype)
    _check_widths(config, cfg)
    max_len = min(config.max_model_len, cfg.max_model_len or config.max_model_len)
    return ResolvedModel(config, folder, checkpoint_dtype, _tokenizer_folder(cfg, folder),
                         cfg.served_model_name or (folder.name if folder else cfg.model), max_len)


def _named_shape(name: str) -> ModelSpec:
    import yaml

    raw = yaml.safe_load((MODEL_SHAPES_DIR / f"{name}.yaml").read_text())
    try:
        return ModelSpec(**raw)
    except TypeError as e:
        raise ServeConfigError(f"conf/model/{name}.yaml is not a model shape: {e}") from e


def _check_widths(config: ModelConfig, cfg: ServeConfig) -> None:
    width = cfg.max_tp_width
    for what in DIVIDED_DIMS:
        if getattr(config, what) % width:
            what_runs = f"--policy {cfg.policy} (it may form a group of every rank)" \
                if cfg.dynamic else f"--layout {cfg.layout}"
            raise ServeConfigError(f"{what_runs} needs TP width {width}, and the "
                                   f"model's {what}={getattr(config, what)} is not divisible "
                                   f"by it (KV heads are sharded, never replicated)")


def feasible_widths(config: ModelConfig, num_ranks: int) -> list[int]:
    """Widths of the candidate groups the model can be split over (each divides every
    sharded dimension): what any switch may form."""
    widths = sorted({g.num_engines for g in candidate_groups(num_ranks)})
    return [w for w in widths if all(getattr(config, what) % w == 0 for what in DIVIDED_DIMS)]


def threads_per_rank(device: str, num_ranks: int, threads: int | None) -> int | None:
    """CPU intra-op threads of one rank: as asked, else the machine's cores shared out."""
    if threads is None and device == "cpu":
        return max(1, (os.cpu_count() or 1) // num_ranks)
    return threads


def worker_configs(cfg: ServeConfig, model: ResolvedModel, rendezvous_dir: str
                   ) -> list[WorkerConfig]:
    """One ``WorkerConfig`` per rank: what the server and the profiler start."""
    return [WorkerConfig(rank=r, world_size=cfg.num_ranks, device=cfg.device,
                         rendezvous=f"file://{rendezvous_dir}/store",
                         model_folder=str(model.folder) if model.folder else None,
                         model_config=model.config, dtype=model.load_dtype,
                         max_tp_width=resident_tp_width(model.config, cfg), seed=cfg.seed,
                         num_threads=threads_per_rank(cfg.device, cfg.num_ranks,
                                                      cfg.threads_per_rank),
                         collective_timeout_s=cfg.collective_timeout_s)
            for r in range(cfg.num_ranks)]


def resident_tp_width(config: ModelConfig, cfg: ServeConfig) -> int:
    """The width the resident weights are laid out for (their shard views serve its
    divisors): every feasible candidate width, so a later switch needs no reload. The
    layout costs no memory: it only orders the fused pieces."""
    return math.lcm(cfg.max_tp_width, *feasible_widths(config, cfg.num_ranks))


def _tokenizer_folder(cfg: ServeConfig, model_folder: Path | None) -> Path | None:
    if cfg.tokenizer == BYTE_TOKENIZER:
        return None
    if cfg.tokenizer is not None:
        folder = Path(cfg.tokenizer).expanduser()
        if not (folder / "tokenizer.json").is_file():
            raise ServeConfigError(f"--tokenizer {cfg.tokenizer}: no tokenizer.json there")
        return folder
    if model_folder is None:
        return None  # a named shape has no tokenizer of its own
    if not (model_folder / "tokenizer.json").is_file():
        raise ServeConfigError(f"{model_folder} has no tokenizer.json; pass --tokenizer FOLDER, "
                               f"or --tokenizer {BYTE_TOKENIZER} for UTF-8 bytes as token ids")
    return model_folder


# --- control-plane specs -----------------------------------------------------------------------
def model_spec(model: ResolvedModel) -> ModelSpec:
    c = model.config
    return ModelSpec(name=c.name, num_layers=c.num_layers, hidden_size=c.hidden_size,
                     num_heads=c.num_heads, num_kv_heads=c.num_kv_heads,
                     intermediate_size=c.intermediate_size, vocab_size=c.vocab_size,
                     head_dim=c.head_dim, max_model_len=model.max_model_len,
                     tie_word_embeddings=c.tie_word_embeddings, qkv_bias=c.qkv_bias,
                     dtype=c.dtype, rope_theta=c.rope.theta)


def cluster_and_memory(cfg: ServeConfig, spec: ModelSpec,
                       device_memory_bytes: int) -> tuple[ClusterSpec, MemoryConfig]:
    """The node as the control plane sizes KV pools. CUDA: the measured device memory with
    ``gpu_memory_utilization`` and the activation reserve. CPU: a device whose memory is the
    weights plus ``kv_cache_mib`` (and half a block, against float rounding), so that the
    control plane's own arithmetic yields the requested pool."""
    if cfg.device == "cuda":
        gpu = GpuSpec("cuda", device_memory_bytes / GIB, 0.0, 0.0, "nccl", 0.0)
        memory = MemoryConfig(cfg.gpu_memory_utilization, cfg.activation_reserve_gib,
                              cfg.block_size_tokens)
    else:
        block = kv_block_bytes_per_gpu(spec, 1, cfg.block_size_tokens)
        total = spec.weight_bytes + cfg.kv_cache_mib * 2**20 + block / 2
        gpu = GpuSpec("cpu", total / GIB, 0.0, 0.0, "gloo", 0.0)
        memory = MemoryConfig(1.0, 0.0, cfg.block_size_tokens)
    return ClusterSpec(f"{cfg.device}x{cfg.num_ranks}", gpu, cfg.num_ranks, 1), memory


def scheduler_config(cfg: ServeConfig) -> SchedulerConfig:
    return SchedulerConfig(max_num_batched_tokens=cfg.max_num_batched_tokens,
                           max_num_seqs=cfg.max_num_seqs, enable_chunked_prefill=True,
                           policy=cfg.scheduler_policy)
