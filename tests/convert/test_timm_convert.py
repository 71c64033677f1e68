"""timm ResNet / ViT (randomly initialised, nothing downloaded) -> sslcore trunks with equal outputs."""

import pytest
import torch
from timm.models.resnet import BasicBlock, ResNet as TimmResNet
from timm.models.vision_transformer import VisionTransformer as TimmViT

from sslcore.convert.timm import convert_timm_to_vissl, infer_vit_settings
from sslcore.convert.torchvision import trunk_settings_from_checkpoint
from sslcore.models.trunks.resnet import ResNeXt
from sslcore.models.trunks.vision_transformer import VisionTransformer


def _trunk(checkpoint):
    return checkpoint["classy_state_dict"]["base_model"]["model"]["trunk"]


def test_timm_vit_becomes_the_sslcore_vit():
    torch.manual_seed(0)
    timm_vit = TimmViT(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3, mlp_ratio=2.0,
                       num_classes=5, qkv_bias=True).eval()
    checkpoint = convert_timm_to_vissl(timm_vit)
    settings = checkpoint["config"]["MODEL"]["TRUNK"]["VISION_TRANSFORMERS"]
    assert settings == {"IMAGE_SIZE": 32, "PATCH_SIZE": 8, "HIDDEN_DIM": 48, "NUM_LAYERS": 3,
                        "NUM_HEADS": 3, "MLP_DIM": 96, "QKV_BIAS": True}
    ours = VisionTransformer(image_size=32, patch_size=8, hidden_dim=48, num_layers=3, num_heads=3,
                             mlp_dim=96, qkv_bias=True).eval()
    ours.load_state_dict(_trunk(checkpoint), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = timm_vit.forward_features(x)  # (B, 1 + 16, D) after the final LayerNorm
        cls, blk = ours(x, out_feat_keys=["lastCLS", "lastBLK"])
    torch.testing.assert_close(cls, tokens[:, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(blk, tokens, atol=1e-5, rtol=1e-5)
    # from a bare state dict the heads must be given (they are not in the weights)
    assert infer_vit_settings(timm_vit.state_dict(), num_heads=3)["NUM_HEADS"] == 3


def test_unsupported_timm_vit_is_refused():
    layer_scale = TimmViT(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, init_values=1e-5)
    with pytest.raises(ValueError, match="does not match"):
        convert_timm_to_vissl(layer_scale)


def test_timm_resnet_becomes_the_sslcore_resnet():
    torch.manual_seed(0)
    timm_resnet = TimmResNet(block=BasicBlock, layers=[2, 2, 2, 2], num_classes=3).eval()
    checkpoint = convert_timm_to_vissl(timm_resnet.state_dict())
    settings = trunk_settings_from_checkpoint(checkpoint)
    assert settings["depth"] == 18 and settings["stem"] == "standard"
    ours = ResNeXt(depth=18).eval()
    ours.load_state_dict(_trunk(checkpoint), strict=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], timm_resnet.forward_head(timm_resnet.forward_features(x),
                                                                        pre_logits=True),
                                   atol=1e-5, rtol=1e-5)
