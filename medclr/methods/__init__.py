"""Pretraining methods as plug-ins of one train step, found by name.

May import: medclr infrastructure, data, augment, models, evaluate (guard).

A method is the module medclr/methods/<name>.py holding one `Method`
subclass that declares `name = "<name>"` (the `config.method` of its
configs); its page is docs/methods/<name>.md. `method_class` imports the
module a name names, and `names` discovers every module of this package
that holds one: nothing lists the methods. The generic step
(`steps.make_pretrain_step`) owns what all methods share: device
augmentation keys, the optimizer update, BatchNorm statistics, donation and
sharding. A method only says what is special about it:

  prepare_data(config)      writes embedded/synthetic sets the run reads
                            (default: the phantom, if named in data.sources).
  host_dataset(config, local_batch, boxes=None, crop_alpha=1.0)
                            the Grain pipeline of host crops (default: two
                            random resized crops per image, `pretrain_dataset`;
                            `boxes` only when `contrastive_crop` is True).
  make_model(rngs)          the trainable (online) model; holds `encoder`
                            (and `decoder`, if it transfers one) so its
                            weights hand over to the U-Net by path.
  init_aux(params, stats)   non-parameter state kept in the train state and
                            checkpointed: EMA targets, queues, centres, banks.
  device_views(key, batch)  the views from the host crops (dm-pix on device);
                            with `data.crop_site='device'` the step first cuts
                            them from whole images (`crop_spec()`).
  loss(model, aux, views, step) -> (loss, (aux, metrics))
                            inside jit, differentiated w.r.t. the model.
  update_aux(aux, params, batch_stats, step) -> aux
                            after the optimizer step (e.g. EMA updates).

and declares its facts as class attributes (`Method`: `transfers`,
`host_pipeline`, `device_crops`, `contrastive_crop`), which the study grid,
the trainers' error messages and the docs read without building it
(docs/methods/README.md, "Adding a method").
"""
import importlib
import pkgutil

import jax

from medclr import errors
from medclr.augment import crops as device_crops
from medclr.augment import ops as augment
from medclr.data import pipeline
from medclr.data import prepare as data_prepare
from medclr.data import preprocess
from medclr.data import sources as data_sources

# The host pipelines a method may read (`Method.host_pipeline`).
HOST_PIPELINES = {
    "two_views": "two random resized crops per image "
                 "(medclr/data/pipeline.py)",
    "one_view": "one random resized crop per image, viewed twice "
                "(medclr/data/pipeline.py)",
    "multicrop": "global and local crops per image "
                 "(medclr/data/multicrop.py)",
    "volumes": "two crops per slice of a volume set, with the slice's "
               "volume id, partition and position "
               "(medclr/data/volume_pipeline.py)",
}
# The U-Net parts a pretrained model can hand over (`Method.transfers`), by
# top-level parameter path (medclr/train/warm_start.py).
UNET_PARTS = ("encoder", "decoder")


class Method:
  """Base class with the defaults most contrastive methods use."""

  # --- Facts, read from the class without building the method. ---------
  # `config.method` and the module's name: exactly one class of
  # medclr/methods/<name>.py declares it.
  name = None
  # The U-Net parts the pretrained model hands over by parameter path;
  # fine-tuning loads them with `--config.init.load=<comma list>`.
  transfers = ("encoder",)
  # The host pipeline it reads (a key of HOST_PIPELINES).
  host_pipeline = "two_views"
  # Whether `config.data.crop_site='device'` works: the two-view crops then move
  # from the host into the step.
  device_crops = True
  # Whether `host_dataset` takes ContrastiveCrop boxes
  # (`config.contrastive_crop.mode='ccrop'`).
  contrastive_crop = True

  @classmethod
  def for_config(cls, config):
    """The class whose facts hold for `config`: this one, unless a setting
    of the method's own changes them (MACL on volumes)."""
    del config
    return cls

  @property
  def host_views(self):
    """Host crops per image in the shared pipeline."""
    return 1 if self.host_pipeline == "one_view" else 2

  def __init__(self, config):
    self.config = config
    self.spec = augment.get_spec(config.augment.preset,
                                 config.augment.strength)

  def prepare_data(self, config):
    """Creates the embedded datasets `config.data.sources` names, if absent."""
    names = [name for name, _ in
             data_sources.parse_sources(config.data.sources)]
    data_prepare.ensure_phantom(config.data.data_dir, names)

  def host_dataset(self, config, local_batch, boxes=None, crop_alpha=1.0):
    """Grain IterDataset of host crops for this process (see module doc).

    `boxes`/`crop_alpha` switch the crops to ContrastiveCrop (see
    `medclr.data.contrastive_crop`); methods with their own host pipeline do not
    take them.
    """
    return pipeline.pretrain_dataset(
        config.data.data_dir, config.data.sources,
        image_size=config.data.image_size,
        in_channels=config.data.in_channels, area=self.spec.crop_area,
        aspect=self.spec.crop_aspect, local_batch=local_batch,
        seed=config.seed, process_index=jax.process_index(),
        process_count=jax.process_count(),
        worker_count=config.data.worker_count, boxes=boxes,
        crop_alpha=crop_alpha, preprocess=pretrain_preprocess(config),
        device_crops=self.canvas_side() if uses_device_crops(config) else 0,
        num_views=self.host_views)

  def crop_spec(self):
    """The device crops' `CropSpec` (`config.data.crop_site='device'`)."""
    return device_crops.CropSpec(self.config.data.image_size,
                                 tuple(self.spec.crop_area),
                                 tuple(self.spec.crop_aspect))

  def canvas_side(self):
    """Side of the canvas the host fits each image into for device crops."""
    return device_crops.canvas_side(self.config.data.image_size,
                                    self.spec.crop_area,
                                    self.config.data.get("crop_canvas", 0))

  def make_model(self, rngs):
    raise NotImplementedError

  def init_aux(self, params, batch_stats):
    del params, batch_stats  # no extra state by default
    return {}

  def device_views(self, key, batch):
    return list(augment.two_views(key, batch["view1"], batch["view2"],
                                  self.spec))

  def loss(self, model, aux, views, step):
    raise NotImplementedError

  def update_aux(self, aux, params, batch_stats, step):
    del params, batch_stats, step
    return aux


