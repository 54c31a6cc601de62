"""An isotropic model (ViT) is cut into equal groups of blocks, or refused with what would work."""

import pytest

import adnify
from adnify.errors import AdnifyError

VIT = dict(img_size=32, patch_size=8, embed_dim=32, num_heads=2, num_classes=10)


@pytest.mark.parametrize("depth, groups, blocks_per_stage", [(8, 4, 2), (12, 4, 3), (12, 3, 4), (6, 4, 2)])
def test_a_vit_is_cut_into_equal_groups_the_last_block_of_each_skippable(depth, groups, blocks_per_stage):
    net = adnify.convert("vit_tiny_patch16_224", depth=depth, groups=groups, **VIT)
    for stage in net.plan.stages:
        assert len(stage.mandatory) + len(stage.skippable) == blocks_per_stage
    assert net.num_stages == depth // blocks_per_stage


@pytest.mark.parametrize("depth, groups, works", [(10, 4, "groups 2, 5"), (7, 2, "groups 1"), (12, 5, "groups 2, 3, 4, 6")])
def test_a_depth_the_groups_do_not_divide_is_one_line_naming_what_works(depth, groups, works):
    with pytest.raises(AdnifyError) as e:
        adnify.convert("vit_tiny_patch16_224", depth=depth, groups=groups, **VIT)
    message = str(e.value)
    assert "\n" not in message and f"{depth} blocks" in message and f"{groups} groups" in message and works in message
