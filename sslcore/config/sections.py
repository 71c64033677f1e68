"""Imports every module that declares config keys, so the schema is complete.

Explicit on purpose (house style): a module that declares keys is listed here, nothing is scanned.
"""

# isort: off
from sslcore.engine import distributed  # noqa: F401
from sslcore.engine import checkpoint  # noqa: F401
from sslcore.engine import trainer  # noqa: F401
from sslcore.engine import standard_hooks  # noqa: F401
from sslcore.engine import extract  # noqa: F401
from sslcore.optim import optimizer  # noqa: F401
from sslcore.models.trunks import registry as trunk_registry  # noqa: F401
from sslcore.models.trunks import resnet  # noqa: F401
from sslcore.models.trunks import regnet, vision_transformer  # noqa: F401
from sslcore.models.heads import registry as head_registry  # noqa: F401
from sslcore.models import feature_eval  # noqa: F401
from sslcore.models import model as _model  # noqa: F401
from sslcore.losses import registry as loss_registry  # noqa: F401
from sslcore.losses import simclr_info_nce  # noqa: F401
from sslcore.losses import barlow_twins, vicreg  # noqa: F401
from sslcore.losses import multicrop_simclr, swav, deepclusterv2  # noqa: F401
from sslcore.engine import temp_frozen_params  # noqa: F401
from sslcore.losses import nce_with_memory  # noqa: F401
from sslcore.losses import moco, byol, simsiam, dino  # noqa: F401
from sslcore.losses import cross_entropy  # noqa: F401
from sslcore.engine import clusterfit  # noqa: F401
from sslcore.data import dataset  # noqa: F401
from sslcore.data import transforms  # noqa: F401
from sslcore.data import collators  # noqa: F401
from sslcore.data import loader  # noqa: F401
from sslcore.data import patches  # noqa: F401
from sslcore.benchmarks import knn  # noqa: F401
# isort: on
