"""AttnLRP on a whole tiny ViT equals the paper's equations, written out message by message with einsum.

The reference below never uses autograd: it runs medlrp's ``vit2d`` forward by hand, then passes the
relevance down layer by layer with the explicit rules of the ``attnlrp`` composite (epsilon rule on
linear layers and the patch embedding, proportional split on sums, layer norm with constant std, the
softmax rule ``R_i = x_i (R_i - s_i sum_j R_j)``, the uniform 50/50 matmul rule, GELU identity).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import medlrp
from medlrp.models.vit import vit2d

EPS = 1e-6


def stab(z: torch.Tensor) -> torch.Tensor:
    return z + EPS * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def eps_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """R_i = x_i sum_j w_ji R_j / stab(z_j)."""
    z = torch.einsum("...i,ji->...j", x, w) + b
    return x * torch.einsum("...j,ji->...i", r / stab(z), w)


def norm_add(a: torch.Tensor, b: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s = stab(a + b)
    return a * r / s, b * r / s


def layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """LRP-0 through y = z w / std + b, then the identity rule on the centring z = x - mean(x)."""
    n = x.shape[-1]
    std = (x.var(-1, keepdim=True, correction=0) + 1e-5).sqrt()
    centre = torch.eye(n, dtype=x.dtype) - 1.0 / n
    z = torch.einsum("...i,ij->...j", x, centre)
    y = z * w / std + b
    r_z = (z * w / std) * r / y
    return torch.einsum("...i,ij,...j->...i", x, centre, r_z / z)


def softmax_rule(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    s = x.softmax(-1)
    return x * (r - s * r.sum(-1, keepdim=True))


def matmul_rule(a: torch.Tensor, b: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    o = torch.einsum("...ik,...kj->...ij", a, b)
    terms = torch.einsum("...ik,...kj->...ikj", a, b) * (r / o)[..., :, None, :]
    return 0.5 * terms.sum(-1), 0.5 * terms.sum(-3)


def reference_attnlrp(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    k = model.patch_embed.kernel_size[0]
    patches = F.unfold(x, k, stride=k).transpose(1, 2)  # (N, P, C k k)
    w_pe = model.patch_embed.weight.reshape(model.patch_embed.out_channels, -1)
    emb = torch.einsum("npi,di->npd", patches, w_pe) + model.patch_embed.bias
    n = x.shape[0]
    tokens = torch.cat([model.cls_token.expand(n, -1, -1), emb], 1)
    pos = model.pos_embed.expand_as(tokens)
    h = tokens + pos
    saved = []
    for blk in model.blocks:
        a_in = F.layer_norm(h, (h.shape[-1],), blk.norm1.weight, blk.norm1.bias)
        at = blk.attn
        t, d = h.shape[1], h.shape[2]
        heads = at.heads
        qkv = torch.einsum("ntd,ed->nte", a_in, at.qkv.weight) + at.qkv.bias
        q, kk, v = qkv.reshape(n, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        s = torch.einsum("nhte,nhue->nhtu", q, kk) * at.scale
        attn = s.softmax(-1)
        o = torch.einsum("nhtu,nhue->nhte", attn, v)
        o_flat = o.transpose(1, 2).reshape(n, t, d)
        a_out = torch.einsum("ntd,ed->nte", o_flat, at.proj.weight) + at.proj.bias
        h1 = h + a_out
        m_in = F.layer_norm(h1, (d,), blk.norm2.weight, blk.norm2.bias)
        fc1, fc2 = blk.mlp[0], blk.mlp[2]
        u = torch.einsum("ntd,ed->nte", m_in, fc1.weight) + fc1.bias
        g = F.gelu(u)
        m_out = torch.einsum("nte,de->ntd", g, fc2.weight) + fc2.bias
        saved.append((h, a_in, q, kk, v, s, attn, o_flat, a_out, h1, m_in, g, m_out))
        h = h1 + m_out
    final = F.layer_norm(h, (h.shape[-1],), model.norm.weight, model.norm.bias)
    logits = torch.einsum("nd,cd->nc", final[:, 0], model.head.weight) + model.head.bias
    # --- relevance, top down
    r_logits = torch.zeros_like(logits).scatter(1, target[:, None], logits.gather(1, target[:, None]))
    r_cls = eps_linear(final[:, 0], model.head.weight, model.head.bias, r_logits)
    r_final = torch.zeros_like(final)
    r_final[:, 0] = r_cls
    r_h = layer_norm(h, model.norm.weight, model.norm.bias, r_final)
    for blk, (h0, a_in, q, kk, v, s, attn, o_flat, a_out, h1, m_in, g, m_out) in zip(
        reversed(model.blocks), reversed(saved), strict=True
    ):
        fc1, fc2 = blk.mlp[0], blk.mlp[2]
        r_h1, r_mout = norm_add(h1, m_out, r_h)
        r_g = eps_linear(g, fc2.weight, fc2.bias, r_mout)  # GELU: identity rule, R(u) = R(g)
        r_min = eps_linear(m_in, fc1.weight, fc1.bias, r_g)
        r_h1 = r_h1 + layer_norm(h1, blk.norm2.weight, blk.norm2.bias, r_min)
        r_h0, r_aout = norm_add(h0, a_out, r_h1)
        at = blk.attn
        n, t, d = h0.shape
        r_oflat = eps_linear(o_flat, at.proj.weight, at.proj.bias, r_aout)
        r_o = r_oflat.reshape(n, t, at.heads, -1).transpose(1, 2)
        r_attn, r_v = matmul_rule(attn, v, r_o)
        r_s = softmax_rule(s, r_attn)  # the scale is a constant factor: relevance passes
        r_q, r_kt = matmul_rule(q, kk.transpose(-1, -2) * at.scale, r_s)
        r_qkv = torch.stack([r_q, r_kt.transpose(-1, -2), r_v]).permute(1, 3, 0, 2, 4).reshape(n, t, 3 * d)
        r_ain = eps_linear(a_in, at.qkv.weight, at.qkv.bias, r_qkv)
        r_h = r_h0 + layer_norm(h0, blk.norm1.weight, blk.norm1.bias, r_ain)
    r_tokens, _ = norm_add(tokens, pos, r_h)  # the position embedding's share is absorbed
    r_patches = eps_linear(patches, w_pe, model.patch_embed.bias, r_tokens[:, 1:])  # class token: constant
    return F.fold(r_patches.transpose(1, 2), x.shape[-2:], k, stride=k)


@pytest.mark.parametrize("seed", [0, 1])
def test_attnlrp_equals_the_papers_equations_on_a_tiny_vit(seed: int) -> None:
    torch.manual_seed(seed)
    model = vit2d(in_channels=2, num_classes=3, image_size=16, patch_size=4, dim=16, depth=2, heads=2)
    model = model.double().eval()
    with torch.no_grad():
        model.cls_token.normal_()
    x = torch.randn(2, 2, 16, 16, dtype=torch.float64)
    target = torch.tensor([0, 2])
    with torch.no_grad():
        ref = reference_attnlrp(model, x, target)
    ours = medlrp.LRP(model, "attnlrp").relevance(x, target)
    err = (ours - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)
    assert (err < 1e-8).all(), err
