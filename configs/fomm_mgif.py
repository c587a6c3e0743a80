"""FOMM mgif-256: the official model and training parameters; `configs/fomm_mgif.py:tiny` for a CPU.

    python -m train.fomm --config configs/fomm_mgif.py --workdir runs/fomm_mgif --config.data.dir=DIR
"""

from configs.fomm_common import fomm_config


def get_config(arg: str | None = None):
    return fomm_config("mgif", arg)
