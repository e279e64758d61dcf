"""SimCLR (Chen et al. 2020): NT-Xent over the global batch.

Method page: docs/methods/simclr.md.

Both views go through the encoder in one forward pass, so BatchNorm sees the
statistics of all 2N views of the global batch (SimCLR's `global_bn=True`).
"""
import jax.numpy as jnp

from medclr import methods
from medclr import models
from medclr.evaluate import guard
from medclr.methods import losses


class SimCLR(methods.Method):
  """Encoder + projection MLP trained with NT-Xent."""

  name = "simclr"

  def make_model(self, rngs):
    return models.make_contrastive(self.config.model, self.config.head, rngs)

  def loss(self, model, aux, views, step):
    del step
    view1, view2 = views
    b = view1.shape[0]
    # (B, 2, ...) -> (2B, ...) keeps each device's examples on that device
    # (no cross-device shuffle) while BatchNorm sees both views.
    stacked = jnp.stack([view1, view2], axis=1).reshape(
        (2 * b,) + view1.shape[1:])
    z, _ = model(stacked, train=True)
    z = z.reshape((b, 2) + z.shape[1:])
    z1, z2 = z[:, 0], z[:, 1]
    loss = losses.nt_xent(z1, z2, self.config.loss.temperature)
    return loss, (aux, {"embedding_std": losses.embedding_std(z1),
                        "loss_chance": guard.nt_xent_chance(2 * b)})
