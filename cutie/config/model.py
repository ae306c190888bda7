"""The model config (`model` node of the Hydra config) read into one typed, validated object.

The network never reads a config node directly: `ModelSpec.from_config` resolves interpolations, checks the
values the layout depends on, and names the option at fault when one is wrong. Every key of the node must be
read: one that no code reads (a typo, or an option of another implementation) is an error naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cutie.config.typed import ConfigError, convert

CONFIG_DIR = Path(__file__).resolve().parent / "model"
RESNET_TYPES = ("resnet18", "resnet50")


class ModelConfigError(ConfigError):
    """A model config value the network cannot be built from."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]
    pixel_dim: int
    key_dim: int
    value_dim: int
    sensory_dim: int
    embed_dim: int
    pixel_encoder_type: str
    ms_dims: tuple[int, int, int]  # pixel-encoder channels at strides 16, 8, 4
    mask_encoder_type: str
    mask_encoder_final_dim: int
    pixel_pe_scale: float
    pixel_pe_temperature: float
    transformer_embed_dim: int
    ff_dim: int
    num_heads: int
    num_blocks: int
    num_queries: int
    read_from_pixel_pe: tuple[bool, bool, bool]
    read_from_query_pe: tuple[bool, bool, bool]
    read_from_query_norm: bool
    query_self_attention_pe: tuple[bool, bool, bool]
    summarizer_embed_dim: int
    num_summaries: int
    summarizer_add_pe: bool
    sensory_aux: bool
    query_aux: bool
    sensory_aux_weight: float  # loss weight of the sensory auxiliary head
    query_aux_weight: float  # loss weight of the object-query auxiliary heads
    up_dims: tuple[int, int, int]
    imagenet_dir: str | None = None  # torchvision ImageNet ResNet weights (ours; not an official key)

    @classmethod
    def from_config(cls, model_cfg: DictConfig | Mapping[str, Any]) -> ModelSpec:
        """Reads the `model` config node (DictConfig or plain mapping; `${model.x}` interpolations allowed)."""
        c = _to_plain(model_cfg)
        read: set[str] = {"name"}

        def get(path: str, tp: Any) -> Any:
            """The option at `path`, checked to be of type `tp` (no silent int("64.7") or bool("no"))."""
            read.add(path)
            node: Any = c
            for part in path.split("."):
                if not isinstance(node, Mapping) or part not in node:
                    raise ModelConfigError(
                        f"model config: missing option `model.{path}` (see cutie/config/model/base.yaml)"
                    )
                node = node[part]
            try:
                return convert(tp, node, f"model.{path}")
            except ConfigError as e:
                raise ModelConfigError(f"model config: {e}") from None

        f3, i3, b3 = tuple[float, float, float], tuple[int, int, int], tuple[bool, bool, bool]

        ot = "object_transformer"
        spec = cls(
            name=str(c.get("name", "custom")),
            pixel_mean=get("pixel_mean", f3),
            pixel_std=get("pixel_std", f3),
            pixel_dim=get("pixel_dim", int),
            key_dim=get("key_dim", int),
            value_dim=get("value_dim", int),
            sensory_dim=get("sensory_dim", int),
            embed_dim=get("embed_dim", int),
            pixel_encoder_type=get("pixel_encoder.type", str),
            ms_dims=get("pixel_encoder.ms_dims", i3),
            mask_encoder_type=get("mask_encoder.type", str),
            mask_encoder_final_dim=get("mask_encoder.final_dim", int),
            pixel_pe_scale=get("pixel_pe_scale", float),
            pixel_pe_temperature=get("pixel_pe_temperature", float),
            transformer_embed_dim=get(f"{ot}.embed_dim", int),
            ff_dim=get(f"{ot}.ff_dim", int),
            num_heads=get(f"{ot}.num_heads", int),
            num_blocks=get(f"{ot}.num_blocks", int),
            num_queries=get(f"{ot}.num_queries", int),
            read_from_pixel_pe=get(f"{ot}.read_from_pixel.add_pe_to_qkv", b3),
            read_from_query_pe=get(f"{ot}.read_from_query.add_pe_to_qkv", b3),
            read_from_query_norm=get(f"{ot}.read_from_query.output_norm", bool),
            query_self_attention_pe=get(f"{ot}.query_self_attention.add_pe_to_qkv", b3),
            summarizer_embed_dim=get("object_summarizer.embed_dim", int),
            num_summaries=get("object_summarizer.num_summaries", int),
            summarizer_add_pe=get("object_summarizer.add_pe", bool),
            sensory_aux=get("aux_loss.sensory.enabled", bool),
            query_aux=get("aux_loss.query.enabled", bool),
            sensory_aux_weight=get("aux_loss.sensory.weight", float),
            query_aux_weight=get("aux_loss.query.weight", float),
            up_dims=get("mask_decoder.up_dims", i3),
            imagenet_dir=None if c.get("imagenet_dir") is None else str(c["imagenet_dir"]),
        )
        read.add("imagenet_dir")
        unread = sorted(set(_leaf_paths(c)) - read)
        if unread:
            raise ModelConfigError(
                f"model config: unknown option `model.{unread[0]}` (no code reads it: a typo? see "
                "cutie/config/model/base.yaml)"
            )
        spec._validate()
        return spec

    def _validate(self) -> None:
        def fail(msg: str) -> None:
            raise ModelConfigError(f"model config: {msg}")

        for opt, value in (
            ("pixel_encoder.type", self.pixel_encoder_type),
            ("mask_encoder.type", self.mask_encoder_type),
        ):
            if value not in RESNET_TYPES:
                fail(f"`model.{opt}` is {value!r}; supported: {', '.join(RESNET_TYPES)}")
        sizes = {
            "pixel_dim": self.pixel_dim,
            "key_dim": self.key_dim,
            "value_dim": self.value_dim,
            "sensory_dim": self.sensory_dim,
            "embed_dim": self.embed_dim,
            "mask_encoder.final_dim": self.mask_encoder_final_dim,
            "object_transformer.ff_dim": self.ff_dim,
            "object_transformer.num_heads": self.num_heads,
            "object_transformer.num_blocks": self.num_blocks,
            "object_transformer.num_queries": self.num_queries,
            **{f"pixel_encoder.ms_dims[{i}]": v for i, v in enumerate(self.ms_dims)},
            **{f"mask_decoder.up_dims[{i}]": v for i, v in enumerate(self.up_dims)},
        }
        for opt, value in sizes.items():
            if value < 1:
                fail(f"`model.{opt}` must be >= 1, got {value}")
        if min(self.pixel_std) <= 0 or self.pixel_pe_scale <= 0 or self.pixel_pe_temperature <= 0:
            fail("`model.pixel_std` (every value), `model.pixel_pe_scale` and `model.pixel_pe_temperature` must be > 0")
        if self.sensory_aux_weight < 0 or self.query_aux_weight < 0:
            fail("`model.aux_loss.sensory.weight` and `model.aux_loss.query.weight` must be >= 0")
        if self.up_dims[0] != self.embed_dim:
            fail(f"`model.mask_decoder.up_dims[0]` ({self.up_dims[0]}) must equal `model.embed_dim`")
        # The transformer, summarizer and fusers share one feature width (as in the official network).
        widths = {self.pixel_dim, self.value_dim, self.embed_dim, self.transformer_embed_dim, self.summarizer_embed_dim}
        if len(widths) != 1:
            fail("pixel_dim, value_dim, embed_dim and the transformer/summarizer embed_dim must be equal")
        if self.num_queries % 2 or self.num_summaries != self.num_queries:
            fail("`object_transformer.num_queries` must be even and equal `object_summarizer.num_summaries`")
        if self.embed_dim % self.num_heads:
            fail("`object_transformer.embed_dim` must be divisible by `num_heads`")


