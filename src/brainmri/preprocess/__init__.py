"""Medical preprocessing: one deterministic pipeline for training, evaluation, prediction and the API.

Steps (one module each): :mod:`.intensity` (grayscale float in [0, 1]), :mod:`.crop` (head crop),
:mod:`.resize` (working-size cap, final resize + pad), :mod:`.bias` (N4 / fast bias correction),
:mod:`.skull` (skull strip with fallback), :mod:`.nyul` (Nyúl–Udupa standardisation), :mod:`.clahe`.
:class:`Preprocessor` composes them; :mod:`.cache` stores its uint8 outputs keyed by image md5 and
config hash. See docs/preprocessing.md.
"""

from brainmri.errors import NotFittedError
from brainmri.preprocess.base import Slice, Step
from brainmri.preprocess.bias import FastBiasCorrection, N4BiasCorrection
from brainmri.preprocess.cache import PreprocessedCache, preprocess_dir_for
from brainmri.preprocess.clahe import Clahe
from brainmri.preprocess.crop import BrainCrop
from brainmri.preprocess.intensity import ToUnitRange
from brainmri.preprocess.nyul import NyulStandardizer
from brainmri.preprocess.preprocessor import PIPELINE_VERSION, Preprocessor, config_hash
from brainmri.preprocess.presets import PRESETS, resolve_preset
from brainmri.preprocess.resize import LimitSize, ResizePad
from brainmri.preprocess.skull import SkullStrip

__all__ = [
    "PIPELINE_VERSION",
    "PRESETS",
    "BrainCrop",
    "Clahe",
    "FastBiasCorrection",
    "LimitSize",
    "N4BiasCorrection",
    "NotFittedError",
    "NyulStandardizer",
    "PreprocessedCache",
    "Preprocessor",
    "ResizePad",
    "SkullStrip",
    "Slice",
    "Step",
    "ToUnitRange",
    "config_hash",
    "preprocess_dir_for",
    "resolve_preset",
]
