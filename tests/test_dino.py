"""DINO: the teacher sees the global crops, the student every crop; the head, centre and
schedules follow the paper's code; a ViT takes the local crops' size too."""

import pytest
import pytorch_lightning as pl
import torch
from lightly.utils.scheduler import cosine_schedule

from ssl_zoo.data.datamodule import ImageDataModule

from ssl_zoo.errors import RecipeError
from ssl_zoo.losses import centred_teacher, dino_loss, sinkhorn_teacher
from ssl_zoo.methods.dino import DINO

# 2 global crops at 32 px and 3 local ones at 16 px, as the paper's 2 x 224 + 8 x 96 scaled down.
MULTI_CROP = {
    "backbone": "convnet4", "augment.blur_p": "[0.5, 0.5]",  # the two-view keys at their defaults
    "augment.views": "[{count: 2, crop_scale: [0.4, 1.0]}, {count: 3, size: 16, crop_scale: [0.1, 0.4]}]",
}


def rows_seen(network) -> list:
    """The batch sizes ``network``'s first layer sees, forward after forward."""
    rows = []
    first = next(m for m in network.modules() if isinstance(m, torch.nn.Conv2d))
    first.register_forward_hook(lambda module, inputs, output: rows.append(tuple(inputs[0].shape[::2])))
    return rows


def multi_crop_batch(model, images: int = 8):
    views = model.augment.views_by_size(torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8))
    return {"views_by_size": views, "views": views[0]}


def test_the_teacher_sees_the_global_crops_and_the_student_every_crop(make_recipe):
    torch.manual_seed(0)
    model = DINO(make_recipe("dino", **MULTI_CROP))
    model.log = lambda *args, **kwargs: None
    batch = multi_crop_batch(model)
    assert [tuple(v.shape) for v in batch["views_by_size"]] == [(2, 8, 3, 32, 32), (3, 8, 3, 16, 16)]
    student, teacher = rows_seen(model.backbone), rows_seen(model.target_backbone)
    center_before = model.center.value.clone()
    loss = model.training_step(batch, 0)
    assert student == [(16, 32), (24, 16)] and teacher == [(16, 32)]  # (rows, side): per size, one batch

    # The same loss by hand: every view through the student, the global ones through the teacher.
    with torch.no_grad():
        global_views, local_views = batch["views_by_size"]
        s = torch.cat([model.projection_head(model.backbone(v.flatten(0, 1))) for v in (global_views, local_views)])
        t = model.target_projection_head(model.target_backbone(global_views.flatten(0, 1)))
        expected = dino_loss(centred_teacher(t.view(2, 8, -1), center_before, 0.04), s.view(5, 8, -1), 0.1)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-4, atol=1e-5)
    # The centre moved toward the teacher's mean output, by the centre momentum.
    torch.testing.assert_close(model.center.value, 0.9 * center_before + 0.1 * t.mean(dim=0, keepdim=True)[None])


def test_sinkhorn_knopp_centering_takes_the_centres_place(make_recipe):
    # DINOv2's targets: balanced over the batch itself, so the method keeps no centre.
    torch.manual_seed(0)
    model = DINO(make_recipe("dino", **{**MULTI_CROP, "dino.centering": "sinkhorn_knopp"}))
    model.log = lambda *args, **kwargs: None
    batch = multi_crop_batch(model)
    assert model.center is None and "center.value" not in model.state_dict()
    loss = model.training_step(batch, 0)
    with torch.no_grad():
        global_views, local_views = batch["views_by_size"]
        s = torch.cat([model.projection_head(model.backbone(v.flatten(0, 1))) for v in (global_views, local_views)])
        t = model.target_projection_head(model.target_backbone(global_views.flatten(0, 1)))
        expected = dino_loss(sinkhorn_teacher(t.view(2, 8, -1), 0.04), s.view(5, 8, -1), 0.1)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-4, atol=1e-5)


def test_two_global_crops_alone_train_too(make_recipe):
    model = DINO(make_recipe("dino", backbone="convnet4"))  # the two-view form: two global crops
    model.log = lambda *args, **kwargs: None
    batch = multi_crop_batch(model)
    assert len(batch["views_by_size"]) == 1 and torch.isfinite(model.training_step(batch, 0))


def test_the_head_is_lightlys_with_a_weight_normalised_last_layer(make_recipe):
    model = DINO(make_recipe("dino", backbone="convnet4", **{"dino.bottleneck_dim": 16}))
    last = model.projection_head.last_layer
    assert last.weight_v.shape == (64, 16) and torch.all(last.weight_g == 1)  # output_dim 64 (tiny recipe)
    assert not last.weight_g.requires_grad and last.weight_v.requires_grad  # norm_last_layer: the norm stays 1
    assert all(not p.requires_grad for p in model.target_projection_head.parameters())
    unnormalised = DINO(make_recipe("dino", backbone="convnet4", **{"dino.norm_last_layer": False}))
    assert unnormalised.projection_head.last_layer.weight_g.requires_grad


