"""The offline task suite: six small tasks, one per step of the paper's distance ladder,
that need no download (Fashion-MNIST from the Debian package, the rest generated from
scikit-learn / scikit-image data or drawn). Importing this package registers them.

Each is materialised once as PNG files in ``$TRANSFERLAB_CACHE/datasets/<task>-v<N>[-quick]``
and read back with the generic readers. ``load_task(name, quick=True)`` gives ~100-220 images
per task instead of ~220-1000. Distances 101..106 order the built-ins among themselves (the
benchmarks use 1..19), following the group order of the paper.
"""

from __future__ import annotations

from transferlab.data.builtin.copies import read_photo_copies
from transferlab.data.builtin.digits import read_digits
from transferlab.data.builtin.fashion import read_fashion_mnist, read_fashion_upper
from transferlab.data.builtin.scenes import SCENE_TASKS
from transferlab.data.builtin.shapes import read_shape_attributes, read_shape_relations
from transferlab.data.tasks import TaskSpec, register

NO_ROOT = "built in, no root (generated offline into the cache)"

BUILTIN_TASKS = [
    register(
        TaskSpec(
            name="fashion_mnist",
            title="Fashion-MNIST (10 garment classes, subset)",
            group=1,
            distance=101,
            kind="single",
            metric="accuracy",
            layout="optional: folder with train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
            "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz "
            "(default /usr/share/datasets/fashion-mnist, apt-get install dataset-fashion-mnist)",
            reader=read_fashion_mnist,
            builtin=True,
            protocol="50/10/30 images per class (train/val from the official train file, test from "
            "t10k; quick 10/5/5), seeded; accuracy on test",
        )
    ),
    register(
        TaskSpec(
            name="shape_attributes",
            title="Shape attributes (12 binary attributes of drawn scenes)",
            group=2,
            distance=102,
            kind="attributes",
            metric="map",
            layout=NO_ROOT,
            reader=read_shape_attributes,
            builtin=True,
            protocol="400/100/200 drawn images (quick 100/40/60) of 1-3 objects; an image has an "
            "attribute if any object has it; mean over attributes of average precision",
        )
    ),
    register(
        TaskSpec(
            name="fashion_upper",
            title="Fashion-MNIST upper-body garments (T-shirt, pullover, coat, shirt)",
            group=3,
            distance=103,
            kind="single",
            metric="mean_class_accuracy",
            layout="optional: same IDX files as fashion_mnist",
            reader=read_fashion_upper,
            builtin=True,
            protocol="4 classes, 150/25/75 images per class (quick 30/10/15), seeded; mean class "
            "accuracy on test",
        )
    ),
    register(
        TaskSpec(
            name="digits",
            title="Handwritten digits (scikit-learn, 8x8 upscaled to 32x32)",
            group=3,
            distance=104,
            kind="single",
            metric="accuracy",
            layout=NO_ROOT,
            reader=read_digits,
            builtin=True,
            protocol="50/10/30 images per class from load_digits (quick 10/5/5), seeded; accuracy "
            "on test",
        )
    ),
    register(
        TaskSpec(
            name="shape_relations",
            title="Shape relations (which shape is left of / above which)",
            group=4,
            distance=105,
            kind="single",
            metric="mean_class_accuracy",
            layout=NO_ROOT,
            reader=read_shape_relations,
            builtin=True,
            protocol="12 classes (ordered shape pair x left_of/above), 30/10/20 images per class "
            "(quick 8/4/6); mean class accuracy on test",
        )
    ),
    register(
        TaskSpec(
            name="photo_copies",
            title="Photo copies (Copydays-style copy detection on scikit-image photos)",
            group=5,
            distance=106,
            kind="retrieval",
            metric="holidays_map",
            layout=NO_ROOT,
            reader=read_photo_copies,
            builtin=True,
            protocol="20 query photos (not in the database); database of 8 transformed copies per "
            "photo (quick 4) plus 40 distractors (quick 10); positives = the query's copies; "
            "mean over queries of retrieval AP",
        )
    ),
]

BUILTIN_TASKS += SCENE_TASKS  # source tasks and scene targets of the learning factors (scenes.py)

__all__ = ["BUILTIN_TASKS"]