def uses_device_crops(config):
  """Whether `config.data.crop_site` moves the two-view crops onto the
  device."""
  return config.data.get("crop_site", "host") == "device"


def pretrain_preprocess(config):
  """The pool's `Preprocess` (normalisation, FOV scale), or None."""
  return preprocess.build(
      config.data, data_sources.open_sources(config.data.data_dir,
                                             config.data.sources))


def fact_errors(cls):
  """What is wrong with the facts `cls` declares (empty when nothing)."""
  problems = []
  if not (isinstance(cls.transfers, tuple) and "encoder" in cls.transfers
          and set(cls.transfers) <= set(UNET_PARTS)):
    problems.append(f"transfers={cls.transfers!r}: expected a tuple of "
                    f"{UNET_PARTS} holding 'encoder'")
  if cls.host_pipeline not in HOST_PIPELINES:
    problems.append(f"host_pipeline={cls.host_pipeline!r}: expected one of "
                    f"{sorted(HOST_PIPELINES)}")
  for fact in ("device_crops", "contrastive_crop"):
    if not isinstance(getattr(cls, fact), bool):
      problems.append(f"{fact}={getattr(cls, fact)!r}: expected a bool")
  # Only the shared two-view pipeline ships whole images for the step to
  # cut (`pipeline.pretrain_dataset(device_crops=...)`).
  if cls.device_crops and cls.host_pipeline != "two_views":
    problems.append("device_crops=True needs host_pipeline='two_views', "
                    f"not {cls.host_pipeline!r}")
  return problems


def describe(cls):
  """`cls`'s facts in one line, as its doc page states them."""
  yes_no = lambda flag: "yes" if flag else "no"
  return (f"transfers {' + '.join(cls.transfers)}; host pipeline "
          f"`{cls.host_pipeline}`; device crops {yes_no(cls.device_crops)}; "
          f"ContrastiveCrop {yes_no(cls.contrastive_crop)}")


def _declared(module):
  """The `Method` subclass of `module` declaring the module's name, or None."""
  name = module.__name__.rpartition(".")[2]
  found = [value for value in vars(module).values()
           if isinstance(value, type) and issubclass(value, Method)
           and value.__module__ == module.__name__
           and vars(value).get("name") == name]
  if len(found) > 1:
    raise TypeError(f"{module.__name__}: {len(found)} classes declare "
                    f"name={name!r}; exactly one may")
  return found[0] if found else None


def names():
  """Every method, sorted: the modules of this package that declare one."""
  found = []
  for info in pkgutil.iter_modules(__path__):
    module = importlib.import_module(f"{__name__}.{info.name}")
    if _declared(module) is not None:
      found.append(info.name)
  return sorted(found)


def method_class(name):
  """The `Method` subclass called `name`, its facts checked.

  The one place a method name is checked: unknown names raise a ConfigError
  listing the known ones.
  """
  module = None
  if isinstance(name, str) and name.isidentifier():
    try:
      module = importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
      if e.name != f"{__name__}.{name}":
        raise  # the method's module exists and fails to import
  cls = module and _declared(module)
  if not cls:
    raise errors.ConfigError(
        f"config.method={name!r}: known methods are {names()}")
  return _checked(cls)


def _checked(cls):
  """`cls`, once its facts are sound; a TypeError naming them otherwise."""
  problems = fact_errors(cls)
  if problems:
    raise TypeError(f"method class {cls.__module__}.{cls.__qualname__} "
                    "declares wrong facts: " + "; ".join(problems))
  return cls


def class_for(config):
  """The class whose facts hold for `config` (`Method.for_config`)."""
  return _checked(method_class(config.method).for_config(config))


def supporting(fact):
  """The names of the methods whose class declares `fact` (a bool) True."""
  return [name for name in names() if getattr(method_class(name), fact)]


def get_method(config):
  """The `Method` for `config.method`; unknown names list the known ones."""
  return class_for(config)(config)
