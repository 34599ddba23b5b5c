"""Fetch public data sets from Kaggle with ``kagglehub`` (optional dependency ``brainmri[download]``).

Why a wrapper: offline or without Kaggle credentials, kagglehub raises long network tracebacks. Here
each failure becomes one line that says what failed and what to do instead (download the archive by
hand and run ``brainmri data import`` on it).
"""

from __future__ import annotations

from pathlib import Path

from brainmri.errors import DataError
from brainmri.utils import one_line


def download_dataset(handle: str, out_dir: str | None = None) -> Path:
    """Download one Kaggle data set (``owner/name``) and return its local folder.

    With ``out_dir`` the files are placed there (kagglehub ``output_dir``), else in kagglehub's cache.
    """
    if handle.count("/") != 1 or not all(handle.split("/")):
        raise DataError(f"'{handle}': a Kaggle data set is named OWNER/NAME")
    try:
        import kagglehub
    except ImportError:
        raise DataError("kagglehub is not installed: pip install 'brainmri[download]'") from None
    kwargs = {}
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        kwargs["output_dir"] = str(out_dir)
    try:
        path = kagglehub.dataset_download(handle, **kwargs)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # network, authentication, not found: all become one line
        raise DataError(
            f"cannot download '{handle}' from Kaggle ({type(exc).__name__}: {one_line(exc)}); offline or not "
            "signed in? Set KAGGLE_USERNAME/KAGGLE_KEY, or download the archive by hand, unpack it and run "
            "`brainmri data import FOLDER`"
        ) from None
    return Path(path)
