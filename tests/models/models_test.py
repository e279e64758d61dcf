"""Tests for medclr.models: shapes, shared encoder paths, norms, size checks.

Also pins the canonical `unet2d-32` architecture (docs/protocol.md,
section 2) by its encoder parameter count and forward FLOPs, both derived by
hand from the layer formula.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from medclr.models import encoder as encoder_lib
from medclr.models import heads
from medclr.models import unet
import medclr.models

TINY = (8, 16, 32)
UNET2D_32 = (32, 64, 128, 256, 512)


def _tree_shapes(module: nnx.Module) -> dict:
  return jax.tree.map(lambda a: a.shape,
                      nnx.to_pure_dict(nnx.state(module, nnx.Param)))


@pytest.mark.parametrize('norm', ['batch', 'group'])
def test_encoder_returns_every_level_shallow_to_deep(norm):
  model = encoder_lib.Encoder(3, TINY, norm, rngs=nnx.Rngs(0))
  features = model(jnp.ones((2, 16, 16, 3)), train=True)
  assert [f.shape for f in features] == [
      (2, 16, 16, 8), (2, 8, 8, 16), (2, 4, 4, 32)]


@pytest.mark.parametrize('norm', ['batch', 'group'])
@pytest.mark.parametrize('num_classes', [1, 3])
def test_unet_logits_have_input_resolution(norm, num_classes):
  model = unet.UNet(1, TINY, norm, num_classes, rngs=nnx.Rngs(0))
  logits = model(jnp.ones((2, 16, 24, 1)), train=False)
  assert logits.shape == (2, 16, 24, num_classes)
  assert logits.dtype == jnp.float32


@pytest.mark.parametrize('norm', ['batch', 'group'])
def test_contrastive_model_returns_projection_and_pooled_features(norm):
  model = heads.ContrastiveModel(3, TINY, norm, hidden_dim=24, out_dim=12,
                                 rngs=nnx.Rngs(0))
  images = jax.random.uniform(jax.random.key(1), (4, 16, 16, 3))
  z, h = model(images, train=False)
  assert z.shape == (4, 12)
  assert h.shape == (4, TINY[-1])
  deepest = model.encoder(images, train=False)[-1]
  np.testing.assert_allclose(h, deepest.mean(axis=(1, 2)), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(z, model.projector(h), rtol=1e-5, atol=1e-6)


def test_unet2d_32_forward_at_32px():
  model = unet.UNet(3, UNET2D_32, 'batch', rngs=nnx.Rngs(0))
  forward = nnx.jit(lambda m, x: m(x, train=False))
  logits = forward(model, jnp.ones((1, 32, 32, 3)))
  assert logits.shape == (1, 32, 32, 1)
  assert bool(jnp.all(jnp.isfinite(logits)))


@pytest.mark.parametrize('norm', ['batch', 'group'])
def test_pretrain_and_unet_encoders_have_identical_param_trees(norm):
  pretrain = heads.ContrastiveModel(3, TINY, norm, rngs=nnx.Rngs(0))
  segment = unet.UNet(3, TINY, norm, num_classes=2, rngs=nnx.Rngs(1))
  pretrain_tree = _tree_shapes(pretrain.encoder)
  assert pretrain_tree == _tree_shapes(segment.encoder)
  assert set(pretrain_tree) == {'level0', 'level1', 'level2'}
  assert set(pretrain_tree['level0']) == {'conv0', 'norm0', 'conv1', 'norm1'}
  # String keys only: Orbax would turn integer keys into strings on save.
  paths = [path for path, _ in jax.tree_util.tree_leaves_with_path(
      pretrain_tree, is_leaf=lambda x: isinstance(x, tuple))]
  assert all(isinstance(key.key, str) for path in paths for key in path)


def test_conv_bias_is_dropped_only_before_batch_norm():
  batch = _tree_shapes(encoder_lib.Encoder(3, TINY, 'batch', rngs=nnx.Rngs(0)))
  group = _tree_shapes(encoder_lib.Encoder(3, TINY, 'group', rngs=nnx.Rngs(0)))
  assert set(batch['level1']['conv0']) == {'kernel'}
  assert set(group['level1']['conv0']) == {'kernel', 'bias'}


@pytest.mark.parametrize('channels, groups', [(8, 8), (32, 8), (4, 4), (12, 6),
                                              (5, 5), (7, 7), (9, 3)])
def test_group_norm_uses_largest_divisor_up_to_8(channels, groups):
  assert encoder_lib.num_norm_groups(channels) == groups
  layer = encoder_lib.make_norm(channels, 'group', dtype=None,
                                rngs=nnx.Rngs(0))
  assert layer.num_groups == groups


def test_unknown_norm_is_rejected_with_its_name():
  with pytest.raises(ValueError, match="'layer'"):
    encoder_lib.Encoder(3, TINY, 'layer', rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="'instance'"):
    unet.UNet(3, TINY, 'instance', rngs=nnx.Rngs(0))


def test_unet_rejects_size_not_divisible_by_pooling():
  model = unet.UNet(1, TINY, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r'divisible by 4.*\(1, 18, 16, 1\)'):
    model(jnp.ones((1, 18, 16, 1)), train=False)


def test_encoder_rejects_wrong_channel_count():
  model = encoder_lib.Encoder(3, TINY, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r'3 channels.*\(1, 16, 16, 1\)'):
    model(jnp.ones((1, 16, 16, 1)), train=False)


def test_batch_norm_statistics_update_in_train_mode_only():
  model = unet.UNet(1, TINY, 'batch', rngs=nnx.Rngs(0))
  images = jax.random.uniform(jax.random.key(0), (2, 16, 16, 1))
  initial = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))

  model(images, train=False)
  after_eval = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
  jax.tree.map(np.testing.assert_array_equal, initial, after_eval)

  model(images, train=True)
  after_train = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
  mean_before = initial['encoder']['level0']['norm0']['mean']
  mean_after = after_train['encoder']['level0']['norm0']['mean']
  assert not np.allclose(mean_before, mean_after)
  # Momentum 0.9: new = 0.9 * old + 0.1 * batch mean, from old = 0.
  conv_out = model.encoder.level0.conv0(images)
  np.testing.assert_allclose(mean_after, 0.1 * conv_out.mean(axis=(0, 1, 2)),
                             rtol=1e-4, atol=1e-6)


def test_unet2d_32_encoder_param_count_matches_layer_formula():
  abstract = nnx.eval_shape(
      lambda: encoder_lib.Encoder(3, UNET2D_32, 'batch', rngs=nnx.Rngs(0)))
  counted = sum(p.size for p in jax.tree.leaves(
      nnx.to_pure_dict(nnx.state(abstract, nnx.Param))))
  # Per level: two bias-free 3x3 convs (9 * c_in * c_out each) and two
  # BatchNorms (scale + bias = 2 * c_out each).
  expected = 0
  c_in = 3
  for c_out in UNET2D_32:
    expected += 9 * c_in * c_out + 2 * c_out + 9 * c_out * c_out + 2 * c_out
    c_in = c_out
  assert expected == 4_714_208
  assert counted == expected


def _conv_layers(encoder, height, width):
  """(kernel shape, output H, output W) of every conv, read from the model."""
  params = nnx.to_pure_dict(nnx.state(encoder, nnx.Param))
  layers = []
  for index in range(len(encoder.widths)):
    level = params[f'level{index}']
    for conv in ('conv0', 'conv1'):
      layers.append((level[conv]['kernel'].shape, height >> index,
                     width >> index))
  return layers


def test_unet2d_32_encoder_forward_flops_at_128px():
  """Forward FLOPs = 2 * MACs of the 3x3 convs (norm, ReLU, pool excluded).

  The conventional count (every kernel tap of every output pixel, as
  fvcore/ptflops count it) is the ~2.14 GFLOP of docs/protocol.md section 2.
  XLA's own count skips the taps that fall on SAME zero padding, so it is
  checked against that exact count instead.
  """
  encoder = nnx.eval_shape(
      lambda: encoder_lib.Encoder(3, UNET2D_32, 'batch', rngs=nnx.Rngs(0)))
  layers = _conv_layers(encoder, 128, 128)
  conventional = sum(2 * h * w * int(np.prod(kernel))
                     for kernel, h, w in layers)
  assert conventional == pytest.approx(2.14e9, rel=0.05)
  assert encoder_lib.encoder_forward_flops(3, UNET2D_32, 128, 128) == (
      conventional)

  # With zero padding, an output row/column on the border sees 2 of 3 taps:
  # (3H - 2) in-image taps along H per output column, likewise along W.
  padding_exact = sum(
      2 * (3 * h - 2) * (3 * w - 2) * kernel[2] * kernel[3]
      for kernel, h, w in layers)
  graphdef, state = nnx.split(encoder)
  lowered = jax.jit(
      lambda s, x: nnx.merge(graphdef, s)(x, train=False)).lower(
          state, jax.ShapeDtypeStruct((1, 128, 128, 3), jnp.float32))
  xla_flops = lowered.cost_analysis()['flops']
  # The small remainder is XLA counting BatchNorm/ReLU elementwise work.
  assert xla_flops == pytest.approx(padding_exact, rel=0.02)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = unet.UNet(1, TINY, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  features = model.encoder(jnp.ones((1, 16, 16, 1)), train=False)
  assert features[0].dtype == jnp.bfloat16
  assert model(jnp.ones((1, 16, 16, 1)), train=False).dtype == jnp.float32
  params = jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  assert all(p.dtype == jnp.float32 for p in params)


def test_unet_under_explicit_mesh_matches_single_device():
  """Batch-sharded forward (train-mode BN uses global-batch statistics)."""
  images = jax.random.uniform(jax.random.key(0), (8, 16, 16, 1))
  model = unet.UNet(1, TINY, rngs=nnx.Rngs(0))
  expected = nnx.clone(model)(images, train=True)
  mesh = jax.make_mesh((8,), ('data',),
                       axis_types=(jax.sharding.AxisType.Explicit,))
  with jax.set_mesh(mesh):
    sharded = jax.device_put(images, jax.P('data'))
    logits = nnx.jit(lambda m, x: m(x, train=True))(model, sharded)
    assert logits.sharding.spec[0] == 'data'
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


def test_model_builders_read_config():
  model_cfg = ml_collections.ConfigDict(dict(
      medclr.models.MODEL_PRESETS['tiny'], in_channels=3, num_classes=2))
  head_cfg = ml_collections.ConfigDict(dict(hidden_dim=20, out_dim=10))
  segment = medclr.models.make_unet(model_cfg, nnx.Rngs(0))
  pretrain = medclr.models.make_contrastive(model_cfg, head_cfg, nnx.Rngs(0))
  assert segment(jnp.ones((1, 8, 8, 3)), train=False).shape == (1, 8, 8, 2)
  assert pretrain(jnp.ones((2, 8, 8, 3)), train=False)[0].shape == (2, 10)
  assert _tree_shapes(segment.encoder) == _tree_shapes(pretrain.encoder)


def test_presets_define_the_documented_widths():
  presets = medclr.models.MODEL_PRESETS
  assert presets['unet2d-32']['widths'] == UNET2D_32
  assert presets['unet2d-16']['widths'] == (16, 32, 64, 128, 256)
  assert presets['tiny']['widths'] == TINY


@pytest.mark.parametrize('field, value, message', [
    ('widths', None, "missing required field 'widths'"),
    ('widths', (8, 0), 'positive ints'),
    ('norm', 'layer', "'layer'"),
    ('dtype', 'float16', "'float16'"),
])
def test_model_kwargs_names_the_bad_field(field, value, message):
  model_cfg = dict(widths=TINY, norm='batch', in_channels=1)
  model_cfg[field] = value
  with pytest.raises(ValueError, match=message):
    medclr.models.model_kwargs(model_cfg)


@pytest.mark.parametrize('shape', [(2, 8, 8, 3), (2, 9, 7, 3)])
def test_max_pool_2x2_matches_reduce_window_pool_and_its_gradient(shape):
  """Same values and, on tie-free inputs, the same gradient as nnx.max_pool."""
  x = jax.random.normal(jax.random.key(0), shape)  # continuous: no ties
  reference = lambda v: nnx.max_pool(v, (2, 2), strides=(2, 2))
  np.testing.assert_array_equal(encoder_lib.max_pool_2x2(x), reference(x))
  cotangent = jax.random.normal(jax.random.key(1), reference(x).shape)
  grad = jax.vjp(encoder_lib.max_pool_2x2, x)[1](cotangent)[0]
  np.testing.assert_array_equal(grad, jax.vjp(reference, x)[1](cotangent)[0])


def test_max_pool_2x2_keeps_batch_sharding_under_explicit_mesh():
  x = jax.random.normal(jax.random.key(0), (8, 4, 4, 2))
  mesh = jax.make_mesh((8,), ('data',),
                       axis_types=(jax.sharding.AxisType.Explicit,))
  with jax.set_mesh(mesh):
    pooled = jax.jit(encoder_lib.max_pool_2x2)(jax.device_put(x, jax.P('data')))
    assert pooled.sharding.spec[0] == 'data'
  np.testing.assert_array_equal(pooled, encoder_lib.max_pool_2x2(x))


@pytest.mark.parametrize('dtype', [None, jnp.bfloat16])
def test_upsample_2x_matches_conv_transpose_and_its_gradients(dtype):
  """The matmul form gives flax's ConvTranspose values and gradients."""
  conv = nnx.ConvTranspose(5, 7, (2, 2), strides=(2, 2), padding='VALID',
                           dtype=dtype, rngs=nnx.Rngs(0))
  conv.bias[...] = jax.random.normal(jax.random.key(2), (7,))  # not zeros
  x = jax.random.normal(jax.random.key(1), (2, 3, 4, 5))
  out = unet.upsample_2x(conv, x)
  assert out.shape == (2, 6, 8, 7) and out.dtype == conv(x).dtype
  tol = 1e-5 if dtype is None else 2e-2
  np.testing.assert_allclose(np.float32(out), np.float32(conv(x)),
                             rtol=tol, atol=tol)
  if dtype is None:
    def grads(fn):
      loss = lambda m, v: jnp.sum(jnp.sin(fn(m, v)))
      return jax.tree.leaves(nnx.grad(loss, argnums=(0, 1))(conv, x))
    got = grads(unet.upsample_2x)
    want = grads(lambda m, v: m(v))
    assert len(got) == 3  # bias, kernel, input
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_upsample_2x_keeps_batch_sharding_under_explicit_mesh():
  conv = nnx.ConvTranspose(2, 3, (2, 2), strides=(2, 2), padding='VALID',
                           rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (8, 4, 4, 2))
  mesh = jax.make_mesh((8,), ('data',),
                       axis_types=(jax.sharding.AxisType.Explicit,))
  with jax.set_mesh(mesh):
    up = nnx.jit(unet.upsample_2x)(conv, jax.device_put(x, jax.P('data')))
    assert up.sharding.spec[0] == 'data'
  np.testing.assert_allclose(up, conv(x), rtol=1e-5, atol=1e-6)


