"""Each process reads only its own share of every global batch.

Keras' JAX trainer turns what a process's dataset yields into one global array with
``jax.make_array_from_process_local_data(sharding, local_batch)``: the local batch fills the rows of
the global batch that this process's devices hold. With the mesh over ``jax.devices()`` (ordered by
process) process ``p`` of ``P`` holds rows ``[p * L, (p + 1) * L)``, ``L = global / P``, and
:func:`local_rows` checks that against the actual sharding before training. So the global batch is
exactly the batch a single process would build (same order, same tiles), which is why a run on
2 processes x 2 devices matches one on 1 process x 4 devices.

Which tiles: the epoch order comes from the wrapped loader (deterministic from seed and epoch), batch
``b`` is ``order[b * G : (b + 1) * G]`` and each process loads only its slice, so no tile is read
twice per epoch across processes. A last batch with fewer tiles than devices (validation keeps its
remainder) is padded to a multiple of the device count with no-data images (NaN) labelled
IGNORE_INDEX: they add nothing to the loss or the confusion counts, so val_mcc stays the whole-set
value. (Keras weighs each batch's *loss* by its row count, so the reported val_loss gives that batch
the padded weight; the scores are exact.)
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from keras_glacier.constants import IGNORE_INDEX
from keras_glacier.distribution.cluster import DistributionError, check_global_batch

PAD = -1  # index of a padding slot


def padded_size(rows: int, multiple: int) -> int:
    """``rows`` rounded up to a multiple of ``multiple`` (the device count)."""
    return -(-int(rows) // int(multiple)) * int(multiple)


def process_batch_indices(
    order: Sequence[int],
    batch_index: int,
    global_batch: int,
    process_index: int,
    process_count: int,
    multiple: int | None = None,
) -> np.ndarray:
    """This process's sample indices of global batch ``batch_index`` (``PAD`` for padding slots).

    ``order`` is the epoch's sample order, ``multiple`` the device count (default: the process
    count): a short last batch is padded up to it so that every device gets the same number of rows.
    """
    multiple = int(process_count if multiple is None else multiple)
    if multiple % process_count:
        raise DistributionError(f"{multiple} devices cannot be split evenly over {process_count} processes")
    order = np.asarray(order)
    chosen = order[batch_index * global_batch : (batch_index + 1) * global_batch]
    if chosen.size == 0:
        raise IndexError(f"batch {batch_index} is past the end of the {order.size} samples")
    rows = padded_size(chosen.size, multiple)
    padded = np.full(rows, PAD, dtype=np.int64)
    padded[: chosen.size] = chosen
    share = rows // process_count
    return padded[process_index * share : (process_index + 1) * share]


def local_rows(global_rows: int, distribution=None) -> tuple[int, int]:
    """The rows ``[start, stop)`` of a global batch that this process's devices hold under the
    distribution's data layout; refuses a layout where they are not one contiguous block."""
    import jax

    distribution = distribution or keras.distribution.distribution()
    if distribution is None:
        return 0, global_rows
    layout = distribution.get_data_layout((global_rows,)).backend_layout
    slices = [index[0] for index in layout.addressable_devices_indices_map((global_rows,)).values()]
    starts = sorted({s.start or 0 for s in slices})
    stops = sorted({global_rows if s.stop is None else s.stop for s in slices})
    start, stop = starts[0], stops[-1]
    covered = sum(b - a for a, b in zip(starts, stops))
    if covered != stop - start:
        raise DistributionError(f"process {jax.process_index()}'s devices hold rows that are not one block of the "
                                f"global batch: build the mesh from jax.devices() (ordered by process)")
    return start, stop


class ProcessShard(keras.utils.PyDataset):
    """This process's share of every batch of a :class:`~keras_glacier.data.dataset.GlacierSequence`.

    The wrapped sequence keeps the whole-job view (its ``batch_size`` is the GLOBAL batch, its epoch
    order and per-sample random draws are what one process would use); this wrapper loads only the
    rows of each batch that land on this process's devices. Give it to ``model.fit`` / ``evaluate``
    instead of the sequence; epoch changes (``set_epoch``, ``on_epoch_end``) go to the sequence, so
    ``EpochSync`` can keep targeting the sequence itself.
    """

    def __init__(self, sequence, process_index: int | None = None, process_count: int | None = None,
                 num_devices: int | None = None, workers: int | None = None,
                 max_queue_size: int | None = None) -> None:
        import jax

        # Keras iterates this wrapper, not the sequence: take over the sequence's prefetch settings.
        workers = getattr(sequence, "workers", 1) if workers is None else workers
        max_queue_size = getattr(sequence, "max_queue_size", 8) if max_queue_size is None else max_queue_size
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=max_queue_size)
        self.sequence = sequence
        self.process_index = jax.process_index() if process_index is None else int(process_index)
        self.process_count = jax.process_count() if process_count is None else int(process_count)
        self.num_devices = jax.device_count() if num_devices is None else int(num_devices)
        self.global_batch = int(sequence.batch_size)
        self.local_batch = check_global_batch(self.global_batch, self.num_devices, self.process_count)
        if process_index is None and keras.distribution.distribution() is not None:
            want = (self.process_index * self.local_batch, (self.process_index + 1) * self.local_batch)
            if local_rows(self.global_batch) != want:
                raise DistributionError(f"process {self.process_index} holds rows {local_rows(self.global_batch)} "
                                        f"of each global batch, expected {want}: build the mesh from jax.devices()")
        self._served = False

    def __len__(self) -> int:
        return len(self.sequence)

    @property
    def epoch(self) -> int:
        return self.sequence.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sequence.set_epoch(epoch)
        self._served = False

    def on_epoch_end(self) -> None:
        # Same rule as the sequence: advance only after a batch was served (Keras' warm-up call does not).
        if self._served:
            self.set_epoch(self.epoch + 1)

    def indices(self, index: int) -> tuple[int, np.ndarray]:
        """(epoch, this process's sample indices of batch ``index``, PAD for padding)."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range ({len(self)} batches)")
        epoch, order = self.sequence._epoch_state  # one attribute: never one epoch's number with another's order
        return epoch, process_batch_indices(order, index, self.global_batch, self.process_index,
                                            self.process_count, self.num_devices)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        epoch, chosen = self.indices(index)
        self._served = True
        real = [int(i) for i in chosen if i != PAD]
        pairs = [self.sequence.load(i, epoch) for i in real]
        if pairs:
            template = pairs[0]
        else:  # this process's share of a short last batch is all padding: only the shape of a real tile is needed
            template = self.sequence.load(int(self.sequence._epoch_state[1][index * self.global_batch]), epoch)
        shapes = {image.shape for image, _ in pairs}
        if len(shapes) > 1:
            names = ", ".join(self.sequence.samples[i].name for i in real)
            raise DistributionError(f"tiles of different sizes in one batch ({names}); set a crop size")
        image, label = template
        pad_image = np.full(image.shape, np.nan, dtype=np.float32)
        pad_label = np.full(label.shape, IGNORE_INDEX, dtype=label.dtype)
        it = iter(pairs)
        rows = [next(it) if i != PAD else (pad_image, pad_label) for i in chosen]
        x = np.stack([r[0] for r in rows]).astype(np.float32, copy=False)
        y = np.stack([r[1] for r in rows])[..., None].astype(np.float32)
        return x, y
