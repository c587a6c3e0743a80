"""Device meshes, batch sharding and multi-host start-up for data-parallel training.

One code path runs on 1 CPU, on 8 fake CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=8``),
on GPUs and on a TPU pod: the training step is ``jax.jit``-ted with explicit shardings, batches split
along their leading axis over the mesh axis ``"data"`` and parameters / optimizer state replicated,
so XLA (GSPMD) inserts the gradient all-reduce itself. There is no ``pmap`` and no per-device code.

Multi-host (several processes, each owning some devices): every process runs the same program
with the same seeds, so every process draws the *same* global batch order. Each process keeps only
its rows of each global batch (:func:`process_slice`), and :func:`shard_batch` assembles the global
``jax.Array`` from the per-process slices. Replicated values (:func:`replicate`) must be equal on all
processes, which holds because they come from the same seeded initialisation or the same checkpoint.

    mesh = make_mesh()
    state = replicate(state, mesh)
    batch = shard_batch(process_slice(global_batch), mesh)   # [B, ...] split over "data"
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(axis_name: str = DATA_AXIS, devices=None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: all devices of all processes) named ``axis_name``."""
    devices = np.asarray(jax.devices() if devices is None else devices).reshape(-1)
    return Mesh(devices, (axis_name,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the mesh's (only) axis; other axes whole on each device."""
    return NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """The whole value on every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """Raise ValueError (one line) unless the global ``batch_size`` splits evenly over the mesh."""
    if batch_size < 1 or batch_size % mesh.size:
        raise ValueError(
            f"batch size {batch_size} must be a positive multiple of the {mesh.size} devices "
            f"(set --config.train.batch_size)"
        )


def process_slice(global_batch: Any) -> Any:
    """This process's rows of a global batch pytree ``[B, ...]`` (the whole batch on one process).

    Process ``i`` of ``n`` takes rows ``[i B/n, (i+1) B/n)``; trailing rows beyond a multiple of ``n``
    are dropped so that every process holds the same number of rows.
    """
    n, i = jax.process_count(), jax.process_index()
    if n == 1:
        return global_batch

    def rows(x):
        per = x.shape[0] // n
        return x[i * per : (i + 1) * per]

    return jax.tree.map(rows, global_batch)


def shard_batch(batch: Any, mesh: Mesh, trim: bool = False) -> Any:
    """Place this process's batch pytree ``[B_local, ...]`` on the mesh, split along the leading axis.

    ``B_local`` must be a multiple of this process's device count (the global batch is the
    concatenation of all processes' slices, in process order). A batch that does not divide raises a
    one-line ValueError, unless ``trim=True``: then the trailing ``B_local mod devices`` rows are
    dropped (fine for shuffled training batches; evaluation pads instead, so no window is lost).
    """
    sharding = batch_sharding(mesh)
    local_devices = max(1, len(mesh.local_devices))
    leaves = jax.tree.leaves(batch)
    size = leaves[0].shape[0] if leaves else 0
    usable = size - size % local_devices
    if usable != size:
        if not trim or usable == 0:
            raise ValueError(
                f"a batch of {size} rows does not split over {local_devices} local devices; "
                f"use a batch size that is a multiple of the device count"
            )
        batch = jax.tree.map(lambda x: x[:usable], batch)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Copy every leaf of ``tree`` to every device of ``mesh`` (parameters, optimizer state, rngs).

    With several processes each builds its copy from its own host value (they must be equal).
    """
    sharding = replicated_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def put(x):
        if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):  # typed rng keys
            return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


def multi_host_launcher() -> str | None:
    """The multi-process launcher visible in the environment, or None for a single process.

    Recognised: explicit ``JAX_COORDINATOR_ADDRESS`` (with ``JAX_NUM_PROCESSES`` and
    ``JAX_PROCESS_ID``), a SLURM job step with several tasks, Open MPI with several ranks, and a
    multi-worker Cloud TPU slice (``TPU_WORKER_HOSTNAMES`` listing several hosts, or a Megascale
    coordinator).
    """
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return "env"
    if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return "slurm"
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return "ompi"
    if "," in env.get("TPU_WORKER_HOSTNAMES", "") or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "cloud_tpu"
    return None


def initialize_distributed() -> bool:
    """Join a multi-process JAX job when the environment describes one; returns whether it did.

    Call it first thing in ``main``, before anything touches ``jax.devices()``. A single process
    (no launcher variables, see :func:`multi_host_launcher`) is left alone, so the same entry point
    serves laptops, one GPU and pods.

    CPU multi-process route (docs/scaling.md, checked here): start N processes on localhost with
    ``JAX_COORDINATOR_ADDRESS=localhost:12345 JAX_NUM_PROCESSES=N JAX_PROCESS_ID=i``; this function
    switches CPU collectives to gloo (``jax_cpu_collectives_implementation``), without which
    cross-process CPU reductions are unavailable, then calls ``jax.distributed.initialize`` with
    those values. On SLURM, Open MPI and Cloud TPU, ``jax.distributed.initialize()`` detects
    coordinator, process count and id by itself.
    """
    if jax.distributed.is_initialized():
        return True
    launcher = multi_host_launcher()
    if launcher is None:
        return False
    # Only affects the CPU backend; harmless where accelerators do the collectives.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if launcher == "env":
        env = os.environ
        kwargs["coordinator_address"] = env["JAX_COORDINATOR_ADDRESS"]
        if "JAX_NUM_PROCESSES" in env:
            kwargs["num_processes"] = int(env["JAX_NUM_PROCESSES"])
        if "JAX_PROCESS_ID" in env:
            kwargs["process_id"] = int(env["JAX_PROCESS_ID"])
    jax.distributed.initialize(**kwargs)
    return True


def finish_distributed() -> None:
    """Leave a multi-process job together: wait for every process, then shut the client down.

    Without the barrier a process that finishes early (process 0 also writes plots and the summary)
    sits in JAX's exit-time shutdown barrier while another is still working, and a slow peer can
    make that barrier time out and abort the whole job at exit. A no-op in a single process.
    """
    if not jax.distributed.is_initialized():
        return
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("kpflow: end of run")
    jax.distributed.shutdown()


def is_main_process() -> bool:
    """Process 0 writes the files that exist once per run (config, metrics, plots)."""
    return jax.process_index() == 0
