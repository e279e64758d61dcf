"""Device mesh, shardings and host->device batch transfer; multi-host start-up.

medclr is data parallel: one 1-D mesh axis 'data' over every device of every
process. Parameters and optimiser state are replicated; batches are split along
the batch axis. The mesh is made once per run (`make_mesh`) and everything runs
under `jax.set_mesh(mesh)`.
"""
import os

import jax
import numpy as np

from medclr import errors

DATA_AXIS = "data"


def _check_process_flags(coordinator_address, num_processes, process_id):
  """errors.ConfigError naming the flags of an inconsistent process setup."""
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise errors.ConfigError(
          "multi-process run: --coordinator_address needs --num_processes and "
          "--process_id too")
    if not 0 <= int(process_id) < int(num_processes):
      raise errors.ConfigError(
          f"--process_id={process_id} with --num_processes={num_processes}: "
          "expected 0 <= process_id < num_processes")
  elif ((num_processes is not None and int(num_processes) != 1) or
        (process_id is not None and int(process_id) != 0)) and not (
            os.environ.get("TPU_WORKER_HOSTNAMES")):
    # Without a coordinator the run would silently be one process.
    raise errors.ConfigError(
        f"--num_processes={num_processes} / --process_id={process_id} without "
        "--coordinator_address: a multi-process run needs all three "
        "(--coordinator_address is host:port of process 0)")


def _auto_distributed():
  """True when JAX should discover the cluster by itself.

  MEDCLR_DISTRIBUTED=auto (launch/tpu_pod.sh sets it on every TPU VM worker,
  where JAX reads the pod from the metadata server; JAX also reads Slurm's
  environment) or a multi-worker TPU_WORKER_HOSTNAMES (GKE).
  """
  mode = os.environ.get("MEDCLR_DISTRIBUTED", "")
  if mode not in ("", "auto"):
    raise errors.ConfigError(
        f"MEDCLR_DISTRIBUTED={mode!r}: expected 'auto' (let JAX discover a "
        "TPU pod or Slurm job) or unset")
  return mode == "auto" or os.environ.get(
      "TPU_WORKER_HOSTNAMES", "").count(",") > 0


def maybe_initialize_distributed(coordinator_address=None, num_processes=None,
                                 process_id=None):
  """Starts multi-process JAX when asked to, and only then.

  Explicit arguments (or the MEDCLR_COORDINATOR / MEDCLR_NUM_PROCESSES /
  MEDCLR_PROCESS_ID environment variables) start a CPU/GPU cluster; with
  MEDCLR_DISTRIBUTED=auto (or a multi-worker TPU_WORKER_HOSTNAMES)
  `jax.distributed.initialize()` discovers the pod by itself. A plain single-process run does nothing: calling
  initialize() there would wait for a coordinator that never comes.

  Must run before anything touches a JAX device.
  """
  coordinator_address = coordinator_address or os.environ.get(
      "MEDCLR_COORDINATOR")
  num_processes = num_processes or os.environ.get("MEDCLR_NUM_PROCESSES")
  process_id = process_id if process_id is not None else os.environ.get(
      "MEDCLR_PROCESS_ID")
  _check_process_flags(coordinator_address, num_processes, process_id)
  if coordinator_address:
    # Cross-process collectives on the CPU backend need gloo (jax 0.10).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=int(num_processes),
                               process_id=int(process_id))
  elif _auto_distributed():
    jax.distributed.initialize()
  if jax.process_count() > 1:  # start-up progress of a multi-process run
    print(f"JAX process {jax.process_index()} of {jax.process_count()}, "
          f"{jax.local_device_count()} local / {jax.device_count()} global "
          "devices", flush=True)


def make_mesh(num_devices=-1):
  """The run's mesh: a 1-D 'data' axis with an explicit axis type.

  Args:
    num_devices: how many devices to use; -1 means all of them.
  """
  available = jax.device_count()
  n = available if num_devices in (-1, None) else int(num_devices)
  if not 1 <= n <= available:
    raise errors.ConfigError(
        f"config.mesh.data={num_devices}: must be -1 or between 1 and the "
        f"{available} available devices")
  return jax.make_mesh((n,), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Explicit,),
                       devices=jax.devices()[:n])


def data_sharding(mesh):
  """Batch-axis sharding for inputs and per-example outputs."""
  return jax.sharding.NamedSharding(mesh, jax.P(DATA_AXIS))


def replicated(mesh):
  """Full replication, for parameters, optimiser state and scalars."""
  return jax.sharding.NamedSharding(mesh, jax.P())


def check_batch_size(global_batch, mesh, what="config.batch_size"):
  """Raises a clear error unless the batch splits evenly over devices/hosts."""
  n = mesh.devices.size
  if global_batch % n or global_batch % jax.process_count():
    raise errors.ConfigError(
        f"{what}={global_batch} must be divisible by the {n} devices of the "
        f"mesh and the {jax.process_count()} processes")
  return global_batch // jax.process_count()


def to_global(local_batch, mesh):
  """Turns this process's numpy batch into globally sharded jax Arrays."""
  sharding = data_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      local_batch)


def gather_to_replicated(x: jax.Array, axis_name: str = "data") -> jax.Array:
  """The full global array on every device (an all-gather of the batch).

  Under an Explicit mesh a batch-sharded array must be resharded explicitly
  before it meets a replicated one in a slice update, or is contracted with
  another batch-sharded array; without a mesh (or under Auto) the array is
  already usable as is.

  Args:
    x: a global array, possibly sharded over `axis_name` on its first axis.
    axis_name: mesh axis the batch is sharded over.

  Returns:
    `x`, replicated on all devices of the ambient mesh.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or axis_name not in mesh.axis_names:
    return x
  axis_type = mesh.axis_types[mesh.axis_names.index(axis_name)]
  if axis_type != jax.sharding.AxisType.Explicit:
    return x
  return jax.sharding.reshard(x, jax.P())
