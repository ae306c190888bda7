"""The semi-supervised inference procedure over one video, one frame at a time.

A frame with a mask gives new objects (and is memorised); every other frame is segmented from memory. A
frame is memorised every `mem_every` frames, the sensory memory is updated at the staggered offsets in between,
and the last frame of a video is neither memorised nor used to update the sensory memory.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from cutie.inference.memory_bank import MemoryBank
from cutie.inference.settings import InferenceSettings
from cutie.inference.tensor_ops import Pads, aggregate, pad_to_multiple, stagger_steps, unpad


class VideoProcessor:
    """Runs the network over one video. Call `step` for every frame in order; objects are tracked by id."""

    def __init__(self, network: torch.nn.Module, settings: InferenceSettings | None = None):
        self.network = network
        self.settings = settings or InferenceSettings()
        self.stagger = stagger_steps(self.settings.mem_every, self.settings.stagger_updates)
        self.memory = MemoryBank(
            sensory_dim=_sensory_dim(network),
            max_mem_frames=self.settings.max_mem_frames,
            top_k=self.settings.top_k,
            long_term=self.settings.long_term if self.settings.use_long_term else None,
        )
        self.object_ids: list[int] = []  # channel i+1 of a probability map is object object_ids[i]
        self.frame_index = -1
        self.last_mem_index = 0
        self.last_mask: torch.Tensor | None = None  # B*O*H*W at the padded size

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.settings.amp and device.type == "cuda":
            return torch.autocast(device_type="cuda")
        return contextlib.nullcontext()

    @torch.inference_mode()
    def step(
        self,
        image: torch.Tensor,
        mask: torch.Tensor | None = None,
        objects: list[int] | None = None,
        *,
        end: bool = False,
    ) -> torch.Tensor:
        """image: 3*H*W in [0, 1]; mask: optional H*W object ids (only `objects` are read from it; default: its
        non-zero ids); end: this is the last frame. Returns (O+1)*H*W probabilities, background first, channel
        i+1 for `self.object_ids[i]`."""
        with self._autocast(image.device):
            return self._step(image, mask, objects, end=end)

    def _step(
        self, image: torch.Tensor, mask: torch.Tensor | None, objects: list[int] | None, *, end: bool
    ) -> torch.Tensor:
        net, cfg = self.network, self.settings
        if mask is not None and objects is None:
            objects = [int(v) for v in torch.unique(mask) if v != 0]
        if mask is not None and not objects:
            mask = None  # an empty annotation carries nothing to memorise

        orig_size = image.shape[-2:]
        resized = False
        if cfg.max_internal_size > 0 and min(orig_size) > cfg.max_internal_size:
            resized = True
            short, limit = min(orig_size), cfg.max_internal_size  # the official rounding
            size = (int(orig_size[0] / short * limit), int(orig_size[1] / short * limit))
            image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
            if mask is not None:
                # nearest-exact (pixel centres), as the official procedure: plain "nearest" shifts the mask by
                # up to a pixel towards the top-left, which moves object borders by a whole internal pixel.
                mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()

        self.frame_index += 1
        image, pads = pad_to_multiple(image, 16)
        image = image.unsqueeze(0)  # 1*3*H*W
        if cfg.flip_aug:
            image = torch.cat([image, torch.flip(image, dims=[-1])], dim=0)  # 2*3*H*W

        since_mem = self.frame_index - self.last_mem_index
        is_mem_frame = (since_mem >= cfg.mem_every or mask is not None) and not end
        need_segment = mask is None or (bool(self.object_ids) and not set(objects) <= set(self.object_ids))
        update_sensory = since_mem in self.stagger and not end

        ms_feat, pix_feat = net.encode_image(image)
        key, shrinkage, selection = net.transform_key(ms_feat[0])

        prob = None
        if need_segment:
            prob = self._segment(ms_feat, pix_feat, key, selection, update_sensory=update_sensory)

        if mask is not None:
            new_ids = [obj for obj in objects if obj not in self.object_ids]
            self.object_ids += new_ids
            mask, _ = pad_to_multiple(mask, 16)
            if prob is not None:
                # merge: the given objects replace the prediction, and nothing else may claim their pixels
                fg = prob[1:]  # O_old*H*W
                fg[:, mask > 0] = 0
                planes = list(fg)
                for obj in objects:
                    plane = (mask == obj).to(fg.dtype)
                    idx = self.object_ids.index(obj)
                    if idx < len(planes):
                        planes[idx] = plane
                    else:
                        planes.append(plane)
                given = torch.stack(planes, 0)
            else:
                given = torch.stack([(mask == obj) for obj in self.object_ids], 0)
            prob = torch.softmax(aggregate(given, dim=0), dim=0)
        if prob is None:
            # No memory yet and no mask: nothing is known about this frame. The official procedure returns one
            # all-zero channel here (not a confident background), and memorises nothing.
            prob = torch.zeros(1, *image.shape[-2:], device=image.device)
            return self._restore(prob, pads, resized, orig_size)

        last = prob[1:].unsqueeze(0)  # 1*O*H*W
        if cfg.flip_aug:
            last = torch.cat([last, torch.flip(last, dims=[-1])], dim=0)
        self.last_mask = last

        if is_mem_frame and self.object_ids:
            self._memorise(image, pix_feat, key, shrinkage, selection, last)
        return self._restore(prob, pads, resized, orig_size)

    def _restore(self, prob: torch.Tensor, pads: Pads, resized: bool, size: torch.Size) -> torch.Tensor:
        prob = unpad(prob, pads)
        if resized:
            prob = F.interpolate(prob[None], size=tuple(size), mode="bilinear", align_corners=False)[0]
        return prob

    def _segment(self, ms_feat, pix_feat, key, selection, *, update_sensory: bool) -> torch.Tensor | None:
        if not self.memory.engaged:
            return None
        ids = self.object_ids
        readout = self.memory.read(
            self.network, pix_feat, key, selection, self.last_mask, ids, chunk_size=self.settings.chunk_size
        )
        sensory, _, prob = self.network.segment(
            ms_feat,
            readout,
            self.memory.get_sensory(ids),
            chunk_size=self.settings.chunk_size,
            update_sensory=update_sensory,
        )
        if update_sensory:
            self.memory.set_sensory(sensory, ids)
        # B*(O+1)*H*W -> (O+1)*H*W; with flip augmentation the flipped half is flipped back and averaged
        if self.settings.flip_aug:
            return (prob[0] + torch.flip(prob[1], dims=[-1])) / 2
        return prob[0]

    def _memorise(self, image, pix_feat, key, shrinkage, selection, last: torch.Tensor) -> None:
        ids = self.object_ids
        self.memory.init_sensory(key, ids)
        mask_value, sensory, summaries, _ = self.network.encode_mask(
            image, pix_feat, self.memory.get_sensory(ids), last, deep_update=True, chunk_size=self.settings.chunk_size
        )
        self.memory.add(key, shrinkage, mask_value, summaries, ids, selection=selection)
        self.last_mem_index = self.frame_index
        self.memory.set_sensory(sensory, ids)  # deep update

    def index_mask(self, prob: torch.Tensor) -> torch.Tensor:
        """(O+1)*H*W probabilities -> H*W object ids (0 background)."""
        lut = torch.tensor([0, *self.object_ids], device=prob.device, dtype=torch.long)
        return lut[prob.argmax(0)]


def _sensory_dim(network: torch.nn.Module) -> int:
    for name in ("sensory_dim",):
        if hasattr(network, name):
            return int(getattr(network, name))
    spec = getattr(network, "spec", None)
    if spec is not None and hasattr(spec, "sensory_dim"):
        return int(spec.sensory_dim)
    raise AttributeError("the network exposes no sensory_dim (expected network.sensory_dim or network.spec)")