def _batch_norm_pair(channels=5):
  layer = encoder_lib.make_norm(channels, 'batch', dtype=None,
                                rngs=nnx.Rngs(0))
  layer.scale[...] = jax.random.uniform(jax.random.key(3), (channels,)) + 0.5
  layer.bias[...] = jax.random.normal(jax.random.key(4), (channels,))
  return layer, nnx.clone(layer)


def test_matmul_batch_norm_matches_nnx_batch_norm_values_grads_and_stats():
  ours, theirs = _batch_norm_pair()
  x = 3.0 + 2.0 * jax.random.normal(jax.random.key(1), (4, 6, 6, 5))
  def grads(layer, fn):
    loss = lambda m, v: jnp.sum(jnp.sin(fn(m, v)) * jnp.arange(5.0))
    return nnx.grad(loss, argnums=(0, 1))(layer, x)
  got = grads(ours, lambda m, v: encoder_lib.apply_norm(m, v, train=True))
  want = grads(theirs, lambda m, v: m(v, use_running_average=False))
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(
      encoder_lib.apply_norm(ours, x, train=True),
      theirs(x, use_running_average=False), rtol=1e-5, atol=1e-5)
  for name in ('mean', 'var'):  # running averages after the same 2 updates
    np.testing.assert_allclose(getattr(ours, name)[...],
                               getattr(theirs, name)[...], rtol=1e-5)
  assert not np.allclose(ours.mean[...], 0.0)


