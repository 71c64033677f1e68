"""sslcore.data: datasets, sources, catalog, transforms, collators, samplers and data preparation.

Registries (filled by the imports below): ``SOURCES`` (disk_folder, disk_filelist, synthetic),
``TRANSFORMS`` (plus any torchvision.transforms class), ``COLLATORS`` (default_collate,
simclr_collator, multicrop_collator), ``BUILTIN_DATASETS`` (fashion_mnist).
"""

# dataset first: its DATA.<split> keys then lead the generated defaults
# isort: off
from sslcore.data.dataset import SSLDataset, build_dataset
# isort: on
from sslcore.data.catalog import get_dataset_paths, list_datasets, register_dataset
from sslcore.data.collators import COLLATORS, build_collator
from sslcore.data.fashion_mnist import prepare_fashion_mnist
from sslcore.data.loader import build_dataloader, set_loader_epoch
from sslcore.data.manifest import verify_dataset
from sslcore.data.prepare import BUILTIN_DATASETS, copy_dataset, prepare_dataset
from sslcore.data.sampler import StatefulDistributedSampler
from sslcore.data.sources import SOURCES, build_source
from sslcore.data.transforms import TRANSFORMS, build_transforms
from sslcore.data import patches  # noqa: F401,E402  (Jigsaw/PIRL transforms and collators)
from sslcore.data import rotation  # noqa: F401,E402  (registers ImgRotatePil)
from sslcore.data import ssl_transforms  # noqa: F401,E402  (solarize, photometric, Lab, ...)

__all__ = [
    "BUILTIN_DATASETS", "COLLATORS", "SOURCES", "SSLDataset", "StatefulDistributedSampler", "TRANSFORMS",
    "build_collator", "build_dataloader", "build_dataset", "build_source", "build_transforms", "copy_dataset",
    "get_dataset_paths", "list_datasets", "prepare_dataset", "prepare_fashion_mnist", "register_dataset",
    "set_loader_epoch", "verify_dataset",
]
