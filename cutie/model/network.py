"""CutieNet: the Cutie network in the official checkpoint layout, as a set of steps an outer procedure
(the training clip forward, or the inference memory manager) strings together per frame:

    encode_image -> transform_key                      (every frame)
    read_memory  = pixel readout -> pixel_fusion -> readout_query
    segment                                             (decoder, aggregation, 4x upsampling)
    encode_mask                                         (frames that become memory)
    compute_aux                                         (training only)

Shapes: B batch, O objects, T memory frames, H*W image, h*w = H/16*W/16, CK key_dim, CV value_dim,
Cs sensory_dim, Q object queries. Images are B*3*H*W in [0, 1]; the network normalises them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from cutie.config.model import ModelSpec
from cutie.model.aux_heads import AuxComputer
from cutie.model.blocks import fp32_region, others_of
from cutie.model.decoder import MaskDecoder
from cutie.model.encoders import KeyProjection, MaskEncoder, PixelEncoder
from cutie.model.memory_read import aggregate, readout, similarity, softmax_affinity
from cutie.model.pixel_fuser import PixelFeatureFuser
from cutie.model.summarizer import ObjectSummarizer
from cutie.model.transformer import QueryTransformer


class CutieNet(nn.Module):
    def __init__(self, spec: ModelSpec, *, single_object: bool = False):
        super().__init__()
        self.spec = spec
        self.single_object = single_object
        self.value_dim = spec.value_dim
        self.sensory_dim = spec.sensory_dim
        self.key_dim = spec.key_dim
        # Submodule names and order are the official checkpoint's.
        self.pixel_encoder = PixelEncoder(spec)
        self.pix_feat_proj = nn.Conv2d(spec.ms_dims[0], spec.pixel_dim, kernel_size=1)
        self.key_proj = KeyProjection(spec)
        self.mask_encoder = MaskEncoder(spec, single_object=single_object)
        self.mask_decoder = MaskDecoder(spec)
        self.pixel_fuser = PixelFeatureFuser(spec, single_object=single_object)
        self.object_transformer = QueryTransformer(spec)
        self.object_summarizer = ObjectSummarizer(spec)
        self.aux_computer = AuxComputer(spec)
        # Not in the state dict (as in the official network): constants from the config.
        self.register_buffer("pixel_mean", torch.tensor(spec.pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(spec.pixel_std).view(3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def forward(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "CutieNet has no single forward: use cutie.model.clip_forward.forward_clip for training, "
            "or the per-step methods (encode_image, read_memory, segment, ...) for inference"
        )

    def _normalise(self, image: torch.Tensor) -> torch.Tensor:
        return (image - self.pixel_mean) / self.pixel_std

    def _others(self, masks: torch.Tensor) -> torch.Tensor | None:
        return None if self.single_object else others_of(masks)

    def encode_image(self, image: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """image B*3*H*W in [0, 1] -> ([f16 B*C16*h*w, f8 B*C8*2h*2w, f4 B*C4*4h*4w], pix_feat B*C*h*w)."""
        f16, f8, f4 = self.pixel_encoder(self._normalise(image))
        return [f16, f8, f4], self.pix_feat_proj(f16)

    def transform_key(
        self, f16: torch.Tensor, *, need_sk: bool = True, need_ek: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """f16 B*C16*h*w -> key B*CK*h*w, shrinkage B*1*h*w, selection B*CK*h*w."""
        return self.key_proj(f16, need_s=need_sk, need_e=need_ek)

    def encode_mask(
        self,
        image: torch.Tensor,
        pix_feat: torch.Tensor,
        sensory: torch.Tensor,
        masks: torch.Tensor,
        *,
        deep_update: bool = True,
        chunk_size: int = -1,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """image B*3*H*W in [0, 1], pix_feat B*C*h*w, sensory B*O*Cs*h*w, masks B*O*H*W (probabilities)
        -> mask value B*O*CV*h*w, sensory B*O*Cs*h*w (deep-updated if asked), object summaries
        B*O*Q*(C+1), summary logits B*O*h*w*Q (only with need_weights)."""
        value, sensory = self.mask_encoder(
            self._normalise(image),
            pix_feat,
            sensory,
            masks,
            self._others(masks),
            deep_update=deep_update,
            chunk_size=chunk_size,
        )
        summaries, logits = self.object_summarizer(masks, value, need_weights)
        return value, sensory, summaries, logits

    def read_pixel_memory(
        self,
        query_key: torch.Tensor,
        query_selection: torch.Tensor,
        memory_key: torch.Tensor,
        memory_shrinkage: torch.Tensor,
        msk_value: torch.Tensor,
    ) -> torch.Tensor:
        """Attention readout of the pixel memory, in float32 whatever the autocast state.

        query_key/query_selection B*CK*h*w, memory_key B*CK*T*h*w, memory_shrinkage B*1*T*h*w,
        msk_value B*O*CV*T*h*w -> B*O*CV*h*w."""
        b, o = msk_value.shape[:2]
        h, w = query_key.shape[-2:]
        with fp32_region(query_key):
            sim = similarity(memory_key.float(), memory_shrinkage.float(), query_key.float(), query_selection.float())
            out = readout(softmax_affinity(sim), msk_value.flatten(1, 2).float())  # B*(O*CV)*(h*w)
        return out.view(b, o, self.value_dim, h, w)

    def read_memory(
        self,
        query_key: torch.Tensor,
        query_selection: torch.Tensor,
        memory_key: torch.Tensor,
        memory_shrinkage: torch.Tensor,
        msk_value: torch.Tensor,
        obj_memory: torch.Tensor,
        pix_feat: torch.Tensor,
        sensory: torch.Tensor,
        last_mask: torch.Tensor,
        selector: torch.Tensor | None,
    ) -> tuple[torch.Tensor, dict]:
        """The training-time memory read (inference replaces the first step with its memory bank).

        query_key/query_selection B*CK*h*w, memory_key B*CK*T*h*w, memory_shrinkage B*1*T*h*w,
        msk_value B*O*CV*T*h*w, obj_memory B*O*T*Q*(C+1), pix_feat B*C*h*w, sensory B*O*Cs*h*w,
        last_mask B*O*H*W, selector B*O*1*1 -> readout B*O*C*h*w, aux input {sensory, q_logits, attn_mask}.
        """
        pixel_readout = self.read_pixel_memory(query_key, query_selection, memory_key, memory_shrinkage, msk_value)
        fused = self.pixel_fusion(pix_feat, pixel_readout, sensory, last_mask)
        readout_, aux = self.readout_query(fused, obj_memory, selector=selector)
        return readout_, {"sensory": sensory, "q_logits": aux["logits"], "attn_mask": aux["attn_mask"]}

    def pixel_fusion(
        self,
        pix_feat: torch.Tensor,
        pixel: torch.Tensor,
        sensory: torch.Tensor,
        last_mask: torch.Tensor,
        *,
        chunk_size: int = -1,
    ) -> torch.Tensor:
        """pix_feat B*C*h*w, pixel readout B*O*CV*h*w, sensory B*O*Cs*h*w, last_mask B*O*H*W -> B*O*C*h*w."""
        last_mask = F.interpolate(last_mask, size=sensory.shape[-2:], mode="area")
        return self.pixel_fuser(pix_feat, pixel, sensory, last_mask, self._others(last_mask), chunk_size=chunk_size)

    def readout_query(
        self,
        pixel_readout: torch.Tensor,
        obj_memory: torch.Tensor,
        *,
        selector: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, dict]:
        """pixel_readout B*O*C*h*w, obj_memory B*O*T*Q*(C+1) -> B*O*C*h*w, {logits, attn_mask, ...}."""
        return self.object_transformer(pixel_readout, obj_memory, selector=selector, need_weights=need_weights)

    def segment(
        self,
        ms_image_feat: list[torch.Tensor],
        memory_readout: torch.Tensor,
        sensory: torch.Tensor,
        *,
        selector: torch.Tensor | None = None,
        chunk_size: int = -1,
        update_sensory: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ms_image_feat from encode_image, memory_readout B*O*C*h*w, sensory B*O*Cs*h*w, selector B*O*1*1
        -> sensory B*O*Cs*h*w, logits B*(O+1)*H*W (background first), probabilities B*(O+1)*H*W."""
        sensory, logits = self.mask_decoder(
            ms_image_feat, memory_readout, sensory, chunk_size=chunk_size, update_sensory=update_sensory
        )
        prob = torch.sigmoid(logits)  # B*O*4h*4w
        if selector is not None:
            prob = prob * selector
        logits = F.interpolate(aggregate(prob, dim=1), scale_factor=4, mode="bilinear", align_corners=False)
        return sensory, logits, F.softmax(logits, dim=1)

    def compute_aux(
        self, pix_feat: torch.Tensor, aux_inputs: dict, selector: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """pix_feat B*C*h*w and read_memory's aux input -> {sensory_logits, q_logits, attn_mask}."""
        return self.aux_computer(pix_feat, aux_inputs, selector)


def build_network(model_cfg: ModelSpec | DictConfig | Mapping[str, Any], *, single_object: bool = False) -> CutieNet:
    """The network for a parsed ModelSpec (or a `model` config node, parsed here). `single_object`
    (pre-training with one object) drops the other-objects input: mask_encoder.conv1 takes 4 channels,
    pixel_fuser.sensory_compress sensory_dim+1."""
    spec = model_cfg if isinstance(model_cfg, ModelSpec) else ModelSpec.from_config(model_cfg)
    return CutieNet(spec, single_object=single_object)