def test_matmul_batch_norm_uses_global_batch_under_explicit_mesh():
  ours, theirs = _batch_norm_pair()
  x = jax.random.normal(jax.random.key(1), (8, 3, 3, 5)) * jnp.arange(
      8.0)[:, None, None, None]  # per-example scales: local stats differ
  mesh = jax.make_mesh((8,), ('data',),
                       axis_types=(jax.sharding.AxisType.Explicit,))
  loss = lambda m, v: jnp.sum(
      jnp.sin(encoder_lib.apply_norm(m, v, train=True)))
  with jax.set_mesh(mesh):
    sharded = jax.device_put(x, jax.P('data'))
    grads = nnx.jit(nnx.grad(loss, argnums=(0, 1)))(ours, sharded)
    assert grads[1].sharding.spec[0] == 'data'
  want = nnx.grad(lambda m, v: jnp.sum(jnp.sin(
      m(v, use_running_average=False))), argnums=(0, 1))(theirs, x)
  for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(ours.var[...], theirs.var[...], rtol=1e-5)


def test_matmul_batch_norm_is_accurate_when_the_mean_dwarfs_the_spread():
  # 16k rows with |mean| = 100 std, as raw conv outputs can have: a one-pass
  # variance, E[x^2] - E[x]^2, loses most of its digits here in float32.
  layer, _ = _batch_norm_pair(4)
  x = 100.0 + jax.random.normal(jax.random.key(5), (16, 32, 32, 4))
  out = jax.jit(lambda v: encoder_lib.apply_norm(nnx.clone(layer), v,
                                                 train=True))(x)
  x64 = np.asarray(x, np.float64)
  mean, var = x64.mean((0, 1, 2)), x64.var((0, 1, 2))
  want = ((x64 - mean) / np.sqrt(var + layer.epsilon)
          * np.asarray(layer.scale[...]) + np.asarray(layer.bias[...]))
  np.testing.assert_allclose(out, want, atol=2e-3)
