"""AdamW parameter groups (cutie/model/param_groups.py) on the official parameter layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from cutie.model.param_groups import param_groups

BUFFERS = ("running_mean", "running_var", "num_batches_tracked", "inv_freq")


def stand_in_network(shapes: dict[str, list[int]]) -> nn.Module:
    """Parameters (and buffers) with the official names and shapes."""
    root = nn.Module()
    for key, shape in shapes.items():
        *path, leaf = key.split(".")
        node = root
        for name in path:
            if not hasattr(node, name):
                node.add_module(name, nn.Module())
            node = getattr(node, name)
        if leaf in BUFFERS:
            node.register_buffer(leaf, torch.zeros(shape))
        else:
            node.register_parameter(leaf, nn.Parameter(torch.zeros(shape)))
    return root


@pytest.mark.parametrize("model", ["small", "base"])
def test_every_parameter_in_exactly_one_group(reference_dir: Path, model: str) -> None:
    shapes = json.loads((reference_dir / f"official_keys_{model}.json").read_text())
    net = stand_in_network(shapes)
    groups = param_groups(net, lr=1e-4, weight_decay=0.001, embed_weight_decay=0.0, backbone_lr_ratio=0.1)
    assert [g["name"] for g in groups] == ["backbone", "embedding", "other"]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in net.parameters()}

    names = {id(p): n for n, p in net.named_parameters()}
    backbone, embedding, other = ({names[id(p)] for p in g["params"]} for g in groups)
    assert backbone == {n for n in names.values() if n.startswith("pixel_encoder.")}
    # The official rule matches by name suffix, so the summary->query projections' weights (not their biases)
    # count as embeddings too; kept as official.
    assert embedding == {
        "object_transformer.query_init.weight",
        "object_transformer.query_emb.weight",
        "object_transformer.summary_to_query_init.weight",
        "object_transformer.summary_to_query_emb.weight",
    }
    assert "mask_encoder.conv1.weight" in other and "object_transformer.summary_to_query_init.bias" in other

    assert groups[0]["lr"] == pytest.approx(1e-5) and groups[0]["weight_decay"] == 0.001
    assert groups[1]["lr"] == pytest.approx(1e-4) and groups[1]["weight_decay"] == 0.0
    assert groups[2]["lr"] == pytest.approx(1e-4) and groups[2]["weight_decay"] == 0.001


def test_wrapped_shared_and_frozen_parameters() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pixel_encoder = nn.Linear(2, 2)
            self.query_emb = nn.Embedding(3, 2)
            self.head = nn.Linear(2, 2)
            self.tied = self.head  # the same parameters under a second name
            self.frozen = nn.Linear(2, 2).requires_grad_(False)

    net = Net()
    wrapped = nn.Module()
    wrapped.module = net  # names gain a 'module.' prefix, as under DistributedDataParallel
    groups = param_groups(wrapped, lr=1.0, weight_decay=0.5, embed_weight_decay=0.0, backbone_lr_ratio=0.1)
    assert [len(g["params"]) for g in groups] == [2, 1, 2]
    assert groups[0]["params"][0] is net.pixel_encoder.weight
    assert groups[1]["params"][0] is net.query_emb.weight
    assert all(p.requires_grad for g in groups for p in g["params"])


def test_groups_drive_adamw() -> None:
    net = nn.Module()
    net.pixel_encoder = nn.Linear(3, 3)
    net.head = nn.Linear(3, 1)  # no embedding: that group stays empty
    groups = param_groups(net, lr=0.1, weight_decay=0.0, embed_weight_decay=0.0, backbone_lr_ratio=0.1)
    opt = torch.optim.AdamW(groups, lr=0.1)
    before = net.pixel_encoder.weight.detach().clone(), net.head.weight.detach().clone()
    net.head(net.pixel_encoder(torch.ones(1, 3))).sum().backward()
    opt.step()
    # Adam's first step moves every weight by ~lr (sign of the gradient): 0.01 in the backbone, 0.1 elsewhere
    moved_backbone = (net.pixel_encoder.weight - before[0]).abs().max().item()
    moved_head = (net.head.weight - before[1]).abs().max().item()
    assert moved_backbone == pytest.approx(0.01, rel=1e-3)
    assert moved_head == pytest.approx(0.1, rel=1e-3)


def test_real_network_groups() -> None:
    from cutie.model import build_network, load_model_config

    net = build_network(load_model_config("small"))
    groups = param_groups(net, lr=1e-4, weight_decay=0.001, embed_weight_decay=0.0, backbone_lr_ratio=0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len([p for p in net.parameters() if p.requires_grad])
    assert len(groups[1]["params"]) == 4  # query_init, query_emb, summary_to_query_{init,emb} weights
    backbone = {id(p) for p in net.pixel_encoder.parameters()}
    assert {id(p) for p in groups[0]["params"]} == backbone