def _leaf_paths(node: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in node.items():
        path = f"{prefix}{k}"
        out += _leaf_paths(v, path + ".") if isinstance(v, Mapping) else [path]
    return out


def _to_plain(model_cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(model_cfg, DictConfig):
        return OmegaConf.to_container(model_cfg, resolve=True)  # type: ignore[return-value]
    if isinstance(model_cfg, Mapping):
        # Wrap so `${model.embed_dim}`-style interpolations resolve as they would inside the full config.
        wrapped = OmegaConf.create({"model": dict(model_cfg)})
        return OmegaConf.to_container(wrapped, resolve=True)["model"]  # type: ignore[index]
    raise ModelConfigError(f"model config must be a DictConfig or a mapping, got {type(model_cfg).__name__}")


def load_model_config(name: str, overrides: Mapping[str, Any] | None = None) -> DictConfig:
    """The `model` node of cutie/config/model/<name>.yaml (its `defaults` applied), with optional overrides
    merged on top, resolved. For scripts and tests that do not go through Hydra."""
    cfg = _load_with_defaults(name)
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.create(dict(overrides)))
    root = OmegaConf.create({"model": cfg})
    OmegaConf.resolve(root)
    return root.model


def _load_with_defaults(name: str) -> DictConfig:
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ModelConfigError(f"no model config {path}; known: {', '.join(known)}")
    own = OmegaConf.load(path)
    defaults = own.pop("defaults", [])
    merged = OmegaConf.create({})
    for parent in defaults:  # Hydra's order: parents first, this file's own values last
        merged = OmegaConf.merge(merged, _load_with_defaults(str(parent)))
    return OmegaConf.merge(merged, own)