def test_schedules_follow_main_dino(make_recipe):
    recipe = make_recipe("dino", backbone="convnet4", **{
        "dino.warmup_teacher_temp": 0.02, "dino.teacher_temp": 0.06, "dino.warmup_teacher_temp_epochs": 2,
        "optim.weight_decay": 0.04, "dino.weight_decay_end": 0.4,
    })
    model = DINO(recipe)

    class FakeTrainer:  # 4 steps an epoch, 20 steps in all, step 6
        global_step, estimated_stepping_batches, num_training_batches, accumulate_grad_batches = 6, 20, 4, 1
        world_size = 1
        optimizers = [torch.optim.AdamW([{"name": "ssl", "params": [torch.nn.Parameter(torch.zeros(1))]},
                                         {"name": "ssl_no_weight_decay", "params": [torch.nn.Parameter(torch.zeros(1))],
                                          "weight_decay": 0.0}])]

    model._trainer = FakeTrainer()
    # The teacher's temperature rises linearly over 2 epochs (8 steps), then stays.
    assert model.teacher_temp() == pytest.approx(0.02 + 6 / 8 * 0.04)
    FakeTrainer.global_step = 12
    assert model.teacher_temp() == pytest.approx(0.06)
    # Weight decay rises on a cosine from optim.weight_decay to weight_decay_end; biases and norms keep none.
    model.on_train_batch_start(None, 0)
    decayed, free = FakeTrainer.optimizers[0].param_groups
    assert decayed["weight_decay"] == pytest.approx(cosine_schedule(12, 20, 0.04, 0.4)) and free["weight_decay"] == 0.0


def test_gradients_are_clipped_per_parameter_and_the_last_layer_frozen_in_the_first_epoch(make_recipe):
    model = DINO(make_recipe("dino", backbone="convnet4", **{"dino.clip_grad": 0.5, "dino.freeze_last_layer": 1}))

    class FakeTrainer:
        current_epoch = 0

    for p in model.parameters():
        p.grad = 10 * torch.ones_like(p) if p.requires_grad else None
    small = next(model.backbone.parameters())
    small.grad = torch.full_like(small, 1e-4)  # a norm under the limit stays as it is
    before = small.grad.clone()
    model._trainer = FakeTrainer()
    model.on_before_optimizer_step(None)
    torch.testing.assert_close(small.grad, before)
    for module in (model.backbone, model.projection_head.layers):
        for p in module.parameters():
            assert p.grad.norm() <= 0.5 + 1e-4
    assert all(p.grad is None for p in model.projection_head.last_layer.parameters())  # frozen in epoch 0
    FakeTrainer.current_epoch = 1
    for p in model.projection_head.last_layer.parameters():
        p.grad = torch.ones_like(p) if p.requires_grad else None
    model.on_before_optimizer_step(None)
    assert model.projection_head.last_layer.weight_v.grad is not None


def test_a_timm_vit_takes_the_local_crops_size(make_recipe):
    pytest.importorskip("timm")
    recipe = make_recipe("dino", **{**MULTI_CROP, "backbone": "timm:vit_tiny_patch16_224"})
    model = DINO(recipe)
    model.log = lambda *args, **kwargs: None
    assert torch.isfinite(model.training_step(multi_crop_batch(model, images=2), 0))
    assert model.backbone(torch.zeros(1, 3, 32, 32)).shape == (1, 192)  # and still the global size


def test_a_vit_that_takes_one_size_is_refused_with_local_crops(make_recipe):
    with pytest.raises(RecipeError, match="takes images of one size only"):
        DINO(make_recipe("dino", **{**MULTI_CROP, "backbone": "vit_tiny_p4"}))


def test_the_student_fits_a_fixed_teacher(make_recipe):
    # What tests/test_methods.py's loss-drop test checks of the other methods, with the
    # teacher and its centre held still (momenta 1): training lowers the loss. With both
    # moving, DINO's loss first rises toward ln K (see LOSS_FALLS_IN_40_STEPS there).
    recipe = make_recipe("dino", **{**MULTI_CROP, "data.num_images": 32, "trainer.max_epochs": 20,
                                    "dino.base_momentum": 1.0, "dino.center_momentum": 1.0})
    torch.manual_seed(0)
    datamodule = ImageDataModule.for_recipe(recipe)
    model = DINO(recipe, num_classes=datamodule.num_classes)
    teacher = [p.clone() for p in model.target_projection_head.parameters()]
    losses = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(trainer.callback_metrics["train/loss"]))

    pl.Trainer(max_steps=20, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
               callbacks=[Record()]).fit(model, datamodule=datamodule)
    assert all(torch.equal(a, b) for a, b in zip(teacher, model.target_projection_head.parameters()))
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert len(losses) == 20 and last < 0.9 * first, f"loss {first:.3f} -> {last:.3f}"
